"""Engagement rules and abuse limits, decided without I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.engagement import domain as d
from services.engagement.domain import Limits
from shared import events as ev
from shared.domain import REFUSED_MESSAGE, Forbidden, Invalid, NotFound, RateLimited

NOW = datetime(2026, 11, 27, 23, 59, 30, tzinfo=UTC)
LIMITS = Limits(per_actor_per_minute=3, per_target_per_day=2)


def Slice(**fields: Any) -> d.Slice:
    return d.Slice(limits=LIMITS, now=NOW, **fields)


def decide(state: d.Slice, command: d.Command, limits: Limits, at: datetime) -> list[ev.Event]:
    return d.decide(replace(state, limits=limits, now=at), command)


def engage(state: d.Slice, target: str = "bob", at: datetime = NOW) -> d.Slice:
    state = replace(state, now=at)
    [event] = d.decide(state, d.RecordEngagement("ann", target, "like"))
    return d.evolve(state, event)


def test_engagement_with_a_non_connection_is_recorded() -> None:
    events = decide(Slice(), d.RecordEngagement("ann", "bob", "comment", "post-1"), LIMITS, NOW)
    assert events == [
        ev.EngagementRecorded(actor="ann", target="bob", kind="comment", ref="post-1")
    ]


def test_refusals() -> None:
    with pytest.raises(Invalid):
        decide(Slice(), d.RecordEngagement("ann", "ann", "like"), LIMITS, NOW)
    with pytest.raises(NotFound):
        decide(Slice(target_known=False), d.RecordEngagement("ann", "zed", "like"), LIMITS, NOW)
    with pytest.raises(Forbidden) as info:
        decide(Slice(actor_known=False), d.AnnounceMilestone("ann", "promotion"), LIMITS, NOW)
    assert (info.value.code, info.value.message) == ("not_allowed", REFUSED_MESSAGE)
    with pytest.raises(NotFound) as blocked:
        decide(Slice(blocked=True), d.RecordEngagement("ann", "zed", "like"), LIMITS, NOW)
    with pytest.raises(NotFound) as unknown:
        decide(Slice(target_known=False), d.RecordEngagement("ann", "zed", "like"), LIMITS, NOW)
    # A block answers exactly as a member that does not exist.
    assert (blocked.value.code, blocked.value.message) == (
        unknown.value.code,
        unknown.value.message,
    )


def test_per_actor_per_minute_limit_with_retry_after() -> None:
    state = Slice()
    for i, target in enumerate(("b1", "b2", "b3")):
        state = engage(Slice(actor=state.actor), target, NOW + timedelta(seconds=i))
    with pytest.raises(RateLimited) as info:
        engage(Slice(actor=state.actor), "b4", NOW + timedelta(seconds=10))
    assert info.value.retry_after_s == 51
    engage(Slice(actor=state.actor), "b4", NOW + timedelta(seconds=61))


def test_per_target_per_day_limit_resets_at_midnight_utc() -> None:
    state = Slice()
    for i in range(2):
        state = engage(Slice(pair_day=state.pair_day), "bob", NOW - timedelta(hours=i + 1))
    with pytest.raises(RateLimited) as info:
        engage(Slice(pair_day=state.pair_day), "bob", NOW)
    assert info.value.retry_after_s == 31
    engage(Slice(pair_day=state.pair_day), "bob", NOW + timedelta(minutes=1))


def test_milestone_announced() -> None:
    events = decide(Slice(), d.AnnounceMilestone("ann", "new_job", "Acme"), LIMITS, NOW)
    assert events == [ev.MilestoneAnnounced(member_id="ann", kind="new_job", detail="Acme")]
