"""The projection's queries, one module per family; each reads the current keyspace of a
`ReadModelStore` and answers plain data that `api.py` turns into typed responses."""

from services.projection.queries import (
    degree,
    engagement,
    explore,
    industries,
    members,
    network,
    paths,
    status,
    suggestions,
)

__all__ = [
    "degree",
    "engagement",
    "explore",
    "industries",
    "members",
    "network",
    "paths",
    "status",
    "suggestions",
]
