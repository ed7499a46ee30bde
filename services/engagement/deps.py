"""Typed dependencies of the engagement routes: what `main.py` wired, handed to each route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.engagement.store import EngagementStore


# Async: FastAPI runs a plain `def` dependency in a thread pool.
async def get_store(request: Request) -> EngagementStore:
    store: EngagementStore = request.app.state.wired
    return store


EngagementStoreDep = Annotated[EngagementStore, Depends(get_store)]
