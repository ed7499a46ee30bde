"""Subscribers of the projection service. They land with issue #6."""

from __future__ import annotations

from shared.service import Runtime


def register(runtime: Runtime) -> None:
    """Declare this service's subscribers on the runtime's broker (before it starts)."""
