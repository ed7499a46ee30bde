"""Subscribers of the engagement service. They land with issue #5."""

from __future__ import annotations

from shared.service import Runtime


def register(runtime: Runtime) -> None:
    """Declare this service's subscribers on the runtime's broker (before it starts)."""
