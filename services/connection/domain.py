"""Pure decisions of the connection service: who is a member, who is connected, follows,
blocks and lists. `decide(state, command)` returns events; `evolve(state, event)` folds one.

The state a command sees is a `Slice`: the aggregates that command touches (the members
involved, the pair between two of them, their lists), loaded and written back together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import singledispatch
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared import events as ev
from shared.domain import Conflict, Invalid, NotFound, refused, unknown_member
from shared.topics import pair_key

# --- state -----------------------------------------------------------------------------------


class Member(BaseModel):
    model_config = ConfigDict(frozen=True)

    member_id: str
    name: str
    industry: str
    headline: str | None = None
    location: str | None = None
    employer: str | None = None
    title: str | None = None
    active: bool = True
    connections: int = 0


class Pair(BaseModel):
    """Everything between two members, keyed by the unordered pair."""

    model_config = ConfigDict(frozen=True)

    connected: bool = False
    connected_at: datetime | None = None
    blockers: frozenset[str] = frozenset()
    followers: frozenset[str] = frozenset()  # which of the two follows the other
    processed_invitations: frozenset[str] = frozenset()


class Lists(BaseModel):
    """One member's named lists of connections."""

    model_config = ConfigDict(frozen=True)

    lists: dict[str, frozenset[str]] = {}

    def containing(self, member: str) -> list[str]:
        return sorted(name for name, members in self.lists.items() if member in members)


@dataclass(frozen=True)
class Slice:
    now: datetime
    actor_known: bool = True  # the acting member is registered and active (member directory)
    members: dict[str, Member | None] = field(default_factory=dict)
    pairs: dict[str, Pair] = field(default_factory=dict)
    lists: dict[str, Lists] = field(default_factory=dict)

    def member(self, member_id: str) -> Member | None:
        return self.members.get(member_id)

    def pair(self, a: str, b: str) -> Pair:
        return self.pairs.get(pair_key(a, b), Pair())

    def lists_of(self, owner: str) -> Lists:
        return self.lists.get(owner, Lists())


# --- commands --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterMember:
    member_id: str
    name: str
    industry: str
    headline: str | None = None
    location: str | None = None
    employer: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class UpdateProfile:
    member_id: str
    changes: dict[str, Any]


@dataclass(frozen=True)
class DeactivateMember:
    member_id: str
    connections: tuple[str, ...]  # the member's current connections, from the index


@dataclass(frozen=True)
class AcceptConnection:
    invitation_id: str
    sender: str
    recipient: str
    cap: int


@dataclass(frozen=True)
class RemoveConnection:
    actor: str
    other: str


@dataclass(frozen=True)
class Block:
    actor: str
    other: str


@dataclass(frozen=True)
class Unblock:
    actor: str
    other: str


@dataclass(frozen=True)
class Follow:
    actor: str
    other: str


@dataclass(frozen=True)
class Unfollow:
    actor: str
    other: str


@dataclass(frozen=True)
class ListConnection:
    owner: str
    list_name: str
    other: str


@dataclass(frozen=True)
class UnlistConnection:
    owner: str
    list_name: str
    other: str


Command = (
    RegisterMember
    | UpdateProfile
    | DeactivateMember
    | AcceptConnection
    | RemoveConnection
    | Block
    | Unblock
    | Follow
    | Unfollow
    | ListConnection
    | UnlistConnection
)

# --- decide ----------------------------------------------------------------------------------


def _active(state: Slice, member_id: str) -> Member:
    member = state.member(member_id)
    if member is None or not member.active:
        raise unknown_member(member_id)
    return member


def actor_of(command: Command) -> str | None:
    """The member acting, for commands a member sends (they must be active)."""
    match command:
        case UpdateProfile(member_id=m) | DeactivateMember(member_id=m):
            return m
        case RemoveConnection(actor=m) | Block(actor=m) | Unblock(actor=m) | Follow(actor=m):
            return m
        case Unfollow(actor=m) | ListConnection(owner=m) | UnlistConnection(owner=m):
            return m
    return None


def _not_self(actor: str, other: str) -> None:
    if actor == other:
        raise Invalid("a member cannot do this to themselves", "self_reference")


def _teardown(state: Slice, a: str, b: str, by: str, reason: ev.RemovalReason) -> list[ev.Event]:
    """Events that end a connection: removal, unfollows both ways, out of both members' lists."""
    pair = state.pair(a, b)
    low, high = sorted((a, b))
    out: list[ev.Event] = []
    if pair.connected:
        out.append(ev.ConnectionRemoved(member_a=low, member_b=high, removed_by=by, reason=reason))
    for follower in sorted(pair.followers):
        followee = b if follower == a else a
        out.append(ev.FollowStopped(follower=follower, followee=followee))
    for owner, other in ((a, b), (b, a)):
        for name in state.lists_of(owner).containing(other):
            out.append(ev.ConnectionUnlisted(owner=owner, list_name=name, member_id=other))
    return out


