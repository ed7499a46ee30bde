"""Pure decisions of the connection service: who is a member, who is connected, follows,
blocks and lists. `decide(state, command)` returns changes (catalog events, and local changes
that are committed but not published); `evolve(state, change)` folds one.

The state a command sees is a `Slice`: the aggregates of one owner that the command writes
(a member with their lists, or a pair), with what it only reads from other owners (a pair,
the member directory). Each owner's keys are in its own slot group, so a command commits in
one slot and the service runs on Redis Cluster. A rule over two members is a saga of such
commands (docs/scaling.md, "The write side on a cluster"):

- accepting: each member holds a place for the invitation (`HoldPlace`: the cap counts
  connections and places held), then the pair decides (`AcceptConnection`: connected, or
  rejected with the reason a hold gave), then each member's side follows the pair
  (`Reconcile`: the count, the connections index, the place let go);
- removing, blocking: the pair first, then each member's side (`Reconcile`, which also takes
  the other out of the member's lists);
- deactivating: the member first, then each connection ends (`EndConnection`) and both sides
  follow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import singledispatch
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared import events as ev
from shared.domain import Conflict, Invalid, LocalChange, NotFound, refused, unknown_member
from shared.topics import pair_key

# How long a place held for an accept counts against the cap if the saga stops half-way
# (a crash between the hold and the pair's decision): then the place frees itself.
PLACE_HOLD = timedelta(seconds=60)

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
    # Places held for accepts being decided: invitation id -> until when (PLACE_HOLD).
    places: dict[str, datetime] = {}

    def live_places(self, now: datetime, besides: str | None = None) -> int:
        return sum(1 for i, until in self.places.items() if until > now and i != besides)


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
    other_known: bool = True  # the other member is registered and active (member directory)
    # The members whose connections index holds the other member of the command's pair.
    indexed: frozenset[str] = frozenset()
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
    """The member's own step; their connections then end one by one (`EndConnection`)."""

    member_id: str


@dataclass(frozen=True)
class HoldPlace:
    """Each member (of one slot group) holds a place below the cap for an accept being
    decided (kept if already held)."""

    members: tuple[str, ...]
    invitation_id: str
    cap: int


@dataclass(frozen=True)
class AcceptConnection:
    """The pair's decision, given what each member's `HoldPlace` refused (if anything)."""

    invitation_id: str
    sender: str
    recipient: str
    refusals: tuple[tuple[str, ev.RejectionReason], ...] = ()


@dataclass(frozen=True)
class EndConnection:
    """A connection of a deactivated member ends (no-op if it already did)."""

    member_id: str
    other: str


@dataclass(frozen=True)
class Reconcile:
    """The sides of `members` (those of the pair in one slot group) follow the pair: the
    count and the connections index, the other out of the member's lists once
    disconnected, the places held for the pair's decided invitations (and `invitation_id`)
    let go. State-based, so it may run any number of times, in any order. `touch`: commit
    even when nothing changed, so that a reconcile that read the pair before its last
    change (and commits later) meets a version conflict and reads again."""

    pair: tuple[str, str]
    members: tuple[str, ...]
    invitation_id: str | None = None
    touch: bool = True

    def other(self, member: str) -> str:
        a, b = self.pair
        return b if member == a else a


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
    | HoldPlace
    | AcceptConnection
    | EndConnection
    | Reconcile
    | RemoveConnection
    | Block
    | Unblock
    | Follow
    | Unfollow
    | ListConnection
    | UnlistConnection
)

# --- local changes (committed, never published) ---------------------------------------------

Change = ev.Event | LocalChange


@dataclass(frozen=True)
class PlaceHeld(LocalChange):
    member_id: str
    invitation_id: str
    until: datetime


@dataclass(frozen=True)
class PlaceReleased(LocalChange):
    member_id: str
    invitation_id: str


@dataclass(frozen=True)
class MemberConnected(LocalChange):
    """The member's side of a connection: counted and in their connections index."""

    member_id: str
    other: str


