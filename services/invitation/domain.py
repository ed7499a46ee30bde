"""Pure decisions of the invitation service.

`decide(state, command)` turns a command into events or raises a domain error;
`evolve(state, event)` folds any event (its own, or another service's) into the state.
`React(event)` is the command for what this service does about another service's event.

The state a command sees is a `Slice`: the pair aggregate (everything between two members),
one invitation, the sender's counters, whether the recipient is a known member, the rules
in force (their defaults are settings: `InvitationSettings`) and the time of the decision.

A pair (with its invitations) and a member (their counters as a sender, the invitations
pending for them) are different owners, each in its own slot group, so the service runs on
Redis Cluster. What spans both is a saga of one-owner commands (docs/scaling.md):

- sending: the sender holds a place in their weekly window (`HoldSend`, which decides the
  whole send against the pair as it reads it), then the pair decides (`SendInvitation`),
  then each member's side follows the invitation (`SettleSide`: the place becomes a send or
  is let go, the invitation joins or leaves their pending list, a report is counted);
- every other change to an invitation: the pair's command, then `SettleSide` for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import singledispatch
from typing import Literal

from pydantic import BaseModel, ConfigDict, computed_field

from shared import events as ev
from shared.domain import (
    Conflict,
    Forbidden,
    Invalid,
    LocalChange,
    NotFound,
    RateLimited,
    refused,
    unknown_member,
)
from shared.topics import pair_key

# The weekly invitation limit counts sends over this rolling window.
WEEKLY_WINDOW = timedelta(days=7)
# How long a place held in the sender's window counts if the saga stops before the pair
# decides (a crash): then it frees itself.
SEND_HOLD = timedelta(seconds=60)

Status = Literal["pending", "accepted", "declined", "withdrawn", "expired", "rejected", "cancelled"]


class PairState(BaseModel):
    model_config = ConfigDict(frozen=True)

    # True from acceptance on (optimistically, until the connection service rejects it).
    connected: bool = False
    blockers: frozenset[str] = frozenset()
    pending: str | None = None
    withdrawn_at: dict[str, datetime] = {}  # sender -> time of their last withdrawal
    # sender -> when their declined (or block-cancelled) invitation would have expired: until
    # then it looks pending to them, so inviting again answers as for a pending one.
    unanswered_until: dict[str, datetime] = {}


class Appearance(BaseModel):
    """What one party is shown instead of an invitation's real outcome."""

    model_config = ConfigDict(frozen=True)

    status: Status
    updated_at: datetime


class Invitation(BaseModel):
    model_config = ConfigDict(frozen=True)

    invitation_id: str
    sender: str
    recipient: str
    message: str | None = None
    status: Status = "pending"
    sent_at: datetime
    updated_at: datetime
    reason: str | None = None
    # Outcomes kept private from one party: a declined (or reported) invitation, or one
    # cancelled because the recipient blocked the sender, stays "pending" to its sender until
    # it expires; one cancelled because the sender blocked the recipient looks "withdrawn"
    # to the recipient. Nobody is ever shown "cancelled" because of a block.
    shown: dict[str, Appearance] = {}

    def involves(self, member: str) -> bool:
        return member in (self.sender, self.recipient)

    def seen_by(self, member: str) -> Invitation:
        """This invitation as `member` may see it."""
        shown = self.shown.get(member)
        if shown is None:
            return self
        update = {"status": shown.status, "updated_at": shown.updated_at, "reason": None}
        return self.model_copy(update=update)

    @property
    def awaits_sender_view(self) -> bool:
        """Finished, but its sender still sees it pending."""
        shown = self.shown.get(self.sender)
        return self.status != "pending" and shown is not None and shown.status == "pending"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def pair(self) -> str:
        """The pair this invitation is between (stored, so the pair can be found from it)."""
        return pair_key(self.sender, self.recipient)


