"""Invitation state on the kit's command loop: which aggregates a command touches (the pair,
the invitations, the sender's counters, the member directory), and the pending-invitation
indexes its events keep."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from pydantic import BaseModel

from services.invitation import domain
from services.invitation.domain import Invitation, PairState, Rules, SenderState, Slice
from shared import events as ev
from shared.commands import (
    Change,
    CommandLoop,
    Follow,
    IndexOp,
    IndexOpName,
    Plan,
    Rows,
    StateStore,
)
from shared.directory import Directory
from shared.groups import KeyLayout
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


class InvitationStore(CommandLoop[Slice, domain.Command]):
    producer = "invitation"
    # One commit spans a pair, both members and the directory: one Redis node (issue #17).
    layout = KeyLayout.ONE_NODE

    def __init__(self, store: StateStore, settings: InvitationSettings, rules: Rules) -> None:
        super().__init__(store, self)
        self.rules = rules
        self.key = lambda *parts: settings.key("invitation", *parts)
        self.pending_key = self.key("pending")
        self.directory = Directory.of(settings)

    async def invitation(self, invitation_id: str) -> Invitation | None:
        [row] = (await self.store.load([self.key("inv", invitation_id)])).rows
        return Invitation.model_validate(row.state) if row.state else None

    async def pending_of(self, member: str) -> list[str]:
        return sorted(await self.store.set_members(self.key("pending-of", member)))

    async def due_for_expiry(self, now: datetime, limit: int = 200) -> list[str]:
        return await self.store.lowest(
            self.pending_key, (now - self.rules.expiry).timestamp(), limit
        )

    # the loop's WriteModel -----------------------------------------------------------------
    async def plan(self, command: domain.Command | None, observed: ev.Event | None) -> Plan:
        """The pair, invitations and sender a command touches, the one it is about first,
        and the pair's pending invitation (followed from the pair, in the same snapshot)."""
        pending = Follow("pair", "pending", "inv:{id}", self.key("inv", ""), Invitation)
        match command:
            case domain.SendInvitation(invitation_id=i, sender=s, recipient=r):
                sender = {"sender": (self.key("sender", s), SenderState)}
                d = self.directory
                checks = {
                    "actor_known": d.is_active(s),
                    "recipient_known": d.is_active(r),
                    "blocks": d.blocks_from(s, r),
                    "blocked_by": d.blocks_from(r, s),
                }
                return Plan(
                    {**self._pair(pair_key(s, r)), **self._inv(i), **sender}, checks, [pending]
                )
            case domain.React(event=event):  # events keyed by the pair they are about
                about = self._inv(getattr(event, "invitation_id", None))
                return Plan({**self._pair(event.partition_key), **about}, follows=[pending])
            case (domain.Accept() | domain.Decline() | domain.Withdraw() | domain.Report()
                  | domain.Expire() | domain.Cancel()):  # fmt: skip
                name = f"inv:{command.invitation_id}"
                through = [
                    Follow(name, "pair", "pair", self.key("pair", ""), PairState),
                    Follow(name, "sender", "sender", self.key("sender", ""), SenderState),
                ]
                actor = getattr(command, "actor", None)
                checks = {"actor_known": self.directory.is_active(actor)} if actor else {}
                return Plan(self._inv(command.invitation_id), checks, follows=through)
        raise TypeError(f"unknown command {command!r}")

    def plan_event(self, event: Change) -> Plan:
        """An invitation event changes its pair, itself and its sender's counters; another
        service's pair event (a connection, a block) changes the pair and, if it names one,
        the invitation."""
        about = self._inv(getattr(event, "invitation_id", None))
        if isinstance(event, ev.InvitationEvent):
            sender = {"sender": (self.key("sender", event.sender), SenderState)}
            return Plan({**self._pair(event.partition_key), **about, **sender})
        if isinstance(event, FOLDED_FROM_OTHERS):
            return Plan({**self._pair(event.partition_key), **about})
        return Plan()

    def slice(self, command: domain.Command | None, rows: Rows, now: datetime) -> Slice:
        invitations = (v for v in rows.aggregates.values() if isinstance(v, Invitation))
        return Slice(
            rules=self.rules,
            now=now,
            pair=rows.get("pair") or PairState(),
            invitation=next(invitations, None),
            sender=rows.get("sender") or SenderState(),
            actor_known=rows.checks.get("actor_known", True),
            recipient_known=rows.checks.get("recipient_known", True),
            blocked=rows.checks.get("blocks", False) or rows.checks.get("blocked_by", False),
        )

    def aggregates(self, state: Slice) -> Mapping[str, BaseModel | None]:
        inv = state.invitation
        return {"pair": state.pair, "sender": state.sender} | (
            {f"inv:{inv.invitation_id}": inv} if inv else {}
        )

    decide = staticmethod(domain.decide)
    evolve = staticmethod(domain.evolve)

    def index_ops(self, events: Sequence[Change], now: datetime) -> list[IndexOp]:
        ops: list[IndexOp] = []
        for e in events:
            if isinstance(e, ev.InvitationEvent) and not e.hidden_from_sender:
                # Sent joins the pending indexes; every other invitation event leaves them,
                # except one its sender still sees pending (it stays due for expiry).
                sent = isinstance(e, ev.InvitationSent)
                zop: IndexOpName = "ZADD" if sent else "ZREM"
                sop: IndexOpName = "SADD" if sent else "SREM"
                ops.append(IndexOp(zop, self.pending_key, e.invitation_id, now.timestamp()))
                for member in (e.sender, e.recipient):
                    ops.append(IndexOp(sop, self.key("pending-of", member), e.invitation_id))
        return ops

    def _pair(self, pair: str) -> dict[str, tuple[str, type[BaseModel]]]:
        return {"pair": (self.key("pair", pair), PairState)}

    def _inv(self, invitation_id: str | None) -> dict[str, tuple[str, type[BaseModel]]]:
        if not invitation_id:
            return {}
        return {f"inv:{invitation_id}": (self.key("inv", invitation_id), Invitation)}
