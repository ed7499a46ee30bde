"""Redis state and outbox of the invitation service. It lands with issue #3."""
