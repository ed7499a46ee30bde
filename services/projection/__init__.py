"""Redis read models and the query API."""
