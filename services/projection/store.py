"""Redis state and outbox of the projection service. It lands with issue #6."""
