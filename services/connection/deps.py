"""Typed dependencies of the connection routes: what `main.py` wired, handed to each route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.connection.store import ConnectionStore


def get_store(request: Request) -> ConnectionStore:
    store: ConnectionStore = request.app.state.wired
    return store


ConnectionStoreDep = Annotated[ConnectionStore, Depends(get_store)]
