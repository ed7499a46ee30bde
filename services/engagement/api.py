"""HTTP edge of the engagement service."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import Field, StringConstraints

from services.engagement import domain
from services.engagement.deps import EngagementStoreDep as StoreDep
from shared import events as ev
from shared.api import Request as Body
from shared.api import WriteResult
from shared.auth import ActingMember
from shared.errors import ErrorResponse
from shared.events import ID_PATTERN
from shared.text import CleanLine

router = APIRouter(tags=["engagement"])


ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "You cannot engage with this member"},
    404: {"model": ErrorResponse, "description": "Unknown member"},
    429: {"model": ErrorResponse, "description": "Too many engagements (see Retry-After)"},
}


class EngagementCreate(Body):
    target: str = Field(pattern=ID_PATTERN, examples=["grace"])
    kind: ev.EngagementKind = Field(examples=["comment"])
    ref: Annotated[str, StringConstraints(max_length=200), CleanLine(200)] | None = Field(
        None, description="What was engaged with, e.g. a post id"
    )


class MilestoneCreate(Body):
    kind: ev.MilestoneKind = Field(examples=["promotion"])
    detail: Annotated[str, StringConstraints(max_length=200), CleanLine(200)] | None = Field(
        None, examples=["VP Engineering"]
    )


@router.post(
    "/engagements",
    status_code=201,
    response_model=WriteResult,
    responses=ERRORS,
    summary="Record an engagement by the acting member",
)
async def record_engagement(
    body: EngagementCreate, store: StoreDep, acting: ActingMember
) -> WriteResult:
    """Engaging with non-connections is allowed; it is how people meet."""
    command = domain.RecordEngagement(acting, body.target, body.kind, body.ref)
    return WriteResult.of((await store.run(command)).envelopes)


@router.post(
    "/milestones",
    status_code=201,
    response_model=WriteResult,
    responses=ERRORS,
    summary="Announce a milestone of the acting member",
)
async def announce_milestone(
    body: MilestoneCreate, store: StoreDep, acting: ActingMember
) -> WriteResult:
    """Connections are prompted to congratulate for the next days (projection)."""
    command = domain.AnnounceMilestone(acting, body.kind, body.detail)
    return WriteResult.of((await store.run(command)).envelopes)
