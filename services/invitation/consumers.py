"""Subscribers of the invitation service. They land with issue #3."""

from __future__ import annotations

from shared.service import Runtime


def register(runtime: Runtime) -> None:
    """Declare this service's subscribers on the runtime's broker (before it starts)."""
