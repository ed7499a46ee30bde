"""Pure decisions of the engagement service: who may engage with whom, and how often.

Engaging with non-connections is allowed (that is how people meet). A block in either
direction answers as a member that does not exist, so the block stays private.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from shared import events as ev
from shared.domain import Invalid, LocalChange, RateLimited, refused, unknown_member


class ActorState(BaseModel):
    """The actor's recent engagements, for the per-minute limit."""

    model_config = ConfigDict(frozen=True)

    recent: tuple[datetime, ...] = ()


class PairDayState(BaseModel):
    """Engagements from one actor to one target on one UTC day."""

    model_config = ConfigDict(frozen=True)

    day: str = ""
    count: int = 0


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The configurable limits (values from `EngagementSettings`, which holds the defaults)."""

    per_actor_per_minute: int
    per_target_per_day: int


@dataclass(frozen=True)
class Slice:
    limits: Limits
    now: datetime
    actor_known: bool = True
    target_known: bool = True
    blocked: bool = False  # either direction
    actor: ActorState = field(default_factory=ActorState)
    pair_day: PairDayState = field(default_factory=PairDayState)


@dataclass(frozen=True)
class RecordEngagement:
    actor: str
    target: str
    kind: ev.EngagementKind
    ref: str | None = None


@dataclass(frozen=True)
class AnnounceMilestone:
    member_id: str
    kind: ev.MilestoneKind
    detail: str | None = None


Command = RecordEngagement | AnnounceMilestone

MINUTE = timedelta(minutes=1)


def decide(state: Slice, command: Command) -> list[ev.Event]:
    limits, now = state.limits, state.now
    if not state.actor_known:
        raise refused()
    if isinstance(command, AnnounceMilestone):
        return [
            ev.MilestoneAnnounced(
                member_id=command.member_id, kind=command.kind, detail=command.detail
            )
        ]
    if command.actor == command.target:
        raise Invalid("a member cannot engage with themselves", "self_engagement")
    if not state.target_known or state.blocked:
        # A block either way answers as a member that does not exist.
        raise unknown_member(command.target)
    recent = [t for t in state.actor.recent if t + MINUTE > now]
    if len(recent) >= limits.per_actor_per_minute:
        retry = min(recent) + MINUTE - now
        raise RateLimited(
            f"at most {limits.per_actor_per_minute} engagements per minute",
            int(retry.total_seconds()) + 1,
        )
    today = now.date().isoformat()
    if state.pair_day.day == today and state.pair_day.count >= limits.per_target_per_day:
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), now.tzinfo)
        raise RateLimited(
            f"at most {limits.per_target_per_day} engagements with one member per day",
            int((midnight - now).total_seconds()) + 1,
        )
    return [
        ev.EngagementRecorded(
            actor=command.actor, target=command.target, kind=command.kind, ref=command.ref
        )
    ]


def evolve(state: Slice, event: ev.Event | LocalChange) -> Slice:
    if not isinstance(event, ev.EngagementRecorded):
        return state
    now = state.now
    recent = (*(t for t in state.actor.recent if t + MINUTE > now), now)
    today = now.date().isoformat()
    count = state.pair_day.count + 1 if state.pair_day.day == today else 1
    return replace(
        state, actor=ActorState(recent=recent), pair_day=PairDayState(day=today, count=count)
    )
