"""Typed dependencies of the connection routes: what `main.py` wired, handed to each route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.connection.store import ConnectionStore


# Async: FastAPI runs a plain `def` dependency in a thread pool.
async def get_store(request: Request) -> ConnectionStore:
    store: ConnectionStore = request.app.state.wired
    return store


ConnectionStoreDep = Annotated[ConnectionStore, Depends(get_store)]
