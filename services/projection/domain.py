"""Pure decisions of the projection service (state + command -> events). They land with issue #6."""
