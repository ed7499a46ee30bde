"""Invitation state on the kit's command loop, laid out in slot groups so that the service
runs on Redis Cluster: a pair's aggregate, its invitations and the expiry queue in the pair's
group; a member's counters as a sender and their pending list in the member's group. An
invitation id starts with its pair's group (`g0417-...`), so a command about it finds the
pair in one round trip. The sagas that span a pair and its members run here (`run`), in the
order `services.invitation.domain` describes."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from services.invitation import domain
from services.invitation.domain import (
    Invitation,
    PairState,
    PendingOf,
    Rules,
    SenderState,
    Slice,
)
from shared import events as ev
from shared.commands import (
    Change,
    CommandLoop,
    Follow,
    IndexOp,
    IndexOpName,
    Outcome,
    Plan,
    Rows,
    StateStore,
    Steps,
)
from shared.directory import Directory
from shared.events import Envelope
from shared.groups import KeyLayout, tag
from shared.settings import InvitationSettings
from shared.topics import pair_key

# Other services' events this service keeps state for (its decisions subscription).
FOLDED_FROM_OTHERS = (
    ev.ConnectionAccepted,
    ev.ConnectionRemoved,
    ev.ConnectionRejected,
    ev.MemberBlocked,
    ev.MemberUnblocked,
)

Aggregates = dict[str, tuple[str, type[BaseModel]]]
_GROUP_PREFIX = re.compile(r"g(\d{4})")


class InvitationStore(CommandLoop[Slice, domain.Command]):
    producer = "invitation"
    layout = KeyLayout.SLOT_GROUPS

    def __init__(self, store: StateStore, settings: InvitationSettings, rules: Rules) -> None:
        super().__init__(store, self)
        self.rules = rules
        self.groups = settings.groups
        self.key = lambda group, kind, ident: settings.key("invitation", tag(group), kind, ident)
        self.pending_key = lambda group: settings.key("invitation", tag(group), "pending")
        self.directory = Directory.of(settings)
        self.at_once = self.groups.single  # a saga's steps in one commit

    def new_id(self, sender: str, recipient: str) -> str:
        return f"{self.groups.of(pair_key(sender, recipient))}-{uuid.uuid4().hex}"

    def group_of_id(self, invitation_id: str) -> str | None:
        """The pair's group an invitation id names. An id issued before the groups (no
        prefix) is found with one group only."""
        head, _, _ = invitation_id.partition("-")
        found = _GROUP_PREFIX.fullmatch(head)
        if found and int(found.group(1)) < self.groups.count:
            return head
        return self.groups.of("") if self.groups.count == 1 else None

    async def invitation(self, invitation_id: str) -> Invitation | None:
        about = self._inv(invitation_id)
        if not about:
            return None
        [(key, _)] = about.values()
        [row] = (await self.store.load([key])).rows
        return Invitation.model_validate(row.state) if row.state else None

    async def pending_of(self, member: str) -> list[str]:
        """The member's pending invitations: their set, and any listed before it existed."""
        group = self.groups.of(member)
        # Both at once: the list kept before the set (read, never added to), and the set.
        loaded, listed = await asyncio.gather(
            self.store.load([self.key(group, "pending-of", member)]),
            self.store.set_members(self._pending_set(member)),
        )
        [row] = loaded.rows
        before = PendingOf.model_validate(row.state).ids if row.state else frozenset()
        return sorted(set(listed) | before)

    async def due_for_expiry(self, now: datetime, limit: int = 200) -> list[str]:
        """Pending invitations past their age, from every group's expiry queue."""
        until = (now - self.rules.expiry).timestamp()
        due = await asyncio.gather(
            *(self.store.lowest(self.pending_key(g), until, limit) for g in self.groups.all())
        )
        return [i for ids in due for i in ids]

    # the sagas across a pair and its members ------------------------------------------------
    async def run(
        self,
        command: domain.Command | None = None,
        *,
        observed: ev.Event | None = None,
        causation: Envelope | None = None,
        correlation_id: str | None = None,
        dedupe_key: str | None = None,
        now: datetime | None = None,
        then: Steps[Slice, domain.Command] | None = None,
    ) -> Outcome[Slice]:
        """A command about an invitation, then both members' sides: in the same commit with
        one slot group (one node), else as a saga (a send first holds a place in the sender's
        window)."""
        options: dict[str, Any] = {
            "observed": observed,
            "causation": causation,
            "correlation_id": correlation_id,
            "dedupe_key": dedupe_key,
            "now": now,
        }
        if self.at_once:
            return await super().run(command, then=then or self._sides(command), **options)
        if then is not None or isinstance(command, domain.HoldSend | domain.SettleSide):
            return await super().run(command, then=then, **options)
        if isinstance(command, domain.SendInvitation):
            return await self._send(command, **options)
        outcome = await super().run(command, **options)
        await self._settle(outcome)
        return outcome

    def _sides(self, command: domain.Command | None) -> Steps[Slice, domain.Command] | None:
        """With one group, both members' sides as steps of `command`'s commit, for the
        invitation it leaves: what they need is loaded with the command's slice (found
        through the invitation when the command names only its id). A send settles its
        sender's counters, an answer those of the invitation's sender (found through it); a
        reaction to another service's event settles only the pending lists."""
        sender_of: Callable[[Invitation], str | None]
        group = self.groups.of("")
        match command:
            case domain.SendInvitation(sender=s):
                widen = Plan(self._sender(s), group=group)

                def sender_of(inv: Invitation) -> str | None:
                    return s if inv.sender == s else None  # else it accepted theirs

            case domain.React():
                widen = Plan(group=group)

                def sender_of(inv: Invitation) -> str | None:
                    return None

            case (domain.Accept() | domain.Decline() | domain.Withdraw() | domain.Report()
                  | domain.Expire() | domain.Cancel()):  # fmt: skip
                inv = f"inv:{command.invitation_id}"
                counters = Follow(
                    inv, "sender", "sender", self.key(group, "sender", ""), SenderState
                )
                widen = Plan(follows=[counters], group=group)

                def sender_of(inv: Invitation) -> str | None:
                    return inv.sender

            case _:
                return None

        def after(state: Slice) -> list[domain.Command]:
            inv = state.invitation
            if inv is None:
                return []  # no invitation: no sides
            members = (inv.sender, inv.recipient)
            return [domain.SettleSide(members, inv.invitation_id, sender_of(inv), False)]

        return Steps(widen, after)

    async def _send(self, command: domain.SendInvitation, **options: Any) -> Outcome[Slice]:
        held = await super().run(domain.HoldSend(command))  # refuses as the send would
        assert held.state is not None
        placed = command.invitation_id in held.state.sender.held
        try:
            outcome = await super().run(command, **options)
        except BaseException:
            if placed:  # refused meanwhile: the place is let go
                await super().run(self._sender_side(command))
            raise
        inv = outcome.state.invitation if outcome.state else None
        if placed and (inv is None or inv.invitation_id != command.invitation_id):
            # The recipient's invitation was accepted instead: the place is let go.
            await super().run(self._sender_side(command))
        await self._settle(outcome)  # sent: the place becomes the send, both lists follow
        return outcome

    async def _settle(self, outcome: Outcome[Slice], touch: bool = True) -> None:
        inv = outcome.state.invitation if outcome.state else None
        if outcome.envelopes and inv is not None:
            await self.settle(inv.sender, inv.recipient, inv.invitation_id, touch=touch)

    async def settle(
        self, sender: str, recipient: str, invitation_id: str, *, touch: bool = True
    ) -> None:
        """Both members' sides follow the invitation (one commit per group, at once)."""
        await asyncio.gather(
            *(
                super(InvitationStore, self).run(
                    domain.SettleSide(ms, invitation_id, sender if sender in ms else None, touch)
                )
                for ms in self.groups.split((sender, recipient))
            )
        )

    @staticmethod
    def _sender_side(command: domain.SendInvitation) -> domain.SettleSide:
        return domain.SettleSide((command.sender,), command.invitation_id, command.sender)

    async def fold(self, event: Change, at: datetime) -> None:
        """A replay folds the pair's event, then each member's side of it, each in its group."""
        await super().fold(event, at)
        if isinstance(event, ev.Event):
            for side in domain.member_sides(event, at):
                await super().fold(side, at)

    # the loop's WriteModel -----------------------------------------------------------------
    async def plan(self, command: domain.Command | None, observed: ev.Event | None) -> Plan:
        """The pair, invitations and sender a command touches, the one it is about first,
        and the pair's pending invitation (followed from the pair, in the same snapshot)."""
        match command:
            case domain.HoldSend(send=domain.SendInvitation(sender=s, recipient=r)):
                return Plan(
                    self._sender(s),
                    self._send_checks(s, r),
                    [self._pending(self._pair_group(s, r))],
                    group=self.groups.of(s),
                    reads=self._pair(s, r),
                )
            case domain.SendInvitation(invitation_id=i, sender=s, recipient=r):
                return Plan(
                    {**self._pair(s, r), **self._inv(i)},
                    self._send_checks(s, r),
                    [self._pending(self._pair_group(s, r))],
                    group=self._pair_group(s, r),
                    reads=self._sender(s),
                )
            case domain.SettleSide(members=ms, invitation_id=i, sender=s):
                counters = self._sender(s) if s else {}
                if self.at_once:  # a step of the invitation's commit: its version orders it
                    return Plan(counters, group=self.groups.of(ms[0]), reads=self._inv(i))
                # On its own: each member's side orders the settles, which read the sets.
                sides = {k: v for m in ms for k, v in self._pending_of(m).items()}
                listed = {f"on_list:{m}": (self._pending_set(m), i) for m in ms}
                return Plan(
                    {**counters, **sides}, listed, group=self.groups.of(ms[0]), reads=self._inv(i)
                )
            case domain.React(event=event):  # events keyed by the pair they are about
                group = self.groups.of(event.partition_key)
                about = self._inv(getattr(event, "invitation_id", None), within=group)
                return Plan(
                    {**self._pair_key(event.partition_key), **about},
                    follows=[self._pending(group)],
                    group=group,
                )
            case (domain.Accept() | domain.Decline() | domain.Withdraw() | domain.Report()
                  | domain.Expire() | domain.Cancel()):  # fmt: skip
                home = self.group_of_id(command.invitation_id)  # None: it cannot be found
                name = f"inv:{command.invitation_id}"
                through = [
                    Follow(name, "pair", "pair", self.key(home or "", "pair", ""), PairState)
                ]
                actor = getattr(command, "actor", None)
                checks = {"actor_known": self.directory.is_active(actor)} if actor else {}
                return Plan(self._inv(command.invitation_id), checks, through, group=home)
        raise TypeError(f"unknown command {command!r}")

    def plan_event(self, event: Change) -> Plan:
        """The owner a change belongs to: an invitation event (and another service's pair
        event) to the pair, with the invitation it names; a member's side to the member."""
        match event:
            case ev.InvitationEvent() | (
                ev.ConnectionAccepted()
                | ev.ConnectionRemoved()
                | ev.ConnectionRejected()
                | ev.MemberBlocked()
                | ev.MemberUnblocked()
            ):
                group = self.groups.of(event.partition_key)
                about = self._inv(getattr(event, "invitation_id", None), within=group)
                return Plan({**self._pair_key(event.partition_key), **about}, group=group)
            case domain.SendConfirmed(sender=s) | domain.ReportCounted(sender=s):
                return Plan(self._sender(s), group=self.groups.of(s))
            case domain.PendingListed(member_id=m) | domain.PendingUnlisted(member_id=m):
                # The set's op (index_ops); with several groups, the member's side too.
                sides = {} if self.at_once else self._pending_of(m)
                return Plan(sides, group=self.groups.of(m))
        return Plan()

    def slice(self, command: domain.Command | None, rows: Rows, now: datetime) -> Slice:
        invitations = (v for v in rows.aggregates.values() if isinstance(v, Invitation))
        invitation = next(invitations, None)
        on_list: dict[tuple[str, str], bool] = {}
        if isinstance(command, domain.SettleSide) and not self.at_once:
            i = command.invitation_id
            on_list = {
                (name.removeprefix("on_list:"), i): found
                for name, found in rows.checks.items()
                if name.startswith("on_list:")
            }
        elif self.at_once and invitation is not None:
            # Each change to an invitation settled both sets in its commit: they hold it
            # exactly while it lists as pending.
            listed = domain.lists_pending(invitation)
            i = invitation.invitation_id
            on_list = {(m, i): listed for m in (invitation.sender, invitation.recipient)}
        return Slice(
            rules=self.rules,
            now=now,
            pair=rows.get("pair") or PairState(),
            invitation=invitation,
            sender=rows.get("sender") or SenderState(),
            pending_of={
                name.removeprefix("pending_of:"): value
                for name, value in rows.aggregates.items()
                if name.startswith("pending_of:") and isinstance(value, PendingOf)
            },
            on_list=on_list,
            actor_known=rows.checks.get("actor_known", True),
            recipient_known=rows.checks.get("recipient_known", True),
            blocked=rows.checks.get("blocks", False) or rows.checks.get("blocked_by", False),
        )

    def aggregates(self, state: Slice) -> Mapping[str, BaseModel | None]:
        inv = state.invitation
        pending = {f"pending_of:{m}": p for m, p in state.pending_of.items()}
        return {"pair": state.pair, "sender": state.sender, **pending} | (
            {f"inv:{inv.invitation_id}": inv} if inv else {}
        )

    decide = staticmethod(domain.decide)
    evolve = staticmethod(domain.evolve)

    def index_ops(self, events: Sequence[Change], now: datetime) -> list[IndexOp]:
        """The pair group's expiry queue: a sent invitation joins it; every other invitation
        event takes it out, except one its sender still sees pending (it stays due). And
        each member's pending set, as their side follows an invitation."""
        ops: list[IndexOp] = []
        for e in events:
            if isinstance(e, ev.InvitationEvent) and not e.hidden_from_sender:
                op: IndexOpName = "ZADD" if isinstance(e, ev.InvitationSent) else "ZREM"
                queue = self.pending_key(self.groups.of(e.partition_key))
                ops.append(IndexOp(op, queue, e.invitation_id, now.timestamp()))
            elif isinstance(e, domain.PendingListed | domain.PendingUnlisted):
                side: IndexOpName = "SADD" if isinstance(e, domain.PendingListed) else "SREM"
                ops.append(IndexOp(side, self._pending_set(e.member_id), e.invitation_id))
        return ops

    def _send_checks(self, s: str, r: str) -> dict[str, tuple[str, str]]:
        d = self.directory
        return {
            "actor_known": d.is_active(s),
            "recipient_known": d.is_active(r),
            "blocks": d.blocks_from(s, r),
            "blocked_by": d.blocks_from(r, s),
        }

    def _pair_group(self, a: str, b: str) -> str:
        return self.groups.of(pair_key(a, b))

    def _pair(self, a: str, b: str) -> Aggregates:
        return self._pair_key(pair_key(a, b))

    def _pair_key(self, pair: str) -> Aggregates:
        return {"pair": (self.key(self.groups.of(pair), "pair", pair), PairState)}

    def _pending(self, group: str) -> Follow:
        """The pair's pending invitation, found through the pair (in the pair's group)."""
        return Follow("pair", "pending", "inv:{id}", self.key(group, "inv", ""), Invitation)

    def _sender(self, member: str) -> Aggregates:
        return {"sender": (self.key(self.groups.of(member), "sender", member), SenderState)}

    def _pending_set(self, member: str) -> str:
        return self.key(self.groups.of(member), "pending-set", member)

    def _pending_of(self, member: str) -> Aggregates:
        key = self.key(self.groups.of(member), "pending-of", member)
        return {f"pending_of:{member}": (key, PendingOf)}

    def _inv(self, invitation_id: str | None, within: str | None = None) -> Aggregates:
        """The invitation's aggregate (nothing for no id, an id this layout cannot place,
        or one outside the group `within`)."""
        group = self.group_of_id(invitation_id) if invitation_id else None
        if group is None or (within is not None and group != within):
            return {}
        key = self.key(group, "inv", invitation_id)
        return {f"inv:{invitation_id}": (key, Invitation)}
