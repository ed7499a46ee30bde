"""Redis state and outbox of the engagement service. It lands with issue #5."""