class SenderState(BaseModel):
    model_config = ConfigDict(frozen=True)

    recent: tuple[float, ...] = ()  # send times (epoch seconds) inside the rolling window
    reports: int = 0
    reported: frozenset[str] = frozenset()  # the reported invitations counted in `reports`
    # Places held for sends being decided: invitation id -> until (epoch seconds).
    held: dict[str, float] = {}

    def counted(self, now: datetime, window: timedelta, besides: str) -> list[float]:
        """When each send that counts against the limit frees its place: the sends inside
        the window, and the places held (but for `besides`) until they free themselves."""
        opened = (now - window).timestamp()
        sends = [t + window.total_seconds() for t in self.recent if t > opened]
        holds = [u for i, u in self.held.items() if u > now.timestamp() and i != besides]
        return sends + holds


class PendingOf(BaseModel):
    """A member's side of their pending invitations. The invitations themselves are a set
    (one SADD or SREM per change, whatever its size: a member invited by thousands is no
    hotter than any other); with several slot groups this aggregate's version orders the
    settles of one member (see `SettleSide`). `ids`: invitations listed here before the set
    existed: still read, never added to, and taken out as they finish where this aggregate is
    loaded (several groups; with one, a finished one read from here changes nothing when
    cancelled)."""

    model_config = ConfigDict(frozen=True)

    ids: frozenset[str] = frozenset()


@dataclass(frozen=True, kw_only=True)
class Rules:
    """The configurable rules (values from `InvitationSettings`, which holds the defaults)."""

    message_max_chars: int
    weekly_limit: int
    reinvite_cooldown: timedelta
    expiry: timedelta
    report_threshold: int
    window: timedelta = WEEKLY_WINDOW


@dataclass(frozen=True)
class Slice:
    rules: Rules
    now: datetime
    pair: PairState = field(default_factory=PairState)
    invitation: Invitation | None = None
    sender: SenderState = field(default_factory=SenderState)
    pending_of: dict[str, PendingOf] = field(default_factory=dict)  # by member (`SettleSide`)
    # (member, invitation) -> on the member's pending set: read by a settle on its own (several
    # groups); with one group, where every change to an invitation settles both sides in its
    # own commit, it is what the invitation as loaded says (`lists_pending`).
    on_list: dict[tuple[str, str], bool] = field(default_factory=dict)
    actor_known: bool = True  # the acting member is a registered, active member
    recipient_known: bool = True
    blocked: bool = False  # a block either way, from the member directory

    def pending_list(self, member: str) -> PendingOf:
        return self.pending_of.get(member, PendingOf())

    def listed(self, member: str, invitation_id: str) -> bool | None:
        """On the member's pending list; None when not known (then written either way)."""
        if invitation_id in self.pending_list(member).ids:
            return True
        return self.on_list.get((member, invitation_id))


# --- commands --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendInvitation:
    invitation_id: str
    sender: str
    recipient: str
    message: str | None = None


@dataclass(frozen=True)
class Accept:
    invitation_id: str
    actor: str


@dataclass(frozen=True)
class Decline:
    invitation_id: str
    actor: str


@dataclass(frozen=True)
class Withdraw:
    invitation_id: str
    actor: str


@dataclass(frozen=True)
class Report:
    invitation_id: str
    actor: str


@dataclass(frozen=True)
class Expire:
    invitation_id: str


@dataclass(frozen=True)
class Cancel:
    invitation_id: str
    reason: Literal["blocked", "deactivated"]
    blocker: str | None = None


@dataclass(frozen=True)
class React:
    """Another service decided something about this pair: do what follows from it."""

    event: ev.Event


@dataclass(frozen=True)
class HoldSend:
    """The sender's step of a send: decided in full against the pair as read, it holds a
    place in the sender's weekly window when the send would go out (nothing when it would
    accept the recipient's invitation instead)."""

    send: SendInvitation


@dataclass(frozen=True)
class SettleSide:
    """The sides of `members` (those of the invitation in one slot group) follow it
    (state-based: any number of times, in any order): the place held in the window of
    `sender` (when they are one of `members`) becomes a send, or is let go if it was never
    sent, and a report of theirs counts once; it is on each member's pending list while it
    is pending to anyone. `touch`: commit even when nothing changed, so that a settle that
    read the invitation before its last change (and commits later) meets a version
    conflict."""

    members: tuple[str, ...]
    invitation_id: str
    sender: str | None = None
    touch: bool = True


