"""A batch subscriber's poll: records as soon as a fetch brings them, and after an empty poll
the next one at once (FastStream's own slept a whole batch timeout there, and a record that
came meanwhile waited it out)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from aiokafka import TopicPartition
from faststream.kafka.subscriber.usecase import BatchSubscriber

import shared.consumer  # noqa: F401  (what every service imports: the poll under test)


class Consumer:
    """Stands in for aiokafka's: the first poll finds nothing, the next one two records."""

    def __init__(self) -> None:
        self.polls: list[int] = []

    async def getmany(self, timeout_ms: int, max_records: int | None) -> dict[Any, list[str]]:
        self.polls.append(timeout_ms)
        if len(self.polls) == 1:
            return {}
        return {TopicPartition("t", 0): ["r1", "r2"], TopicPartition("t", 1): ["r3"]}


async def test_an_empty_poll_is_followed_by_the_next_one_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_sleeping(seconds: float) -> None:
        raise AssertionError(f"slept {seconds}s after an empty poll")

    monkeypatch.setattr(anyio, "sleep", no_sleeping)
    subscriber = object.__new__(BatchSubscriber)
    subscriber.batch_timeout_ms, subscriber.max_records = 250, 100
    consumer = Consumer()

    assert await subscriber.get_msg(consumer) == ()  # type: ignore[arg-type]
    assert await subscriber.get_msg(consumer) == ("r1", "r2", "r3")  # type: ignore[arg-type]
    assert consumer.polls == [250, 250]  # each poll waits for records, up to the timeout
