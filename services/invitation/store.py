"""Invitation state on the kit's command loop: which aggregates a command touches, and the
pending-invitation indexes its events keep."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from pydantic import BaseModel

from services.invitation import domain
from services.invitation.domain import Invitation, PairState, Rules, SenderState, Slice
from shared import events as ev
from shared.commands import (
    CommandLoop,
    IndexOp,
    IndexOpName,
    Plan,
    PlanChanged,
    Rows,
    StateStore,
)
from shared.settings import InvitationSettings
from shared.topics import pair_key


class InvitationStore(CommandLoop[Slice, domain.Command]):
    producer = "invitation"

    def __init__(self, store: StateStore, settings: InvitationSettings, rules: Rules) -> None:
        super().__init__(store, self)
        self.rules = rules
        self.key = lambda *parts: settings.key("invitation", *parts)
        self.members_key, self.pending_key = self.key("members"), self.key("pending")

    async def invitation(self, invitation_id: str) -> Invitation | None:
        [row], _ = await self.store.load([self.key("inv", invitation_id)])
        return Invitation.model_validate(row.state) if row.state else None

    async def pending_of(self, member: str) -> list[str]:
        return sorted(await self.store.set_members(self.key("pending-of", member)))

    async def due_for_expiry(self, now: datetime, limit: int = 200) -> list[str]:
        return await self.store.lowest(
            self.pending_key, (now - self.rules.expiry).timestamp(), limit
        )

    # the loop's WriteModel -----------------------------------------------------------------
    async def plan(self, command: domain.Command | None, observed: ev.Event | None) -> Plan:
        """The pair, invitations and sender a command touches, the one it is about first. A
        new invitation and a reaction need the pair's pending invitation: one peek first."""
        match command:
            case domain.SendInvitation(invitation_id=i, sender=s, recipient=r):
                pair = pair_key(s, r)
                pending = self._inv(await self._pending(pair))
                sender = {"sender": (self.key("sender", s), SenderState)}
                checks = {"recipient_known": (self.members_key, r)}
                return Plan({**self._pair(pair), **pending, **self._inv(i), **sender}, checks)
            case domain.React(event=event):  # events keyed by the pair they are about
                about = self._inv(getattr(event, "invitation_id", None))
                pending = self._inv(await self._pending(event.partition_key))
                return Plan({**self._pair(event.partition_key), **about, **pending})
            case (domain.Accept() | domain.Decline() | domain.Withdraw() | domain.Report()
                  | domain.Expire() | domain.Cancel()):  # fmt: skip
                inv = await self.invitation(command.invitation_id)
                if inv is None:
                    return Plan(self._inv(command.invitation_id))
                sender = {"sender": (self.key("sender", inv.sender), SenderState)}
                between = self._pair(pair_key(inv.sender, inv.recipient))
                return Plan({**between, **self._inv(inv.invitation_id), **sender})
        raise TypeError(f"unknown command {command!r}")

    def slice(self, command: domain.Command | None, rows: Rows, now: datetime) -> Slice:
        pair = rows.get("pair") or PairState()
        peeked = isinstance(command, domain.SendInvitation | domain.React)
        if peeked and pair.pending and f"inv:{pair.pending}" not in rows.aggregates:
            raise PlanChanged  # the pair's pending invitation moved since the peek
        invitations = (
            v for k, v in rows.aggregates.items() if isinstance(v, Invitation) and k[:4] == "inv:"
        )
        return Slice(
            rules=self.rules,
            now=now,
            pair=pair,
            invitation=next(invitations, None),
            sender=rows.get("sender") or SenderState(),
            recipient_known=rows.checks.get("recipient_known", True),
        )

    def aggregates(self, state: Slice) -> Mapping[str, BaseModel | None]:
        inv = state.invitation
        return {"pair": state.pair, "sender": state.sender} | (
            {f"inv:{inv.invitation_id}": inv} if inv else {}
        )

    decide = staticmethod(domain.decide)
    evolve = staticmethod(domain.evolve)

    def index_ops(self, events: Sequence[ev.Event], now: datetime) -> list[IndexOp]:
        ops: list[IndexOp] = []
        for e in events:
            if isinstance(e, ev.InvitationEvent):
                # Sent joins the pending indexes; every other invitation event leaves them.
                sent = isinstance(e, ev.InvitationSent)
                zop: IndexOpName = "ZADD" if sent else "ZREM"
                sop: IndexOpName = "SADD" if sent else "SREM"
                ops.append(IndexOp(zop, self.pending_key, e.invitation_id, now.timestamp()))
                for member in (e.sender, e.recipient):
                    ops.append(IndexOp(sop, self.key("pending-of", member), e.invitation_id))
        return ops

    async def _pending(self, pair: str) -> str | None:
        [row], _ = await self.store.load([self.key("pair", pair)])
        return PairState.model_validate(row.state or {}).pending

    def _pair(self, pair: str) -> dict[str, tuple[str, type[BaseModel]]]:
        return {"pair": (self.key("pair", pair), PairState)}

    def _inv(self, invitation_id: str | None) -> dict[str, tuple[str, type[BaseModel]]]:
        return (
            {f"inv:{invitation_id}": (self.key("inv", invitation_id), Invitation)}
            if invitation_id
            else {}
        )