def decide(state: Slice, command: Command) -> list[ev.Event]:
    if not state.actor_known and actor_of(command) is not None:
        raise refused()
    match command:
        case RegisterMember():
            if state.member(command.member_id) is not None:
                raise Conflict(f"member {command.member_id} already exists", "member_exists")
            return [ev.MemberRegistered(**vars(command))]

        case UpdateProfile(member_id=member_id, changes=changes):
            member = _active(state, member_id)
            changed = {k: v for k, v in changes.items() if getattr(member, k) != v}
            if not changed:
                return []
            previous = (
                member.industry
                if "industry" in changed
                and ev.grouping_key(changed["industry"]) != ev.grouping_key(member.industry)
                else None
            )
            return [
                ev.MemberProfileUpdated(member_id=member_id, previous_industry=previous, **changed)
            ]

        case DeactivateMember(member_id=member_id, connections=connections):
            _active(state, member_id)
            out: list[ev.Event] = []
            for other in connections:
                out += _teardown(state, member_id, other, member_id, "deactivated")
            return [*out, ev.MemberDeactivated(member_id=member_id)]

        case AcceptConnection():
            return _decide_accept(state, command)

        case RemoveConnection(actor=actor, other=other):
            _not_self(actor, other)
            if not state.pair(actor, other).connected:
                raise NotFound(f"{other} is not a connection", "not_connected")
            return _teardown(state, actor, other, actor, "removed")

        case Block(actor=actor, other=other):
            _not_self(actor, other)
            _active(state, other)
            if actor in state.pair(actor, other).blockers:
                return []
            return [
                *_teardown(state, actor, other, actor, "blocked"),
                ev.MemberBlocked(blocker=actor, blocked=other),
            ]

        case Unblock(actor=actor, other=other):
            _not_self(actor, other)
            if actor not in state.pair(actor, other).blockers:
                raise NotFound(f"{other} is not blocked", "not_blocked")
            return [ev.MemberUnblocked(blocker=actor, blocked=other)]

        case Follow(actor=actor, other=other):
            _not_self(actor, other)
            _active(state, other)
            pair = state.pair(actor, other)
            if pair.blockers:
                # Either way, a block answers as a member that does not exist.
                raise unknown_member(other)
            if actor in pair.followers:
                return []
            return [ev.FollowStarted(follower=actor, followee=other)]

        case Unfollow(actor=actor, other=other):
            _not_self(actor, other)
            if actor not in state.pair(actor, other).followers:
                raise NotFound(f"you do not follow {other}", "not_following")
            return [ev.FollowStopped(follower=actor, followee=other)]

        case ListConnection(owner=owner, list_name=name, other=other):
            if not state.pair(owner, other).connected:
                raise NotFound(f"{other} is not a connection", "not_connected")
            if other in state.lists_of(owner).lists.get(name, frozenset()):
                return []
            return [ev.ConnectionListed(owner=owner, list_name=name, member_id=other)]

        case UnlistConnection(owner=owner, list_name=name, other=other):
            if other not in state.lists_of(owner).lists.get(name, frozenset()):
                raise NotFound(f"{other} is not in list {name}", "not_listed")
            return [ev.ConnectionUnlisted(owner=owner, list_name=name, member_id=other)]

    raise TypeError(f"unknown command {command!r}")


def _decide_accept(state: Slice, command: AcceptConnection) -> list[ev.Event]:
    sender, recipient = command.sender, command.recipient
    pair = state.pair(sender, recipient)
    if command.invitation_id in pair.processed_invitations or pair.connected:
        return []  # already decided for this invitation, or connected by another route

    def reject(reason: ev.RejectionReason) -> list[ev.Event]:
        return [
            ev.ConnectionRejected(
                invitation_id=command.invitation_id,
                sender=sender,
                recipient=recipient,
                reason=reason,
            )
        ]

    members = [state.member(sender), state.member(recipient)]
    if sender == recipient or any(m is None for m in members):
        return reject("unknown_member")
    if any(m is not None and not m.active for m in members):
        return reject("deactivated")
    if pair.blockers:
        return reject("blocked")
    if any(m is not None and m.connections >= command.cap for m in members):
        return reject("cap_reached")
    low, high = sorted((sender, recipient))
    out: list[ev.Event] = [
        ev.ConnectionAccepted(member_a=low, member_b=high, invitation_id=command.invitation_id)
    ]
    for follower, followee in ((sender, recipient), (recipient, sender)):
        if follower not in pair.followers:
            out.append(ev.FollowStarted(follower=follower, followee=followee))
    return out


