"""A subscription handles a batch per key: each key's events in log order, keys at once."""

from __future__ import annotations

import asyncio

import pytest

from shared import events as ev
from shared.consumer import ConsumedEvent, Subscription
from shared.events import Envelope


def _consumed(actor: str, ref: str, offset: int) -> ConsumedEvent:
    event = ev.EngagementRecorded(actor=actor, target="star", kind="like", ref=ref)
    envelope = Envelope.wrap(event, producer="test")
    return ConsumedEvent(envelope, event, "engagements", 0, offset, f"seen:{envelope.event_id}")


async def test_each_keys_events_in_order_and_keys_at_once() -> None:
    batch = [
        _consumed(a, f"{a}{n}", i)
        for i, (n, a) in enumerate((n, a) for n in range(3) for a in "ab")
    ]
    handled: list[str] = []
    b_started = asyncio.Event()

    async def handle(consumed: ConsumedEvent) -> None:
        event = consumed.event
        assert isinstance(event, ev.EngagementRecorded)
        if event.ref == "b0":
            b_started.set()
        if event.ref == "a0":
            # Handled one event at a time, a0 would wait here for b0 for ever.
            await asyncio.wait_for(b_started.wait(), timeout=5)
        handled.append(str(event.ref))

    await Subscription("s", ["engagements"], {ev.EngagementRecorded: handle}).dispatch(batch)
    assert [r for r in handled if r[0] == "a"] == ["a0", "a1", "a2"]
    assert [r for r in handled if r[0] == "b"] == ["b0", "b1", "b2"]


async def test_a_failing_key_fails_the_batch_after_the_others_finished() -> None:
    batch = [_consumed(a, a, i) for i, a in enumerate("abc")]
    handled: list[str] = []

    async def handle(consumed: ConsumedEvent) -> None:
        event = consumed.event
        assert isinstance(event, ev.EngagementRecorded)
        if event.actor == "a":
            raise RuntimeError("poison")
        await asyncio.sleep(0)  # yield, as a Redis call would
        handled.append(event.actor)

    subscription = Subscription("s", ["engagements"], {ev.EngagementRecorded: handle})
    with pytest.raises(RuntimeError, match="poison"):
        await subscription.dispatch(batch)
    assert sorted(handled) == ["b", "c"]


async def test_events_without_a_handler_are_passed_over() -> None:
    milestone = ev.MilestoneAnnounced(member_id="ann", kind="promotion")
    envelope = Envelope.wrap(milestone, producer="test")
    other = ConsumedEvent(envelope, milestone, "engagements", 0, 0, "seen:x")
    handled: list[ConsumedEvent] = []

    async def handle(consumed: ConsumedEvent) -> None:
        handled.append(consumed)

    await Subscription("s", ["engagements"], {ev.EngagementRecorded: handle}).dispatch([other])
    assert handled == []
