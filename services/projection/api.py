"""Query API of the projection: a member's own network views, industries, status.

Every member view answers only for the acting member (403 otherwise). `?after=<event_id>`
waits (up to `wait_ms`) until that event is in the read model: read-your-writes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from services.projection.domain import Filters
from services.projection.store import ReadModel
from shared.api import MemberPath, example_response
from shared.auth import ActingMember, Authenticated, require_self
from shared.errors import ApiError, ErrorResponse
from shared.events import ID_PATTERN

router = APIRouter()

ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "Another member's view"},
    404: {"model": ErrorResponse, "description": "Unknown member"},
    409: {"model": ErrorResponse, "description": "`after` event not applied in time (retry)"},
}


def get_model(request: Request) -> ReadModel:
    return request.app.state.runtime.store


ModelDep = Annotated[ReadModel, Depends(get_model)]
Text = Annotated[str | None, Query(max_length=200)]
Cursor = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="Last id of the previous page")
]
Limit = Annotated[int, Query(ge=1, le=500)]


async def read_after(
    request: Request,
    after: Annotated[
        str | None,
        Query(
            pattern=r"^[0-9a-fA-F-]{32,36}$",
            description="Wait until this event (an event_id from a write) is applied",
        ),
    ] = None,
    wait_ms: Annotated[int, Query(ge=0, le=60_000)] = 2000,
) -> None:
    if after is None:
        return
    model: ReadModel = request.app.state.runtime.store
    limit = request.app.state.settings.after_wait_max_ms
    if not await model.wait_applied(after.lower(), min(wait_ms, limit)):
        raise ApiError(
            409, "not_yet_applied", f"event {after} is not applied yet; retry", {"Retry-After": "1"}
        )


Fresh = Annotated[None, Depends(read_after)]

members = APIRouter(prefix="/members/{member_id}", tags=["network"], responses=ERRORS)


def _own(member_id: str, acting: str) -> str:
    require_self(member_id, acting)
    return member_id


class Page(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None = None


@members.get("/connections", summary="Your connections, filtered and paged")
async def connections(
    member_id: MemberPath,
    acting: ActingMember,
    model: ModelDep,
    _: Fresh,
    industry: Text = None,
    location: Text = None,
    employer: Text = None,
    title: Text = None,
    list: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    me = _own(member_id, acting)
    filters = Filters(industry, location, employer, title)
    return await model.connection_page(me, filters, list, cursor, limit)


@members.get(
    "/summary",
    summary="Counts of your network",
    responses=example_response(
        {
            "connections": 523,
            "connections_display": "500+",
            "followers": 610,
            "following": 498,
            "pending_received": 3,
            "pending_sent": 1,
            "engaged_connections": 41,
        }
    ),
)
async def summary(
    member_id: MemberPath, acting: ActingMember, model: ModelDep, _: Fresh
) -> dict[str, Any]:
    return await model.summary(_own(member_id, acting), datetime.now(UTC))


@members.get(
    "/degree/{other}",
    summary="Degree between you and another member",
    responses=example_response(
        {"degree": 2, "mutual_connections": 3, "mutual_sample": ["alan", "linus", "radia"]}
    ),
)
async def degree(
    member_id: MemberPath, other: MemberPath, acting: ActingMember, model: ModelDep, _: Fresh
) -> dict[str, Any]:
    """1, 2, 3 or null (further or unknown); 0 for yourself. With mutual connections."""
    me = _own(member_id, acting)
    ks = await model.current()
    value, mutual = await model.degree(ks, me, other)
    return {"degree": value, "mutual_connections": len(mutual), "mutual_sample": mutual[:5]}


@members.get(
    "/mutual/{other}",
    summary="Mutual connections, paged",
    responses=example_response({"items": ["alan", "linus"], "total": 2, "next_cursor": None}),
)
async def mutual(
    member_id: MemberPath,
    other: MemberPath,
    acting: ActingMember,
    model: ModelDep,
    _: Fresh,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    me = _own(member_id, acting)
    common = await model.mutual(await model.current(), me, other)
    if cursor:
        common = [m for m in common if m > cursor]
    page = common[:limit]
    return {
        "items": page,
        "total": len(common),
        "next_cursor": page[-1] if len(common) > limit else None,
    }


@members.get(
    "/suggestions",
    summary="People you may know",
    responses=example_response(
        {
            "items": [
                {
                    "member_id": "grace",
                    "mutual_connections": 12,
                    "score": 18.5,
                    "shared": ["industry", "location"],
                    "name": "Grace Hopper",
                    "headline": "Compilers",
                }
            ],
            "cached": False,
        }
    ),
)
async def suggestions(
    member_id: MemberPath,
    acting: ActingMember,
    model: ModelDep,
    _: Fresh,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """2nd-degree members ranked by mutual connections, boosted for a shared industry,
    employer or location; never yourself, connections, pending invitations or blocks."""
    return await model.suggestions(_own(member_id, acting), limit)


@members.get("/network", summary="Search your 2nd or 3rd-degree network")
async def network(
    member_id: MemberPath,
    acting: ActingMember,
    model: ModelDep,
    _: Fresh,
    degree: Annotated[int, Query(ge=2, le=3, description="2 or 3")] = 2,
    industry: Text = None,
    location: Text = None,
    employer: Text = None,
    title: Text = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    """Bounded in cost: past a scan cap the result is partial and says `capped: true`."""
    me = _own(member_id, acting)
    filters = Filters(industry, location, employer, title)
    return await model.network(me, degree, filters, cursor, limit)


@members.get("/invitations", summary="Your pending invitations")
async def invitations(
    member_id: MemberPath,
    acting: ActingMember,
    model: ModelDep,
    _: Fresh,
    direction: Literal["received", "sent"] = "received",
) -> dict[str, Any]:
    items = await model.pending(_own(member_id, acting), direction)
    return {"direction": direction, "count": len(items), "items": items}


@members.get("/engagement", summary="Engaged, top, stale connections and prompts")
async def engagement(
    member_id: MemberPath, acting: ActingMember, model: ModelDep, _: Fresh
) -> dict[str, Any]:
    return await model.engagement(_own(member_id, acting), datetime.now(UTC))


ops = APIRouter(tags=["ops"], responses=ERRORS)


@ops.get(
    "/industries",
    summary="Members, average and median connections per industry",
    responses=example_response(
        {
            "industries": [
                {
                    "industry": "Technology",
                    "members": 1200,
                    "connections": 807600,
                    "average_connections": 673.0,
                    "median_connections": 410.0,
                    "distribution": {"0": 3, "1-9": 40, "10-49": 120, "50-99": 150},
                }
            ]
        }
    ),
)
async def industries(model: ModelDep, _auth: Authenticated, _: Fresh) -> dict[str, Any]:
    return {"industries": await model.industries()}


@ops.get(
    "/projection/status",
    summary="Positions, lag, events applied, DLQ, rebuild state",
    responses=example_response(
        {
            "version": 1,
            "events_applied": 54364,
            "last_event_time": "2026-11-27T16:47:03Z",
            "positions": {"rapport.connections:0": 972},
            "dlq": {},
            "rebuild": {"state": "idle"},
            "lag": {"rapport.connections:0": 0},
            "total_lag": 0,
        }
    ),
)
async def status(request: Request, model: ModelDep, _auth: Authenticated) -> dict[str, Any]:
    state = await model.status()
    ends = await request.app.state.runtime.components["rebuilder"].end_offsets()
    lag = {tp: max(end - state["positions"].get(tp, 0), 0) for tp, end in sorted(ends.items())}
    return {**state, "lag": lag, "total_lag": sum(lag.values())}


@ops.post("/projection/rebuild", status_code=202, summary="Rebuild the read model from offset 0")
async def rebuild(request: Request, _auth: Authenticated) -> dict[str, Any]:
    """Replays every topic into a new keyspace version; readers flip when it caught up."""
    return await request.app.state.runtime.components["rebuilder"].start()


router.include_router(members)
router.include_router(ops)
