"""Typed dependencies of the invitation routes: what `main.py` wired, handed to each route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.invitation.store import InvitationStore


# Async: FastAPI runs a plain `def` dependency in a thread pool.
async def get_store(request: Request) -> InvitationStore:
    store: InvitationStore = request.app.state.wired
    return store


InvitationStoreDep = Annotated[InvitationStore, Depends(get_store)]
