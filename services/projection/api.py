"""Query API of the projection: a member's own network views, industries, status.

Every member view answers only for the acting member (403 otherwise). `?after=<event_id>`
waits (up to `wait_ms`) until that event is in the read model: read-your-writes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from services.projection import queries
from services.projection.deps import ProjectionDep, ReadModelDep
from services.projection.domain import Filters
from services.projection.rebuild import RebuildRunning
from shared.api import MemberPath, example_response
from shared.auth import ActingMember, Admin, Reader, require_self
from shared.errors import ApiError, ErrorResponse
from shared.events import ID_PATTERN

router = APIRouter()

ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "Another member's view"},
    404: {"model": ErrorResponse, "description": "Unknown member"},
    409: {"model": ErrorResponse, "description": "`after` event not applied in time (retry)"},
    429: {"model": ErrorResponse, "description": "Member lookup quota used up (see Retry-After)"},
}


Text = Annotated[str | None, Query(max_length=200)]
AFTER_MAX = 32  # event ids one `?after=` may name (a client's writes since its last read)
_EVENT_ID = r"[0-9a-fA-F-]{32,36}"
AFTER_PATTERN = rf"^{_EVENT_ID}(,{_EVENT_ID}){{0,{AFTER_MAX - 1}}}$"
Cursor = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="Last id of the previous page")
]
Limit = Annotated[int, Query(ge=1, le=500)]


async def read_after(
    model: ReadModelDep,
    after: Annotated[
        str | None,
        Query(
            pattern=AFTER_PATTERN,
            description=(
                "Wait until these events (event_ids from writes, comma-separated, at most "
                f"{AFTER_MAX}) are applied: events on different partitions are applied "
                "independently, so a client passes each write it made since its last read"
            ),
        ),
    ] = None,
    wait_ms: Annotated[int, Query(ge=0, le=60_000)] = 2000,
) -> None:
    if after is None:
        return
    limit = model.settings.after_wait_max_ms
    events = list(dict.fromkeys(after.lower().split(",")))
    if not await model.wait_applied(events, min(wait_ms, limit)):
        message = f"events {after} are not applied yet; retry"
        raise ApiError(409, "not_yet_applied", message, {"Retry-After": "1"})


Fresh = Annotated[None, Depends(read_after)]

# Status views read the broker's end offsets within this long, else answer the last known.
ENDS_DEADLINE_S = 1.0

members = APIRouter(prefix="/members/{member_id}", tags=["network"], responses=ERRORS)


def _own(member_id: str, acting: str) -> str:
    require_self(member_id, acting)
    return member_id


# --- responses -------------------------------------------------------------------------------


class MemberCard(BaseModel):
    member_id: str
    name: str | None = None
    industry: str | None = None
    headline: str | None = None
    location: str | None = None
    employer: str | None = None
    title: str | None = None


class ConnectionsPage(BaseModel):
    items: list[MemberCard]
    next_cursor: str | None = None
    total: int


class NetworkPage(BaseModel):
    items: list[MemberCard]
    next_cursor: str | None = None
    capped: bool = Field(description="The scan cap cut the neighbourhood short")


class Summary(BaseModel):
    connections: int
    connections_display: str
    followers: int
    following: int
    pending_received: int
    pending_sent: int
    engaged_connections: int


class Degree(BaseModel):
    degree: int | None
    mutual_connections: int
    mutual_sample: list[str]


class Badges(BaseModel):
    degrees: dict[str, int | None]


class PathOut(BaseModel):
    members: list[str] = Field(description="From you to the other member")
    score: float = Field(description="Engagement along the path (stored scores, summed)")


class Paths(BaseModel):
    degree: int | None
    paths: list[PathOut]


class MutualPage(BaseModel):
    items: list[str]
    total: int
    next_cursor: str | None = None


class Suggestion(BaseModel):
    member_id: str
    mutual_connections: int
    score: float
    shared: list[str]
    name: str | None = None
    headline: str | None = None


class Suggestions(BaseModel):
    items: list[Suggestion]
    cached: bool


class PendingInvitation(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    invitation_id: str
    from_: str | None = Field(None, alias="from", description="Sender (received invitations)")
    to: str | None = Field(None, description="Recipient (sent invitations)")
    sent_at: str | None = None


class PendingInvitations(BaseModel):
    direction: Literal["received", "sent"]
    count: int
    items: list[PendingInvitation]


class ScoredConnection(BaseModel):
    member_id: str
    score: float
    last_interaction: str | None = None


class CongratulatePrompt(BaseModel):
    member_id: str
    milestone: str
    detail: str | None = None
    announced_at: str
    event_id: str


class EngagementViews(BaseModel):
    engaged: list[ScoredConnection]
    top: list[ScoredConnection]
    stale: list[ScoredConnection]
    reach_out: list[ScoredConnection]
    congratulate: list[CongratulatePrompt]


class IndustryFigures(BaseModel):
    industry: str
    members: int
    connections: int
    average_connections: float
    median_connections: float
    distribution: dict[str, int]


class Industries(BaseModel):
    industries: list[IndustryFigures]


class ProjectionStatus(BaseModel):
    version: int
    viewer_cache: dict[str, int] = Field(
        description="Viewer-network cache: hits, misses, builds, evictions, bytes"
    )
    events_applied: int
    last_event_time: str | None = None
    positions: dict[str, int]
    gaps: dict[str, int] = Field(
        description="Offsets found missing from the log per partition (retention moved its "
        "start, transaction markers, compaction): skipped, not waited for"
    )
    log_resets: dict[str, int] = Field(
        description="Partitions found ending before their stored position (the broker lost "
        "its log and began again); their records were applied as new events"
    )
    dlq: dict[str, int]
    rebuild: dict[str, Any]
    lag: dict[str, int]
    total_lag: int
    ends_as_of: str | None = Field(
        None,
        description="When the topics' end offsets behind `lag` were read: earlier than now "
        "when the broker did not answer in time (null: never read)",
    )


class RebuildStarted(BaseModel):
    state: str
    version: int


# --- member views ----------------------------------------------------------------------------


@members.get(
    "/connections", response_model=ConnectionsPage, summary="Your connections, filtered and paged"
)
async def connections(
    member_id: MemberPath,
    acting: ActingMember,
    model: ReadModelDep,
    _: Fresh,
    industry: Text = None,
    location: Text = None,
    employer: Text = None,
    title: Text = None,
    list: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> ConnectionsPage:
    me = _own(member_id, acting)
    filters = Filters(industry, location, employer, title)
    page = await queries.network.connection_page(model, me, filters, list, cursor, limit)
    return ConnectionsPage.model_validate(page)


@members.get(
    "/summary",
    response_model=Summary,
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
    member_id: MemberPath, acting: ActingMember, model: ReadModelDep, _: Fresh
) -> Summary:
    me = _own(member_id, acting)
    return Summary.model_validate(await queries.members.summary(model, me, datetime.now(UTC)))


@members.get(
    "/degree/{other}",
    response_model=Degree,
    summary="Degree between you and another member",
    responses=example_response(
        {"degree": 2, "mutual_connections": 3, "mutual_sample": ["alan", "linus", "radia"]}
    ),
)
async def degree(
    member_id: MemberPath, other: MemberPath, acting: ActingMember, model: ReadModelDep, _: Fresh
) -> Degree:
    """1, 2, 3 or null (further or unknown); 0 for yourself. With mutual connections."""
    me = _own(member_id, acting)
    ks = await model.spend_read_quota(me, 1, "degree")
    answer = await queries.degree.degree(model, ks, me, other)
    return Degree(
        degree=answer.degree,
        mutual_connections=answer.mutual_connections,
        mutual_sample=answer.mutual_sample,
    )


@members.get(
    "/degrees",
    response_model=Badges,
    summary="Distance badges: your degree to each of up to 100 members",
    responses=example_response({"degrees": {"grace": 1, "alan": 2, "linus": 3, "ken": None}}),
)
async def degrees(
    member_id: MemberPath,
    acting: ActingMember,
    model: ReadModelDep,
    _: Fresh,
    ids: Annotated[
        str,
        Query(
            max_length=100 * 65,
            pattern=r"^[A-Za-z0-9_-]{1,64}(,[A-Za-z0-9_-]{1,64}){0,99}$",
            description="Up to 100 member ids, comma-separated",
            examples=["grace,alan,linus"],
        ),
    ],
) -> Badges:
    """For search results and "people also viewed": 1, 2, 3 or null for each id (null also
    for a block either way, and for unknown members), from your cached network."""
    me = _own(member_id, acting)
    wanted = list(dict.fromkeys(ids.split(",")))
    ks = await model.spend_read_quota(me, len(wanted), "badges")
    found = await queries.degree.badges(model, ks, me, wanted)
    return Badges(degrees=dict(zip(wanted, found, strict=True)))


@members.get(
    "/paths/{other}",
    response_model=Paths,
    summary="How you're connected: up to `limit` shortest paths",
    responses=example_response(
        {"degree": 3, "paths": [{"members": ["ada", "grace", "alan", "linus"], "score": 41.5}]}
    ),
)
async def paths(
    member_id: MemberPath,
    other: MemberPath,
    acting: ActingMember,
    model: ReadModelDep,
    _: Fresh,
    limit: Annotated[int, Query(ge=1, le=10)] = 3,
) -> Paths:
    """Shortest paths you -> X -> Y -> them, those along your most engaged connections first;
    never through a member who blocked or was blocked by either of you."""
    me = _own(member_id, acting)
    ks = await model.spend_read_quota(me, 1, "paths")
    found = await queries.paths.paths(model, ks, me, other, limit)
    degree = len(found[0].members) - 1 if found else None
    return Paths(
        degree=degree, paths=[PathOut(members=p.members, score=round(p.score, 3)) for p in found]
    )


@members.get(
    "/mutual/{other}",
    response_model=MutualPage,
    summary="Mutual connections, paged",
    responses=example_response({"items": ["alan", "linus"], "total": 2, "next_cursor": None}),
)
async def mutual(
    member_id: MemberPath,
    other: MemberPath,
    acting: ActingMember,
    model: ReadModelDep,
    _: Fresh,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> MutualPage:
    me = _own(member_id, acting)
    ks = await model.spend_read_quota(me, 1, "mutual")
    total, page, more = await queries.degree.mutual_page(model, ks, me, other, cursor, limit)
    return MutualPage(items=page, total=total, next_cursor=page[-1] if more and page else None)


@members.get(
    "/suggestions",
    response_model=Suggestions,
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
    model: ReadModelDep,
    _: Fresh,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Suggestions:
    """2nd-degree members ranked by mutual connections, boosted for a shared industry,
    employer or location; never yourself, connections, pending invitations or blocks."""
    me = _own(member_id, acting)
    return Suggestions.model_validate(await queries.suggestions.suggestions(model, me, limit))


@members.get(
    "/network", response_model=NetworkPage, summary="Search your 2nd or 3rd-degree network"
)
async def network(
    member_id: MemberPath,
    acting: ActingMember,
    model: ReadModelDep,
    _: Fresh,
    degree: Annotated[int, Query(ge=2, le=3, description="2 or 3")] = 2,
    industry: Text = None,
    location: Text = None,
    employer: Text = None,
    title: Text = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> NetworkPage:
    """Bounded in cost: past a scan cap the result is partial and says `capped: true`."""
    me = _own(member_id, acting)
    ks = await model.spend_read_quota(me, limit, "network")
    filters = Filters(industry, location, employer, title)
    page = await queries.network.network(model, ks, me, degree, filters, cursor, limit)
    return NetworkPage.model_validate(page)


@members.get(
    "/invitations",
    response_model=PendingInvitations,
    response_model_exclude_none=True,
    summary="Your pending invitations",
)
async def invitations(
    member_id: MemberPath,
    acting: ActingMember,
    model: ReadModelDep,
    _: Fresh,
    direction: Literal["received", "sent"] = "received",
) -> PendingInvitations:
    items = await queries.members.pending(model, _own(member_id, acting), direction)
    return PendingInvitations.model_validate(
        {"direction": direction, "count": len(items), "items": items}
    )


@members.get(
    "/engagement",
    response_model=EngagementViews,
    summary="Engaged, top, stale connections and prompts",
)
async def engagement(
    member_id: MemberPath, acting: ActingMember, model: ReadModelDep, _: Fresh
) -> EngagementViews:
    views = await queries.engagement.engagement(model, _own(member_id, acting), datetime.now(UTC))
    return EngagementViews.model_validate(views)


ops = APIRouter(tags=["ops"], responses=ERRORS)


@ops.get(
    "/industries",
    response_model=Industries,
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
async def industries(model: ReadModelDep, _auth: Reader, _: Fresh) -> Industries:
    return Industries.model_validate({"industries": await queries.industries.industries(model)})


@ops.get(
    "/projection/status",
    response_model=ProjectionStatus,
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
async def status(projection: ProjectionDep, _auth: Reader) -> ProjectionStatus:
    state = await queries.status.status(projection.store)
    ends, read_at = await projection.ends.within(ENDS_DEADLINE_S)
    lag = queries.status.lag(ends, state["positions"])
    as_of = datetime.fromtimestamp(read_at, UTC).isoformat() if read_at else None
    return ProjectionStatus.model_validate(
        {**state, "lag": lag, "total_lag": sum(lag.values()), "ends_as_of": as_of}
    )


@ops.post(
    "/projection/rebuild",
    status_code=202,
    response_model=RebuildStarted,
    summary="Rebuild the read model from offset 0",
)
async def rebuild(projection: ProjectionDep, _auth: Admin) -> RebuildStarted:
    """Replays every topic into a new keyspace version; readers flip when it caught up.
    Admin token only; one rebuild at a time across replicas (409 otherwise)."""
    try:
        return RebuildStarted.model_validate(await projection.rebuilder.start())
    except RebuildRunning:
        raise ApiError(409, "rebuild_running", "a rebuild is already running") from None


router.include_router(members)
router.include_router(ops)