Command = (
    SendInvitation
    | Accept
    | Decline
    | Withdraw
    | Report
    | Expire
    | Cancel
    | React
    | HoldSend
    | SettleSide
)


# --- local changes (committed, never published) ---------------------------------------------

Change = ev.Event | LocalChange


@dataclass(frozen=True)
class SendHeld(LocalChange):
    sender: str
    invitation_id: str
    until: float


@dataclass(frozen=True)
class SendConfirmed(LocalChange):
    """A send counted in the sender's window (its place, if held, let go)."""

    sender: str
    invitation_id: str
    at: float


@dataclass(frozen=True)
class SendReleased(LocalChange):
    sender: str
    invitation_id: str


@dataclass(frozen=True)
class PendingListed(LocalChange):
    member_id: str
    invitation_id: str


@dataclass(frozen=True)
class PendingUnlisted(LocalChange):
    member_id: str
    invitation_id: str


@dataclass(frozen=True)
class ReportCounted(LocalChange):
    sender: str
    invitation_id: str


@dataclass(frozen=True)
class SideTouched(LocalChange):
    """Nothing changed; committed only to move the member's versions (see `SettleSide`)."""

    member_id: str


def lists_pending(inv: Invitation) -> bool:
    """On both members' pending lists (and due for expiry): pending, or finished but still
    pending to its sender."""
    return inv.status == "pending" or inv.awaits_sender_view


def member_sides(event: ev.Event, at: datetime) -> list[LocalChange]:
    """The members' sides of an invitation's event, as a replay of the log folds them."""
    if not isinstance(event, ev.InvitationEvent):
        return []
    s, r, i = event.sender, event.recipient, event.invitation_id
    if isinstance(event, ev.InvitationSent):
        return [SendConfirmed(s, i, at.timestamp()), PendingListed(s, i), PendingListed(r, i)]
    sides: list[LocalChange] = []
    if isinstance(event, ev.InvitationDeclined) and event.reported:
        sides.append(ReportCounted(s, i))
    if not event.hidden_from_sender:
        sides += [PendingUnlisted(s, i), PendingUnlisted(r, i)]
    return sides


def decide(state: Slice, command: Command) -> list[Change]:
    rules, now = state.rules, state.now
    match command:
        case SendInvitation():
            return list(_decide_send(state, command))
        case HoldSend(send=send):
            decided = _decide_send(state, send)
            held = send.invitation_id in state.sender.held
            if held or not isinstance(decided[0], ev.InvitationSent):
                return []
            until = (now + SEND_HOLD).timestamp()
            return [SendHeld(send.sender, send.invitation_id, until)]
        case SettleSide():
            return _settle_side(state, command)
        case Accept() | Decline() | Withdraw() | Report():
            if not state.actor_known:
                raise refused()
            return list(_decide_answer(state, command))
        case Expire():
            inv = state.invitation
            if inv is None or inv.sent_at + rules.expiry > now:
                return []
            if inv.status != "pending" and not inv.awaits_sender_view:
                return []
            return [ev.InvitationExpired(**_ids(inv))]
        case Cancel(reason=reason, blocker=blocker):
            inv = state.invitation
            if inv is None or (inv.status != "pending" and not inv.awaits_sender_view):
                return []
            if reason == "blocked":
                return [ev.InvitationWithdrawn(**_ids(inv), reason=reason, blocker=blocker)]
            return [ev.InvitationWithdrawn(**_ids(inv), reason=reason)]
        case React(event=ev.MemberBlocked(blocker=blocker)) if state.pair.pending is not None:
            # A block cancels the pair's pending invitation, whichever way it went.
            return decide(state, Cancel(state.pair.pending, "blocked", blocker))
        case React():
            return []
    raise TypeError(f"unknown command {command!r}")


def _ids(inv: Invitation) -> dict[str, str]:
    return {"invitation_id": inv.invitation_id, "sender": inv.sender, "recipient": inv.recipient}


