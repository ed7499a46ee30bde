"""The write path's reference: a bare FastAPI endpoint on uvicorn (uvloop + httptools) that
validates the same body as `POST /invitations` with pydantic and makes one Redis Lua call
(HINCRBY + HSET + XADD). What the framework and Redis allow on this machine; the bench
measures Rapport's writes as a fraction of it.

Run: `uvicorn bench.bare:app --port N` with REDIS_URL set."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Header
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from shared.events import ID_PATTERN
from shared.service import settle_garbage_collector

SCRIPT = """
redis.call('HINCRBY', KEYS[1], 'sent', 1)
redis.call('HSET', KEYS[2], 'state', ARGV[1])
return redis.call('XADD', KEYS[3], '*', 'value', ARGV[1])
"""


class InvitationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str = Field(pattern=ID_PATTERN)
    message: str | None = Field(None, max_length=5000)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    app.state.redis = redis
    app.state.script = redis.register_script(SCRIPT)
    settle_garbage_collector(10_000)  # as every Rapport service does once started
    yield
    await redis.aclose()


app = FastAPI(lifespan=lifespan)


@app.post("/invitations", status_code=201)
async def send(
    body: InvitationCreate, x_member_id: str = Header(pattern=ID_PATTERN)
) -> dict[str, str]:
    invitation_id = uuid.uuid4().hex
    await app.state.script(
        keys=[f"bare:sender:{x_member_id}", f"bare:inv:{invitation_id}", "bare:outbox"],
        args=[body.model_dump_json()],
    )
    return {"invitation_id": invitation_id, "status": "pending"}
