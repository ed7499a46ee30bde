"""Typed dependencies of the projection routes: what `main.py` wired, handed to each route."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from services.projection.apply import BatchApplier
from services.projection.history import History
from services.projection.queries.status import Throughput
from services.projection.rebuild import Rebuilder, TopicEnds
from services.projection.store import ReadModelStore


@dataclass(frozen=True)
class Projection:
    """The projection's parts, as `main.py` wired them."""

    store: ReadModelStore
    applier: BatchApplier
    rebuilder: Rebuilder
    ends: TopicEnds
    throughput: Throughput
    history: History
    shared_redis: Redis  # REDIS_URL's: the services' instance records


# Dependencies are async: FastAPI runs a plain `def` dependency in a thread pool.
async def get_projection(request: Request) -> Projection:
    projection: Projection = request.app.state.wired
    return projection


async def get_store(request: Request) -> ReadModelStore:
    projection: Projection = request.app.state.wired
    return projection.store


ProjectionDep = Annotated[Projection, Depends(get_projection)]
ReadModelDep = Annotated[ReadModelStore, Depends(get_store)]