# --- evolve ----------------------------------------------------------------------------------


def evolve(state: Slice, event: ev.Event) -> Slice:
    return _evolve(event, state, state.now)


def fold(state: Slice, events: Iterable[ev.Event]) -> Slice:
    for event in events:
        state = evolve(state, event)
    return state


@singledispatch
def _evolve(event: ev.Event, state: Slice, at: datetime) -> Slice:
    raise TypeError(f"connection service does not fold {type(event).__name__}")


def _with_member(state: Slice, member: Member) -> Slice:
    return replace(state, members={**state.members, member.member_id: member})


def _with_pair(state: Slice, a: str, b: str, **changes: Any) -> Slice:
    pair = state.pair(a, b).model_copy(update=changes)
    return replace(state, pairs={**state.pairs, pair_key(a, b): pair})


def _with_lists(state: Slice, owner: str, name: str, members: frozenset[str]) -> Slice:
    current = dict(state.lists_of(owner).lists)
    if members:
        current[name] = members
    else:
        current.pop(name, None)
    return replace(state, lists={**state.lists, owner: Lists(lists=current)})


@_evolve.register
def _(event: ev.MemberRegistered, state: Slice, at: datetime) -> Slice:
    return _with_member(state, Member(**event.model_dump()))


@_evolve.register
def _(event: ev.MemberProfileUpdated, state: Slice, at: datetime) -> Slice:
    member = state.member(event.member_id)
    assert member is not None
    changes = {k: getattr(event, k) for k in ev.PROFILE_FIELDS if getattr(event, k) is not None}
    return _with_member(state, member.model_copy(update=changes))


@_evolve.register
def _(event: ev.MemberDeactivated, state: Slice, at: datetime) -> Slice:
    member = state.member(event.member_id)
    assert member is not None
    return _with_member(state, member.model_copy(update={"active": False}))


def _count(state: Slice, member_id: str, delta: int) -> Slice:
    member = state.member(member_id)
    if member is None:
        return state
    return _with_member(
        state, member.model_copy(update={"connections": member.connections + delta})
    )


@_evolve.register
def _(event: ev.ConnectionAccepted, state: Slice, at: datetime) -> Slice:
    a, b = event.member_a, event.member_b
    processed = state.pair(a, b).processed_invitations
    if event.invitation_id:
        processed = processed | {event.invitation_id}
    state = _with_pair(
        state, a, b, connected=True, connected_at=at, processed_invitations=processed
    )
    return _count(_count(state, a, 1), b, 1)


@_evolve.register
def _(event: ev.ConnectionRejected, state: Slice, at: datetime) -> Slice:
    processed = state.pair(event.sender, event.recipient).processed_invitations
    return _with_pair(
        state,
        event.sender,
        event.recipient,
        processed_invitations=processed | {event.invitation_id},
    )


@_evolve.register
def _(event: ev.ConnectionRemoved, state: Slice, at: datetime) -> Slice:
    a, b = event.member_a, event.member_b
    state = _with_pair(state, a, b, connected=False, connected_at=None)
    return _count(_count(state, a, -1), b, -1)


@_evolve.register
def _(event: ev.MemberBlocked, state: Slice, at: datetime) -> Slice:
    pair = state.pair(event.blocker, event.blocked)
    return _with_pair(state, event.blocker, event.blocked, blockers=pair.blockers | {event.blocker})


@_evolve.register
def _(event: ev.MemberUnblocked, state: Slice, at: datetime) -> Slice:
    pair = state.pair(event.blocker, event.blocked)
    return _with_pair(state, event.blocker, event.blocked, blockers=pair.blockers - {event.blocker})


@_evolve.register
def _(event: ev.FollowStarted, state: Slice, at: datetime) -> Slice:
    pair = state.pair(event.follower, event.followee)
    return _with_pair(
        state, event.follower, event.followee, followers=pair.followers | {event.follower}
    )


@_evolve.register
def _(event: ev.FollowStopped, state: Slice, at: datetime) -> Slice:
    pair = state.pair(event.follower, event.followee)
    return _with_pair(
        state, event.follower, event.followee, followers=pair.followers - {event.follower}
    )


@_evolve.register
def _(event: ev.ConnectionListed, state: Slice, at: datetime) -> Slice:
    current = state.lists_of(event.owner).lists.get(event.list_name, frozenset())
    return _with_lists(state, event.owner, event.list_name, current | {event.member_id})


@_evolve.register
def _(event: ev.ConnectionUnlisted, state: Slice, at: datetime) -> Slice:
    current = state.lists_of(event.owner).lists.get(event.list_name, frozenset())
    return _with_lists(state, event.owner, event.list_name, current - {event.member_id})
