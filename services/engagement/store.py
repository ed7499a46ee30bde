"""Engagement state on the kit's command loop: the actor's and the pair's counters, and the
known members and blocks (folded from other services) that its rules check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from pydantic import BaseModel

from services.engagement import domain
from services.engagement.domain import ActorState, Limits, PairDayState, Slice
from shared import events as ev
from shared.commands import CommandLoop, IndexOp, Plan, Rows, StateStore
from shared.settings import EngagementSettings


class EngagementStore(CommandLoop[Slice, domain.Command]):
    producer = "engagement"

    def __init__(self, store: StateStore, settings: EngagementSettings) -> None:
        super().__init__(store, self)
        self.limits = Limits(
            per_actor_per_minute=settings.per_actor_per_minute,
            per_target_per_day=settings.per_target_per_day,
        )
        self.key = lambda *parts: settings.key("engagement", *parts)
        self.members_key = self.key("members")
        self.blocks_key = self.key("blocks")  # set of "blocker>blocked"

    async def fold(self, event: ev.Event, dedupe_key: str) -> None:
        """Keep the members and blocks this service's rules need (from other services)."""
        match event:
            case ev.MemberRegistered(member_id=m) | ev.MemberDeactivated(member_id=m):
                added, key, member = isinstance(event, ev.MemberRegistered), self.members_key, m
            case ev.MemberBlocked(blocker=a, blocked=b) | ev.MemberUnblocked(blocker=a, blocked=b):
                added, key, member = (
                    isinstance(event, ev.MemberBlocked),
                    self.blocks_key,
                    f"{a}>{b}",
                )
            case _:
                return
        op = IndexOp("SADD" if added else "SREM", key, member)
        await self.store.commit([], [], index_ops=[op], dedupe_key=dedupe_key)

    # the loop's WriteModel -----------------------------------------------------------------
    async def plan(self, command: domain.Command | None, observed: ev.Event | None) -> Plan:
        match command:
            case domain.RecordEngagement(actor=a, target=t):
                return Plan(
                    {
                        "actor": (self.key("actor", a), ActorState),
                        "pair_day": (self.key("pair-day", f"{a}>{t}"), PairDayState),
                    },
                    {
                        "actor_known": (self.members_key, a),
                        "target_known": (self.members_key, t),
                        "blocks": (self.blocks_key, f"{a}>{t}"),
                        "blocked_by": (self.blocks_key, f"{t}>{a}"),
                    },
                )
            case domain.AnnounceMilestone(member_id=m):
                return Plan({}, {"actor_known": (self.members_key, m)})
        raise TypeError(f"unknown command {command!r}")

    def slice(self, command: domain.Command | None, rows: Rows, now: datetime) -> Slice:
        return Slice(
            limits=self.limits,
            now=now,
            actor_known=rows.checks["actor_known"],
            target_known=rows.checks.get("target_known", True),
            blocked=rows.checks.get("blocks", False) or rows.checks.get("blocked_by", False),
            actor=rows.get("actor") or ActorState(),
            pair_day=rows.get("pair_day") or PairDayState(),
        )

    def aggregates(self, state: Slice) -> Mapping[str, BaseModel | None]:
        return {"actor": state.actor, "pair_day": state.pair_day}

    decide = staticmethod(domain.decide)
    evolve = staticmethod(domain.evolve)

    def index_ops(self, events: Sequence[ev.Event], now: datetime) -> list[IndexOp]:
        return []
