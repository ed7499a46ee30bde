"""Pieces every service's HTTP edge shares: typed path ids and the write response."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import BaseModel, ConfigDict

from shared.events import ID_PATTERN, Envelope

MemberPath = Annotated[str, Path(pattern=ID_PATTERN, description="A member id", examples=["ada"])]
IdPath = Annotated[str, Path(pattern=ID_PATTERN)]


class Request(BaseModel):
    """Request bodies reject unknown fields: a typo is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid")


class WriteResult(BaseModel):
    """What a write produced, in order. `event_id` is the last of them (null when nothing
    changed): pass it as `?after=` to a query to read your own write."""

    event_id: str | None = None
    event_ids: list[str] = []

    @classmethod
    def of(cls, envelopes: list[Envelope]) -> WriteResult:
        ids = [str(e.event_id) for e in envelopes]
        return cls(event_id=ids[-1] if ids else None, event_ids=ids)