@dataclass(frozen=True)
class MemberDisconnected(LocalChange):
    member_id: str
    other: str


@dataclass(frozen=True)
class Reconciled(LocalChange):
    """Nothing changed; committed only to move the member's version (see `Reconcile`)."""

    member_id: str


def member_sides(event: ev.Event) -> list[LocalChange]:
    """The members' sides of a pair's event, as a replay of the log folds them."""
    match event:
        case ev.ConnectionAccepted(member_a=a, member_b=b):
            return [MemberConnected(a, b), MemberConnected(b, a)]
        case ev.ConnectionRemoved(member_a=a, member_b=b):
            return [MemberDisconnected(a, b), MemberDisconnected(b, a)]
    return []


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


def _teardown(state: Slice, a: str, b: str, by: str, reason: ev.RemovalReason) -> list[Change]:
    """The pair's events that end a connection: removal and unfollows both ways (each
    member's side, lists included, follows by `Reconcile`)."""
    pair = state.pair(a, b)
    low, high = sorted((a, b))
    out: list[Change] = []
    if pair.connected:
        out.append(ev.ConnectionRemoved(member_a=low, member_b=high, removed_by=by, reason=reason))
    for follower in sorted(pair.followers):
        followee = b if follower == a else a
        out.append(ev.FollowStopped(follower=follower, followee=followee))
    return out


def place_refusal(
    member: Member | None, invitation_id: str, cap: int, now: datetime
) -> ev.RejectionReason | None:
    """Why `member` has no place for this invitation's connection (None: they have one)."""
    if member is None:
        return "unknown_member"
    if not member.active:
        return "deactivated"
    held = member.places.get(invitation_id)
    if held is not None and held > now:
        return None
    if member.connections + member.live_places(now, besides=invitation_id) >= cap:
        return "cap_reached"
    return None


def decide(state: Slice, command: Command) -> list[Change]:
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

        case DeactivateMember(member_id=member_id):
            _active(state, member_id)
            return [ev.MemberDeactivated(member_id=member_id)]

        case HoldPlace(members=members, invitation_id=i, cap=cap):
            held: list[Change] = []
            for m in dict.fromkeys(members):
                holder = state.member(m)
                if holder is None or place_refusal(holder, i, cap, state.now) is not None:
                    continue
                if i not in holder.places or holder.places[i] <= state.now:
                    held.append(PlaceHeld(m, i, state.now + PLACE_HOLD))
            return held

        case AcceptConnection():
            return _decide_accept(state, command)

        case EndConnection(member_id=m, other=other):
            if not state.pair(m, other).connected:
                return []
            return _teardown(state, m, other, m, "deactivated")

        case Reconcile():
            return _reconcile(state, command)

        case RemoveConnection(actor=actor, other=other):
            _not_self(actor, other)
            if not state.pair(actor, other).connected:
                raise NotFound(f"{other} is not a connection", "not_connected")
            return _teardown(state, actor, other, actor, "removed")

        case Block(actor=actor, other=other):
            _not_self(actor, other)
            if not state.other_known:
                raise unknown_member(other)
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
            if not state.other_known:
                raise unknown_member(other)
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
            if owner not in state.indexed:  # the owner's connections index
                raise NotFound(f"{other} is not a connection", "not_connected")
            if other in state.lists_of(owner).lists.get(name, frozenset()):
                return []
            return [ev.ConnectionListed(owner=owner, list_name=name, member_id=other)]

        case UnlistConnection(owner=owner, list_name=name, other=other):
            if other not in state.lists_of(owner).lists.get(name, frozenset()):
                raise NotFound(f"{other} is not in list {name}", "not_listed")
            return [ev.ConnectionUnlisted(owner=owner, list_name=name, member_id=other)]

    raise TypeError(f"unknown command {command!r}")


