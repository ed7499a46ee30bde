"""Redis state and outbox of the connection service. It lands with issue #4."""
