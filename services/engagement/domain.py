"""Pure decisions of the engagement service (state + command -> events). They land with issue #5."""