def _decide_accept(state: Slice, command: AcceptConnection) -> list[Change]:
    sender, recipient = command.sender, command.recipient
    pair = state.pair(sender, recipient)
    if command.invitation_id in pair.processed_invitations or pair.connected:
        return []  # already decided for this invitation, or connected by another route

    def reject(reason: ev.RejectionReason) -> list[Change]:
        return [
            ev.ConnectionRejected(
                invitation_id=command.invitation_id,
                sender=sender,
                recipient=recipient,
                reason=reason,
            )
        ]

    refused = {reason for _, reason in command.refusals}
    if sender == recipient or "unknown_member" in refused:
        return reject("unknown_member")
    if "deactivated" in refused:
        return reject("deactivated")
    if pair.blockers:
        return reject("blocked")
    if "cap_reached" in refused:
        return reject("cap_reached")
    low, high = sorted((sender, recipient))
    # The two follow each other from here on: the event says so (no FollowStarted beside it).
    return [ev.ConnectionAccepted(member_a=low, member_b=high, invitation_id=command.invitation_id)]


def _reconcile(state: Slice, command: Reconcile) -> list[Change]:
    out: list[Change] = []
    for m in dict.fromkeys(command.members):
        member = state.member(m)
        if member is None:
            continue
        other = command.other(m)
        pair = state.pair(m, other)
        # A place is let go once its invitation is decided (whoever reconciles first: the
        # request, or the consumer of the pair's event), so that it never counts twice.
        out += [
            PlaceReleased(m, i)
            for i in sorted(member.places)
            if i == command.invitation_id or i in pair.processed_invitations
        ]
        indexed = m in state.indexed
        if pair.connected and not indexed:
            out.append(MemberConnected(m, other))
        elif not pair.connected and indexed:
            out.append(MemberDisconnected(m, other))
            for name in state.lists_of(m).containing(other):
                out.append(ev.ConnectionUnlisted(owner=m, list_name=name, member_id=other))
    if not out and command.touch and any(state.member(m) for m in command.members):
        out.append(Reconciled(command.members[0]))
    return out


# --- evolve ----------------------------------------------------------------------------------


def evolve(state: Slice, event: Change) -> Slice:
    return _evolve(event, state, state.now)


def fold(state: Slice, events: Iterable[Change]) -> Slice:
    for event in events:
        state = evolve(state, event)
    return state


@singledispatch
def _evolve(event: Change, state: Slice, at: datetime) -> Slice:
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
    pair = state.pair(a, b)
    processed = pair.processed_invitations
    if event.invitation_id:
        processed = processed | {event.invitation_id}
    return _with_pair(
        state,
        a,
        b,
        connected=True,
        connected_at=at,
        processed_invitations=processed,
        followers=pair.followers | {a, b},  # each follows the other (ConnectionAccepted)
    )


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
    return _with_pair(state, event.member_a, event.member_b, connected=False, connected_at=None)


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


@_evolve.register
def _(change: PlaceHeld, state: Slice, at: datetime) -> Slice:
    member = state.member(change.member_id)
    assert member is not None
    places = {i: until for i, until in member.places.items() if until > at}
    places[change.invitation_id] = change.until
    return _with_member(state, member.model_copy(update={"places": places}))


def _without_place(member: Member, invitation_id: str) -> Member:
    places = {i: until for i, until in member.places.items() if i != invitation_id}
    return member.model_copy(update={"places": places})


@_evolve.register
def _(change: PlaceReleased, state: Slice, at: datetime) -> Slice:
    member = state.member(change.member_id)
    assert member is not None
    return _with_member(state, _without_place(member, change.invitation_id))


@_evolve.register
def _(change: MemberConnected, state: Slice, at: datetime) -> Slice:
    return _count(state, change.member_id, 1)


@_evolve.register
def _(change: MemberDisconnected, state: Slice, at: datetime) -> Slice:
    return _count(state, change.member_id, -1)


@_evolve.register
def _(change: Reconciled, state: Slice, at: datetime) -> Slice:
    return state
