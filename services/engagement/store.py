"""Redis state of the engagement service: known members, blocks, and the abuse counters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from redis.asyncio import Redis

from services.engagement import domain
from services.engagement.domain import ActorState, Limits, PairDayState, Slice
from shared import events as ev
from shared.events import Envelope
from shared.outbox import AggregateWrite, CommitResult, IndexOp, Outbox, retry_on_conflict
from shared.settings import EngagementSettings

PRODUCER = "engagement"


class EngagementStore:
    def __init__(self, redis: Redis, outbox: Outbox, settings: EngagementSettings) -> None:
        self.redis = redis
        self.outbox = outbox
        self.settings = settings
        self.limits = Limits(settings.per_actor_per_minute, settings.per_target_per_day)

    def _key(self, *parts: str) -> str:
        return self.settings.key("engagement", *parts)

    @property
    def members_key(self) -> str:
        return self._key("members")

    @property
    def blocks_key(self) -> str:
        return self._key("blocks")  # set of "blocker>blocked"

    def actor_key(self, actor: str) -> str:
        return self._key("actor", actor)

    def pair_day_key(self, actor: str, target: str) -> str:
        return self._key("pair-day", f"{actor}>{target}")

    async def execute(self, command: domain.Command) -> list[Envelope]:
        actor = command.actor if isinstance(command, domain.RecordEngagement) else command.member_id
        target = command.target if isinstance(command, domain.RecordEngagement) else actor
        keys = [self.actor_key(actor), self.pair_day_key(actor, target)]

        async def attempt() -> tuple[CommitResult, list[Envelope]]:
            now = datetime.now(UTC)
            actor_row, pair_row = await self.outbox.load(*keys)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.sismember(self.members_key, actor)
                pipe.sismember(self.members_key, target)
                pipe.sismember(self.blocks_key, f"{actor}>{target}")
                pipe.sismember(self.blocks_key, f"{target}>{actor}")
                actor_known, target_known, blocks, blocked_by = await pipe.execute()
            state = Slice(
                actor_known=bool(actor_known),
                target_known=bool(target_known),
                blocked=bool(blocks or blocked_by),
                actor=ActorState.model_validate(actor_row.state or {}),
                pair_day=PairDayState.model_validate(pair_row.state or {}),
            )
            events = domain.decide(state, command, self.limits, now)
            writes = []
            if isinstance(command, domain.RecordEngagement):
                after = domain.evolve(state, events[0], now)
                writes = [
                    AggregateWrite(keys[0], actor_row.version, after.actor.model_dump(mode="json")),
                    AggregateWrite(
                        keys[1], pair_row.version, after.pair_day.model_dump(mode="json")
                    ),
                ]
            envelopes = Envelope.wrap_all(events, producer=PRODUCER, occurred_at=now)
            result = await self.outbox.commit(writes, envelopes, topics=self.settings.topics)
            return result, envelopes

        _, envelopes = await retry_on_conflict(attempt)
        return envelopes

    async def fold(self, event: ev.Event, dedupe_key: str) -> None:
        """Keep the members and blocks this service's rules need (from other services)."""
        op: Literal["SADD", "SREM"]
        match event:
            case ev.MemberRegistered(member_id=m):
                op, key, member = "SADD", self.members_key, m
            case ev.MemberDeactivated(member_id=m):
                op, key, member = "SREM", self.members_key, m
            case ev.MemberBlocked(blocker=a, blocked=b):
                op, key, member = "SADD", self.blocks_key, f"{a}>{b}"
            case ev.MemberUnblocked(blocker=a, blocked=b):
                op, key, member = "SREM", self.blocks_key, f"{a}>{b}"
            case _:
                return
        await self.outbox.commit(
            [],
            [],
            topics=self.settings.topics,
            index_ops=[IndexOp(op, key, member)],
            dedupe_key=dedupe_key,
        )
