"""Pieces every service's HTTP edge shares: typed path ids and the write response."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict

from shared.events import ID_PATTERN, Envelope

MemberPath = Annotated[str, Path(pattern=ID_PATTERN, description="A member id", examples=["ada"])]
IdPath = Annotated[str, Path(pattern=ID_PATTERN)]


class Request(BaseModel):
    """Request bodies reject unknown fields: a typo is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid")


def example_response(example: Any, description: str = "Success") -> dict[int | str, Any]:
    """OpenAPI `responses` entry documenting a 200 answer by example (for dict results)."""
    content = {"application/json": {"example": example}}
    return {200: {"description": description, "content": content}}


class WriteResult(BaseModel):
    """What a write produced, in order. `event_id` is the last of them (null when nothing
    changed): pass it as `?after=` to a query to read your own write."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event_id": "0b4f6a44-5f1e-4d59-9a57-1c1d0f3e2b11",
                    "event_ids": ["0b4f6a44-5f1e-4d59-9a57-1c1d0f3e2b11"],
                }
            ]
        }
    )

    event_id: str | None = None
    event_ids: list[str] = []

    @classmethod
    def of(cls, envelopes: list[Envelope]) -> WriteResult:
        ids = [str(e.event_id) for e in envelopes]
        return cls(event_id=ids[-1] if ids else None, event_ids=ids)
