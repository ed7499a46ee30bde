"""Redis state of the invitation service: load a slice, decide, fold, commit with the outbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from redis.asyncio import Redis

from services.invitation import domain
from services.invitation.domain import Invitation, PairState, Rules, SenderState, Slice
from shared import events as ev
from shared.events import Envelope
from shared.outbox import AggregateWrite, CommitResult, IndexOp, Outbox, retry_on_conflict
from shared.settings import InvitationSettings
from shared.topics import pair_key

PRODUCER = "invitation"


def rules_from(settings: InvitationSettings) -> Rules:
    return Rules(
        message_max_chars=settings.message_max_chars,
        weekly_limit=settings.weekly_limit,
        reinvite_cooldown=timedelta(days=settings.reinvite_cooldown_days),
        expiry=timedelta(days=settings.expiry_days),
        report_threshold=settings.report_threshold,
    )


@dataclass(frozen=True)
class Outcome:
    envelopes: list[Envelope]
    invitation: Invitation | None


class InvitationStore:
    def __init__(self, redis: Redis, outbox: Outbox, settings: InvitationSettings) -> None:
        self.redis = redis
        self.outbox = outbox
        self.settings = settings
        self.rules = rules_from(settings)

    def _key(self, *parts: str) -> str:
        return self.settings.key("invitation", *parts)

    def pair_key(self, a: str, b: str) -> str:
        return self._key("pair", pair_key(a, b))

    def invitation_key(self, invitation_id: str) -> str:
        return self._key("inv", invitation_id)

    def sender_key(self, member: str) -> str:
        return self._key("sender", member)

    @property
    def members_key(self) -> str:
        return self._key("members")

    @property
    def pending_key(self) -> str:
        return self._key("pending")

    def pending_of_key(self, member: str) -> str:
        return self._key("pending-of", member)

    # reads -----------------------------------------------------------------------------------
    async def invitation(self, invitation_id: str) -> Invitation | None:
        [row] = await self.outbox.load(self.invitation_key(invitation_id))
        return Invitation.model_validate(row.state) if row.state else None

    async def pending_of(self, member: str) -> list[str]:
        return sorted(str(i) for i in await self.redis.smembers(self.pending_of_key(member)))

    async def due_for_expiry(self, now: datetime, limit: int = 200) -> list[str]:
        cutoff = (now - self.rules.expiry).timestamp()
        ids = await self.redis.zrangebyscore(self.pending_key, "-inf", cutoff, start=0, num=limit)
        return [str(i) for i in ids]

    # writes ----------------------------------------------------------------------------------
    async def execute(
        self,
        command: domain.Command | None = None,
        *,
        observed: ev.Event | None = None,
        causation: Envelope | None = None,
        dedupe_key: str | None = None,
        now: datetime | None = None,
    ) -> Outcome:
        """Decide `command` (or react to another service's `observed` event) and commit."""

        async def attempt() -> tuple[CommitResult, Outcome]:
            at = now or datetime.now(UTC)
            pair_of, invitation_id, sender_id, recipient = await self._locate(command, observed)
            keys = [self.pair_key(*pair_of)] if pair_of else []
            if invitation_id:
                keys.append(self.invitation_key(invitation_id))
            if sender_id:
                keys.append(self.sender_key(sender_id))
            rows = await self.outbox.load(*keys)
            it = iter(rows)
            pair_row = next(it) if pair_of else None
            inv_row = next(it) if invitation_id else None
            sender_row = next(it) if sender_id else None
            state = Slice(
                pair=PairState.model_validate(pair_row.state or {}) if pair_row else PairState(),
                invitation=Invitation.model_validate(inv_row.state)
                if inv_row and inv_row.state
                else None,
                sender=SenderState.model_validate(sender_row.state or {})
                if sender_row
                else SenderState(),
                recipient_known=bool(await self.redis.sismember(self.members_key, recipient))
                if isinstance(command, domain.SendInvitation)
                else True,
            )
            if isinstance(command, domain.SendInvitation) and state.pair.pending != invitation_id:
                return "conflict", Outcome([], None)  # the pair changed since we located it
            events: list[ev.Event] = []
            if observed is not None:
                state = domain.evolve(state, observed, at)
                for reaction in domain.react(state, observed):
                    events += domain.decide(state, reaction, self.rules, at)
            if command is not None:
                events += domain.decide(state, command, self.rules, at)
            after = domain.fold(state, events, at)
            if after == state and not events and dedupe_key is None:
                return "ok", Outcome([], state.invitation)
            writes = []
            if pair_row is not None:
                writes.append(
                    AggregateWrite(keys[0], pair_row.version, after.pair.model_dump(mode="json"))
                )
            if after.invitation is not None and (inv_row is not None or events):
                same = state.invitation is not None and (
                    state.invitation.invitation_id == after.invitation.invitation_id
                )
                writes.append(
                    AggregateWrite(
                        self.invitation_key(after.invitation.invitation_id),
                        inv_row.version if inv_row is not None and same else 0,
                        after.invitation.model_dump(mode="json"),
                    )
                )
            if sender_row is not None and sender_id:
                sender = after.sender.model_copy(
                    update={
                        "recent": tuple(
                            t for t in after.sender.recent if t + self.rules.window > at
                        )
                    }
                )
                writes.append(
                    AggregateWrite(
                        self.sender_key(sender_id),
                        sender_row.version,
                        sender.model_dump(mode="json"),
                    )
                )
            envelopes = Envelope.wrap_all(
                events, producer=PRODUCER, occurred_at=at, causation=causation
            )
            result = await self.outbox.commit(
                writes,
                envelopes,
                topics=self.settings.topics,
                index_ops=self._index_ops(events, at),
                dedupe_key=dedupe_key,
            )
            return result, Outcome(envelopes, after.invitation)

        _, outcome = await retry_on_conflict(attempt)
        return outcome

    async def _locate(
        self, command: domain.Command | None, observed: ev.Event | None
    ) -> tuple[tuple[str, str] | None, str | None, str | None, str]:
        """Which pair, invitation and sender a command or observed event is about."""
        if isinstance(command, domain.SendInvitation):
            [row] = await self.outbox.load(self.pair_key(command.sender, command.recipient))
            pending = PairState.model_validate(row.state or {}).pending
            return (command.sender, command.recipient), pending, command.sender, command.recipient
        if command is not None:
            inv = await self.invitation(command.invitation_id)
            if inv is None:
                return None, command.invitation_id, None, ""
            return (inv.sender, inv.recipient), inv.invitation_id, inv.sender, inv.recipient
        match observed:
            case ev.ConnectionRejected(sender=s, recipient=r, invitation_id=i):
                return (s, r), i, None, r
            case (
                ev.ConnectionAccepted(member_a=a, member_b=b)
                | ev.ConnectionRemoved(member_a=a, member_b=b)
            ):
                return (a, b), None, None, b
            case ev.MemberBlocked(blocker=a, blocked=b) | ev.MemberUnblocked(blocker=a, blocked=b):
                [row] = await self.outbox.load(self.pair_key(a, b))
                return (a, b), PairState.model_validate(row.state or {}).pending, None, b
        return None, None, None, ""

    def _index_ops(self, events: list[ev.Event], at: datetime) -> list[IndexOp]:
        ops: list[IndexOp] = []
        for e in events:
            if not isinstance(e, ev.InvitationEvent):
                continue
            if isinstance(e, ev.InvitationSent):
                ops.append(IndexOp("ZADD", self.pending_key, e.invitation_id, at.timestamp()))
                ops.append(IndexOp("SADD", self.pending_of_key(e.sender), e.invitation_id))
                ops.append(IndexOp("SADD", self.pending_of_key(e.recipient), e.invitation_id))
            else:
                ops.append(IndexOp("ZREM", self.pending_key, e.invitation_id))
                ops.append(IndexOp("SREM", self.pending_of_key(e.sender), e.invitation_id))
                ops.append(IndexOp("SREM", self.pending_of_key(e.recipient), e.invitation_id))
        return ops

    async def membership(self, event: ev.Event, dedupe_key: str) -> None:
        """Fold rapport.members into the set of members one can invite."""
        op: Literal["SADD", "SREM"] = "SADD" if isinstance(event, ev.MemberRegistered) else "SREM"
        member = event.member_id  # type: ignore[attr-defined]
        await self.outbox.commit(
            [],
            [],
            topics=self.settings.topics,
            index_ops=[IndexOp(op, self.members_key, member)],
            dedupe_key=dedupe_key,
        )
