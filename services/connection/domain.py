"""Pure decisions of the connection service (state + command -> events). They land with issue #4."""