def _decide_send(state: Slice, command: SendInvitation) -> list[ev.Event]:
    rules, now = state.rules, state.now
    sender, recipient = command.sender, command.recipient
    if command.message is not None and len(command.message) > rules.message_max_chars:
        raise Invalid(
            f"message is longer than {rules.message_max_chars} characters", "message_too_long"
        )
    if sender == recipient:
        raise Invalid("you cannot invite yourself", "self_invite")
    if not state.actor_known:
        raise refused()
    pair = state.pair
    if not state.recipient_known or pair.blockers or state.blocked:
        # A block either way answers exactly as a member that does not exist.
        raise unknown_member(recipient)
    if state.sender.reports >= rules.report_threshold:
        raise Forbidden(
            "your invitations are restricted after reports from recipients", "sender_restricted"
        )
    if pair.connected:
        raise Conflict("you are already connected", "already_connected")
    pending = state.invitation
    if pair.pending is not None and pending is not None and pending.status == "pending":
        if pending.sender == recipient:
            # They invited you first: inviting back accepts their invitation.
            return [ev.InvitationAccepted(**_ids(pending))]
        raise already_pending()
    unanswered = pair.unanswered_until.get(sender)
    if unanswered is not None and unanswered > now:
        raise already_pending()  # declined, but the sender is not told
    withdrawn = pair.withdrawn_at.get(sender)
    if withdrawn is not None and withdrawn + rules.reinvite_cooldown > now:
        opens = (withdrawn + rules.reinvite_cooldown).date().isoformat()
        raise Conflict(
            f"you withdrew an invitation to this member; you can invite again on {opens}",
            "reinvite_cooldown",
        )
    frees = state.sender.counted(now, rules.window, besides=command.invitation_id)
    if len(frees) >= rules.weekly_limit:
        raise RateLimited(
            f"at most {rules.weekly_limit} invitations per {rules.window.days} days",
            int(min(frees) - now.timestamp()) + 1,
        )
    return [
        ev.InvitationSent(
            invitation_id=command.invitation_id,
            sender=sender,
            recipient=recipient,
            message=command.message,
        )
    ]


def already_pending() -> Conflict:
    return Conflict("an invitation to this member is already pending", "already_pending")


def _settle_side(state: Slice, command: SettleSide) -> list[Change]:
    i, inv = command.invitation_id, state.invitation
    out: list[Change] = []
    if (s := command.sender) is not None:
        sender = state.sender
        if i in sender.held:
            # The pair decided (the invitation exists: it was sent) or never will (it does not).
            if inv is not None and inv.sender == s:
                out.append(SendConfirmed(s, i, inv.sent_at.timestamp()))
            else:
                out.append(SendReleased(s, i))
        reported = inv is not None and inv.sender == s and inv.reason == "reported"
        if reported and i not in sender.reported:
            out.append(ReportCounted(s, i))
    for m in dict.fromkeys(command.members):
        listed = inv is not None and inv.involves(m) and lists_pending(inv)
        have = state.listed(m, i)
        if listed and have is not True:
            out.append(PendingListed(m, i))
        elif not listed and have is not False:
            out.append(PendingUnlisted(m, i))
    if not out and command.touch:
        out.append(SideTouched(command.members[0]))
    return out


def _decide_answer(state: Slice, command: Accept | Decline | Withdraw | Report) -> list[ev.Event]:
    inv = state.invitation
    if inv is None or not inv.involves(command.actor):
        # Strangers learn nothing, not even that the invitation exists.
        raise NotFound("invitation not found", "invitation_not_found")
    allowed = inv.sender if isinstance(command, Withdraw) else inv.recipient
    if command.actor != allowed:
        raise refused()
    seen = inv.seen_by(command.actor).status
    if seen != "pending":
        # What the actor sees, never the private outcome behind it.
        raise Conflict(f"the invitation is already {seen}", "invitation_finished")
    match command:
        case Accept():
            return [ev.InvitationAccepted(**_ids(inv))]
        case Decline():
            return [ev.InvitationDeclined(**_ids(inv))]
        case Withdraw():
            return [ev.InvitationWithdrawn(**_ids(inv))]
        case Report():
            return [ev.InvitationDeclined(**_ids(inv), reported=True)]
    raise TypeError(f"unknown command {command!r}")


# --- evolve ----------------------------------------------------------------------------------


