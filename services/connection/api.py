"""HTTP edge of the connection service: validate, build a command, run it, answer."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header
from pydantic import Field, StringConstraints

from services.connection import domain
from services.connection.deps import ConnectionStoreDep as StoreDep
from shared.api import IdPath, MemberPath, WriteResult
from shared.api import Request as Body
from shared.auth import ActingMember, Authenticated, require_self
from shared.domain import refused, unknown_member
from shared.errors import ErrorResponse
from shared.events import ID_PATTERN
from shared.text import CleanLine

router = APIRouter()

# Profile text is cleaned (NFKC, invisible characters stripped, control characters refused),
# so two industries that look alike are one.
Name = Annotated[str, StringConstraints(max_length=200), CleanLine(200, required=True)]
Industry = Annotated[str, StringConstraints(max_length=100), CleanLine(100, required=True)]
Text = Annotated[str, StringConstraints(max_length=200), CleanLine(200)]


ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "Not allowed for the acting member"},
    404: {"model": ErrorResponse, "description": "Unknown member or relation"},
    409: {"model": ErrorResponse, "description": "Conflicts with the current state"},
}


class ProfileDetails(Body):
    """The optional part of a profile, shared by what is sent and what is shown."""

    headline: Text | None = None
    location: Text | None = None
    employer: Text | None = None
    title: Text | None = None


class MemberCreate(ProfileDetails):
    member_id: str | None = Field(None, pattern=ID_PATTERN, examples=["ada"])
    name: Name = Field(examples=["Ada Lovelace"])
    industry: Industry = Field(examples=["Technology"])


class MemberUpdate(ProfileDetails):
    name: Name | None = None
    industry: Industry | None = None


class MemberPublic(ProfileDetails):
    member_id: str
    name: str
    industry: str


class MemberCreated(WriteResult):
    member_id: str


members = APIRouter(prefix="/members", tags=["members"], responses=ERRORS)


@members.post("", status_code=201, response_model=MemberCreated, summary="Register a member")
async def register_member(
    body: MemberCreate,
    store: StoreDep,
    _: Authenticated,
    x_member_id: Annotated[str | None, Header(pattern=ID_PATTERN)] = None,
) -> MemberCreated:
    """The new member is `member_id`, else the acting member (`X-Member-Id`), else a new id."""
    member_id = body.member_id or x_member_id or uuid.uuid4().hex
    if x_member_id is not None and member_id != x_member_id:
        raise refused()
    fields = body.model_dump(exclude={"member_id"})
    fields["industry"] = await store.canonical_industry(body.industry)
    outcome = await store.run(domain.RegisterMember(member_id=member_id, **fields))
    return MemberCreated(member_id=member_id, **WriteResult.of(outcome.envelopes).model_dump())


@members.get("/{member_id}", response_model=MemberPublic, summary="A member's profile")
async def get_member(
    member_id: MemberPath,
    store: StoreDep,
    _: Authenticated,
    x_member_id: Annotated[
        str | None, Header(pattern=ID_PATTERN, description="The viewing member, if any")
    ] = None,
) -> MemberPublic:
    """404 for a member that does not exist, is deactivated, or (to the viewer named in
    `X-Member-Id`) blocked them or was blocked by them: all three look the same."""
    member = await store.profile(member_id, x_member_id)
    if member is None:
        raise unknown_member(member_id)
    return MemberPublic(**member.model_dump(include=set(MemberPublic.model_fields)))


@members.patch("/{member_id}", response_model=WriteResult, summary="Update your profile")
async def update_member(
    member_id: MemberPath, body: MemberUpdate, store: StoreDep, acting: ActingMember
) -> WriteResult:
    require_self(member_id, acting)
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    if "industry" in changes:
        changes["industry"] = await store.canonical_industry(changes["industry"])
    outcome = await store.run(domain.UpdateProfile(member_id=member_id, changes=changes))
    return WriteResult.of(outcome.envelopes)


@members.delete("/{member_id}", response_model=WriteResult, summary="Deactivate your account")
async def deactivate_member(
    member_id: MemberPath, store: StoreDep, acting: ActingMember
) -> WriteResult:
    """Deactivates the member (they are out of the directory at once), then removes every
    connection of theirs; the answer comes once all are removed."""
    require_self(member_id, acting)
    return WriteResult.of(await store.deactivate(member_id))


relations = APIRouter(tags=["connections"], responses=ERRORS)


@relations.delete("/connections/{other}", response_model=WriteResult, summary="Remove a connection")
async def remove_connection(
    other: MemberPath, store: StoreDep, acting: ActingMember
) -> WriteResult:
    """Silent to the other member; also ends the follows and list entries between the two."""
    return WriteResult.of(await store.remove(acting, other))


@relations.post("/blocks/{other}", response_model=WriteResult, summary="Block a member")
async def block(other: MemberPath, store: StoreDep, acting: ActingMember) -> WriteResult:
    """Removes the connection and follows both ways; pending invitations are cancelled."""
    return WriteResult.of(await store.block(acting, other))


@relations.delete("/blocks/{other}", response_model=WriteResult, summary="Unblock a member")
async def unblock(other: MemberPath, store: StoreDep, acting: ActingMember) -> WriteResult:
    return WriteResult.of((await store.run(domain.Unblock(acting, other))).envelopes)


@relations.put("/follows/{other}", response_model=WriteResult, summary="Follow a member")
async def follow(other: MemberPath, store: StoreDep, acting: ActingMember) -> WriteResult:
    return WriteResult.of((await store.run(domain.Follow(acting, other))).envelopes)


@relations.delete("/follows/{other}", response_model=WriteResult, summary="Stop following")
async def unfollow(other: MemberPath, store: StoreDep, acting: ActingMember) -> WriteResult:
    return WriteResult.of((await store.run(domain.Unfollow(acting, other))).envelopes)


@relations.put("/lists/{name}/members/{other}", response_model=WriteResult, summary="Add to a list")
async def list_connection(
    name: IdPath, other: MemberPath, store: StoreDep, acting: ActingMember
) -> WriteResult:
    outcome = await store.run(domain.ListConnection(acting, name, other))
    return WriteResult.of(outcome.envelopes)


@relations.delete(
    "/lists/{name}/members/{other}", response_model=WriteResult, summary="Remove from a list"
)
async def unlist_connection(
    name: IdPath, other: MemberPath, store: StoreDep, acting: ActingMember
) -> WriteResult:
    outcome = await store.run(domain.UnlistConnection(acting, name, other))
    return WriteResult.of(outcome.envelopes)


router.include_router(members)
router.include_router(relations)
