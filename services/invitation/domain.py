"""Pure decisions of the invitation service (state + command -> events). They land with issue #3."""
