"""Engagement state on the kit's command loop: the actor's and the pair's counters, and the
member directory (who is active, who blocked whom) that its rules check.

Every key is in the actor's slot group (shared.groups): an engagement's counters and its
event commit in one slot, so the service runs on Redis Cluster. The directory is read, in the
same load, from wherever it lives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from pydantic import BaseModel

from services.engagement import domain
from services.engagement.domain import ActorState, Limits, PairDayState, Slice
from shared import events as ev
from shared.commands import Change, CommandLoop, IndexOp, Plan, Rows, StateStore
from shared.directory import Directory
from shared.groups import KeyLayout, tag
from shared.settings import EngagementSettings


class EngagementStore(CommandLoop[Slice, domain.Command]):
    producer = "engagement"
    layout = KeyLayout.SLOT_GROUPS

    def __init__(self, store: StateStore, settings: EngagementSettings) -> None:
        super().__init__(store, self)
        self.limits = Limits(
            per_actor_per_minute=settings.per_actor_per_minute,
            per_target_per_day=settings.per_target_per_day,
        )
        self.groups = settings.groups
        self.key = lambda actor, *parts: settings.key(
            "engagement", tag(self.groups.of(actor)), *parts
        )
        self.directory = Directory.of(settings)

    # the loop's WriteModel -----------------------------------------------------------------
    async def plan(self, command: domain.Command | None, observed: ev.Event | None) -> Plan:
        d = self.directory
        match command:
            case domain.RecordEngagement(actor=a, target=t):
                return Plan(
                    self._counters(a, t),
                    {
                        "actor_known": d.is_active(a),
                        "target_known": d.is_active(t),
                        "blocks": d.blocks_from(a, t),
                        "blocked_by": d.blocks_from(t, a),
                    },
                    group=self.groups.of(a),
                )
            case domain.AnnounceMilestone(member_id=m):
                return Plan({}, {"actor_known": d.is_active(m)}, group=self.groups.of(m))
        raise TypeError(f"unknown command {command!r}")

    def plan_event(self, event: Change) -> Plan:
        if isinstance(event, ev.EngagementRecorded):
            return Plan(
                self._counters(event.actor, event.target), group=self.groups.of(event.actor)
            )
        return Plan()

    def _counters(self, a: str, t: str) -> dict[str, tuple[str, type[BaseModel]]]:
        return {
            "actor": (self.key(a, "actor", a), ActorState),
            "pair_day": (self.key(a, "pair-day", f"{a}>{t}"), PairDayState),
        }

    def slice(self, command: domain.Command | None, rows: Rows, now: datetime) -> Slice:
        return Slice(
            limits=self.limits,
            now=now,
            actor_known=rows.checks.get("actor_known", True),
            target_known=rows.checks.get("target_known", True),
            blocked=rows.checks.get("blocks", False) or rows.checks.get("blocked_by", False),
            actor=rows.get("actor") or ActorState(),
            pair_day=rows.get("pair_day") or PairDayState(),
        )

    def aggregates(self, state: Slice) -> Mapping[str, BaseModel | None]:
        return {"actor": state.actor, "pair_day": state.pair_day}

    decide = staticmethod(domain.decide)
    evolve = staticmethod(domain.evolve)

    def index_ops(self, events: Sequence[Change], now: datetime) -> list[IndexOp]:
        return []