def evolve(state: Slice, event: ev.Event | LocalChange) -> Slice:
    return _evolve(event, state, state.now)


def fold(state: Slice, events: list[Change]) -> Slice:
    for event in events:
        state = evolve(state, event)
    return state


@singledispatch
def _evolve(event: ev.Event | LocalChange, state: Slice, now: datetime) -> Slice:
    return state  # events this service does not keep state for


def _finish(state: Slice, status: Status, now: datetime, reason: str | None = None) -> Slice:
    inv = state.invitation
    assert inv is not None
    pair = state.pair
    if pair.pending == inv.invitation_id:
        pair = pair.model_copy(update={"pending": None})
    return replace(
        state,
        pair=pair,
        invitation=inv.model_copy(update={"status": status, "updated_at": now, "reason": reason}),
    )


@_evolve.register
def _(event: ev.InvitationSent, state: Slice, now: datetime) -> Slice:
    inv = Invitation(
        invitation_id=event.invitation_id,
        sender=event.sender,
        recipient=event.recipient,
        message=event.message,
        sent_at=now,
        updated_at=now,
    )
    # Sends that left the rolling window no longer count, so they are not kept either.
    opened = (now - state.rules.window).timestamp()
    recent = tuple(t for t in state.sender.recent if t > opened)
    sender = state.sender.model_copy(update={"recent": (*recent, now.timestamp())})
    pair = state.pair.model_copy(update={"pending": event.invitation_id})
    return replace(state, invitation=inv, sender=sender, pair=pair)


@_evolve.register
def _(event: ev.InvitationAccepted, state: Slice, now: datetime) -> Slice:
    state = _finish(state, "accepted", now)
    return replace(state, pair=state.pair.model_copy(update={"connected": True}))


def _show(state: Slice, member: str, status: Status, at: datetime) -> Slice:
    inv = state.invitation
    assert inv is not None
    shown = {**inv.shown, member: Appearance(status=status, updated_at=at)}
    return replace(state, invitation=inv.model_copy(update={"shown": shown}))


def _keep_pending_for_sender(state: Slice) -> Slice:
    """The sender goes on seeing the invitation pending, and inviting again answers as for a
    pending one, until it would have expired."""
    inv = state.invitation
    assert inv is not None
    state = _show(state, inv.sender, "pending", inv.sent_at)
    until = {**state.pair.unanswered_until, inv.sender: inv.sent_at + state.rules.expiry}
    return replace(state, pair=state.pair.model_copy(update={"unanswered_until": until}))


def _settle_for_sender(state: Slice, status: Status, now: datetime) -> Slice:
    """The sender's pending view of a privately finished invitation ends (withdrawn by them,
    expired, or cancelled by a deactivation)."""
    inv = state.invitation
    assert inv is not None
    until = {k: v for k, v in state.pair.unanswered_until.items() if k != inv.sender}
    state = replace(state, pair=state.pair.model_copy(update={"unanswered_until": until}))
    return _show(state, inv.sender, status, now)


def _withdrawn_by_sender(state: Slice, sender: str, now: datetime) -> Slice:
    withdrawn = {**state.pair.withdrawn_at, sender: now}
    return replace(state, pair=state.pair.model_copy(update={"withdrawn_at": withdrawn}))


@_evolve.register
def _(event: ev.InvitationDeclined, state: Slice, now: datetime) -> Slice:
    state = _keep_pending_for_sender(
        _finish(state, "declined", now, "reported" if event.reported else None)
    )
    if event.reported:
        state = _evolve(ReportCounted(event.sender, event.invitation_id), state, now)
    return state


@_evolve.register
def _(event: ev.InvitationWithdrawn, state: Slice, now: datetime) -> Slice:
    inv = state.invitation
    if inv is not None and inv.awaits_sender_view:
        if event.reason is None:
            return _withdrawn_by_sender(
                _settle_for_sender(state, "withdrawn", now), event.sender, now
            )
        return _settle_for_sender(state, "cancelled", now)
    if event.reason is None:
        return _withdrawn_by_sender(_finish(state, "withdrawn", now), event.sender, now)
    state = _finish(state, "cancelled", now, event.reason)
    if event.hidden_from_sender:  # the recipient blocked the sender
        return _keep_pending_for_sender(state)
    if event.reason == "blocked":  # the sender blocked the recipient: it looks withdrawn
        return _show(state, event.recipient, "withdrawn", now)
    return state


