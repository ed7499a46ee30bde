"""`?after=` waits wake on the batch that applies their event, even one applied while the
wait was looking (its Redis round trip), instead of sleeping out the poll."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis

from services.projection import store as store_module
from services.projection.store import AppliedBatches, ReadModelStore
from shared.scoring import ScoringModel
from shared.settings import ProjectionSettings

# Far longer than any of these waits may take: a wait that sleeps out the poll fails them.
LONG_POLL_S = 60.0


class AppliedOnSecondLook(ReadModelStore):
    """A read model whose event is applied while the first look is on its way."""

    def __init__(self) -> None:
        # Never connects: no call here reaches Redis.
        super().__init__(Redis(port=1), ProjectionSettings(), ScoringModel())
        self.looks = 0

    async def applied(self, event_ids: Sequence[str]) -> bool:
        self.looks += 1
        if self.looks == 1:
            self.changed.notify()  # the batch lands before this look answers "not yet"
            return False
        return True


async def test_a_batch_applied_during_the_look_wakes_the_wait_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_module, "AFTER_POLL_S", LONG_POLL_S)
    store = AppliedOnSecondLook()
    assert await asyncio.wait_for(store.wait_applied(["e1"], wait_ms=120_000), timeout=5)
    assert store.looks == 2


async def test_a_wait_past_the_current_count_sleeps_until_the_next_batch() -> None:
    batches = AppliedBatches()
    seen = batches.count
    waiting = asyncio.create_task(batches.wait_past(seen, LONG_POLL_S))
    # One pass of the event loop, no time: the task runs until it blocks on the next batch.
    await asyncio.sleep(0)
    assert not waiting.done()
    batches.notify()
    await asyncio.wait_for(waiting, timeout=5)


async def test_a_wait_past_an_older_count_returns_at_once() -> None:
    batches = AppliedBatches()
    seen = batches.count
    batches.notify()
    await asyncio.wait_for(batches.wait_past(seen, LONG_POLL_S), timeout=5)


async def test_a_wait_with_no_batch_ends_after_its_timeout() -> None:
    batches = AppliedBatches()
    await asyncio.wait_for(batches.wait_past(batches.count, 0.01), timeout=5)
    assert batches.count == 0