@_evolve.register
def _(event: ev.InvitationExpired, state: Slice, now: datetime) -> Slice:
    inv = state.invitation
    if inv is not None and inv.awaits_sender_view:
        return _settle_for_sender(state, "expired", now)
    return _finish(state, "expired", now)


@_evolve.register
def _(event: ev.ConnectionAccepted, state: Slice, now: datetime) -> Slice:
    return replace(state, pair=state.pair.model_copy(update={"connected": True}))


@_evolve.register
def _(event: ev.ConnectionRemoved, state: Slice, now: datetime) -> Slice:
    return replace(state, pair=state.pair.model_copy(update={"connected": False}))


@_evolve.register
def _(event: ev.ConnectionRejected, state: Slice, now: datetime) -> Slice:
    pair = state.pair.model_copy(update={"connected": False})
    inv = state.invitation
    if inv is not None and inv.invitation_id == event.invitation_id:
        inv = inv.model_copy(
            update={"status": "rejected", "reason": event.reason, "updated_at": now}
        )
    return replace(state, pair=pair, invitation=inv)


@_evolve.register
def _(event: ev.MemberBlocked, state: Slice, now: datetime) -> Slice:
    blockers = state.pair.blockers | {event.blocker}
    return replace(state, pair=state.pair.model_copy(update={"blockers": blockers}))


@_evolve.register
def _(event: ev.MemberUnblocked, state: Slice, now: datetime) -> Slice:
    blockers = state.pair.blockers - {event.blocker}
    return replace(state, pair=state.pair.model_copy(update={"blockers": blockers}))


@_evolve.register
def _(change: SendHeld, state: Slice, now: datetime) -> Slice:
    # Places long past their time (a saga that never came back) are not kept either.
    stale = now.timestamp() - state.rules.window.total_seconds()
    held = {i: u for i, u in state.sender.held.items() if u > stale}
    held[change.invitation_id] = change.until
    return replace(state, sender=state.sender.model_copy(update={"held": held}))


@_evolve.register
def _(change: SendConfirmed, state: Slice, now: datetime) -> Slice:
    sender = state.sender
    opened = (now - state.rules.window).timestamp()
    recent = tuple(t for t in sender.recent if t > opened)
    if change.at not in recent:
        recent = (*recent, change.at)
    held = {i: u for i, u in sender.held.items() if i != change.invitation_id}
    return replace(state, sender=sender.model_copy(update={"recent": recent, "held": held}))


@_evolve.register
def _(change: SendReleased, state: Slice, now: datetime) -> Slice:
    held = {i: u for i, u in state.sender.held.items() if i != change.invitation_id}
    return replace(state, sender=state.sender.model_copy(update={"held": held}))


@_evolve.register
def _(change: ReportCounted, state: Slice, now: datetime) -> Slice:
    sender = state.sender
    if change.invitation_id in sender.reported:
        return state
    update = {"reports": sender.reports + 1, "reported": sender.reported | {change.invitation_id}}
    return replace(state, sender=sender.model_copy(update=update))


@_evolve.register
def _(change: PendingListed, state: Slice, now: datetime) -> Slice:
    # The set takes the id (the store's SADD); the member's side is kept, to be written.
    m, i = change.member_id, change.invitation_id
    pending_of = {**state.pending_of, m: state.pending_list(m)}
    return replace(state, pending_of=pending_of, on_list={**state.on_list, (m, i): True})


@_evolve.register
def _(change: PendingUnlisted, state: Slice, now: datetime) -> Slice:
    m, i = change.member_id, change.invitation_id
    side = PendingOf(ids=state.pending_list(m).ids - {i})
    pending_of = {**state.pending_of, m: side}
    return replace(state, pending_of=pending_of, on_list={**state.on_list, (m, i): False})


@_evolve.register
def _(change: SideTouched, state: Slice, now: datetime) -> Slice:
    return state
