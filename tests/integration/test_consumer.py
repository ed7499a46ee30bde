"""The idempotent batch consumer on a real broker (FastStream on aiokafka) and redis-server."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis.asyncio import Redis

from shared import events as ev
from shared.consumer import (
    COMMIT_EVERY_S,
    ConsumedEvent,
    EventConsumer,
    broker_dead_letter_sink,
    subscribe,
)
from shared.events import Envelope
from shared.kafka import make_broker
from shared.topics import TopicNames, dlq
from tests.helpers import Infra, read_topic, wait_until

pytestmark = pytest.mark.integration

# Counts each event once: the effect and the dedupe mark land in one atomic script.
APPLY_LUA = """
for i, mark in ipairs(KEYS) do
  if i > 1 and redis.call('SET', mark, '1', 'NX', 'EX', 3600) then
    redis.call('INCR', KEYS[1])
  end
end
"""


class CountingHandler:
    def __init__(self, redis: Redis, counter_key: str, poison_member: str | None = None) -> None:
        self.counter_key = counter_key
        self.script = redis.register_script(APPLY_LUA)
        self.poison_member = poison_member
        self.calls = 0

    async def __call__(self, events: list[ConsumedEvent]) -> None:
        self.calls += 1
        if self.poison_member and any(
            getattr(e.event, "member_id", None) == self.poison_member for e in events
        ):
            raise RuntimeError("cannot apply this event")
        await self.script(keys=[self.counter_key, *(e.dedupe_key for e in events)])


@contextlib.asynccontextmanager
async def consuming(
    infra: Infra,
    redis: Redis,
    namespace: str,
    handler: CountingHandler,
    wanted: frozenset[str] | None = None,
    commit_every_s: float = COMMIT_EVERY_S,
) -> AsyncIterator[EventConsumer]:
    broker = make_broker(infra.kafka_bootstrap, "test-consumer")
    consumer = EventConsumer(
        name="test",
        redis=redis,
        handler=handler,
        dead_letter=broker_dead_letter_sink(broker),
        dedupe_prefix=f"{namespace}seen",
        max_attempts=2,
        backoff_s=0.01,
        wanted=wanted,
    )
    topics = TopicNames(namespace)
    subscribe(
        broker,
        consumer,
        [topics(ev.MEMBERS)],
        group_id=f"{namespace}g",
        commit_every_s=commit_every_s,
        session_timeout_ms=1000,
        heartbeat_interval_ms=300,
    )
    await broker.start()
    try:
        yield consumer
    finally:
        await broker.stop()


async def produce(
    infra: Infra, topic: str, values: list[bytes], headers: list[bytes | None] | None = None
) -> None:
    """Each value keyed as its envelope says (a record whose key differs is dead-lettered),
    with the `type` header given for it, if any."""
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for value, type_ in zip(values, headers or [None] * len(values), strict=True):
            await producer.send_and_wait(
                topic,
                value,
                key=_envelope_key(value),
                headers=[("type", type_)] if type_ is not None else None,
            )
    finally:
        await producer.stop()


def _envelope_key(value: bytes) -> bytes:
    try:
        return str(json.loads(value)["key"]).encode()
    except (ValueError, KeyError, TypeError):
        return b"not-an-envelope"


def registered(member: str) -> Envelope:
    return Envelope.wrap(
        ev.MemberRegistered(member_id=member, name=member.title(), industry="Technology"),
        producer="test",
    )


async def _counter(redis: Redis, key: str) -> int:
    return int(await redis.get(key) or 0)


async def test_redelivered_batch_is_applied_once(
    infra: Infra, redis_client: Redis, namespace: str
) -> None:
    topic = TopicNames(namespace)(ev.MEMBERS)
    counter = f"{namespace}count"
    batch = [registered(f"m{i}").to_bytes() for i in range(20)]
    handler = CountingHandler(redis_client, counter)
    async with consuming(infra, redis_client, namespace, handler):
        await produce(infra, topic, batch)
        await wait_until(lambda: _counter(redis_client, counter), timeout=15)
        await wait_until(lambda: _eq(_counter(redis_client, counter), 20), timeout=15)
        # The same records again, as after a consumer crash before its commit.
        await produce(infra, topic, [*batch, registered("late").to_bytes()])
        await wait_until(lambda: _eq(_counter(redis_client, counter), 21), timeout=15)
    # The duplicates were filtered before the handler: it never saw them again.
    assert await _counter(redis_client, counter) == 21


async def _eq(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]


async def test_committed_positions_survive_a_restart(
    infra: Infra, redis_client: Redis, namespace: str
) -> None:
    topic = TopicNames(namespace)(ev.MEMBERS)
    counter = f"{namespace}count"
    await produce(infra, topic, [registered(f"m{i}").to_bytes() for i in range(5)])
    first = CountingHandler(redis_client, counter)
    async with consuming(infra, redis_client, namespace, first):
        await wait_until(lambda: _eq(_counter(redis_client, counter), 5), timeout=15)
    await produce(infra, topic, [registered("after-restart").to_bytes()])
    second = CountingHandler(redis_client, counter)
    async with consuming(infra, redis_client, namespace, second):
        await wait_until(lambda: _eq(_counter(redis_client, counter), 6), timeout=15)
    # Only the new record reached the restarted consumer: offsets were committed.
    assert second.calls == 1


async def test_poison_messages_go_to_the_dlq_and_the_consumer_moves_on(
    infra: Infra, redis_client: Redis, namespace: str
) -> None:
    topics = TopicNames(namespace)
    topic = topics(ev.MEMBERS)
    counter = f"{namespace}count"
    unknown = registered("x").model_dump(mode="json") | {"type": "MemberTeleported"}
    invalid = registered("y").model_dump(mode="json") | {"payload": {"member_id": "no spaces!"}}
    import json

    values = [
        b"\x00not json at all",
        json.dumps(unknown).encode(),
        json.dumps(invalid).encode(),
        registered("breaks-handler").to_bytes(),
        registered("good").to_bytes(),
    ]
    handler = CountingHandler(redis_client, counter, poison_member="breaks-handler")
    async with consuming(infra, redis_client, namespace, handler):
        await produce(infra, topic, values)
        await wait_until(lambda: _eq(_counter(redis_client, counter), 1), timeout=15)
        dead = await read_topic(infra.kafka_bootstrap, dlq(topic), expect=4)

    reasons = [dict(r.headers)["dlq_reason"].decode() for r in dead]
    # Keyed by their envelopes, the records spread over partitions: compare as a multiset.
    assert sorted(reason.split(":")[0] for reason in reasons) == [
        "handler_failed",
        "invalid",
        "invalid",
        "unknown_type",
    ]
    assert any("member_id" in reason for reason in reasons)  # says which field
    assert all(dict(r.headers)["source_topic"] == topic.encode() for r in dead)
    assert {r.value for r in dead} >= {values[0]}  # the original bytes, for replay after a fix


async def test_records_of_types_it_does_not_handle_are_passed_over_unread(
    infra: Infra, redis_client: Redis, namespace: str
) -> None:
    """A group handling only MemberRegistered skips another type by its header, even a body
    it could not decode (that type's own group dead-letters it); a header that contradicts
    the envelope is dead-lettered."""
    topic = TopicNames(namespace)(ev.MEMBERS)
    counter = f"{namespace}count"
    deactivated = Envelope.wrap(ev.MemberDeactivated(member_id="m"), producer="test")
    # One key, so one partition, in this order: the last applied means the others were seen.
    not_ours = json.dumps({"key": "m", "garbage": True}).encode()
    values = [not_ours, deactivated.to_bytes(), registered("m").to_bytes()]
    headers: list[bytes | None] = [b"MemberDeactivated", b"MemberRegistered", b"MemberRegistered"]
    handler = CountingHandler(redis_client, counter)
    async with consuming(
        infra, redis_client, namespace, handler, wanted=frozenset({"MemberRegistered"})
    ):
        await produce(infra, topic, values, headers)
        await wait_until(lambda: _eq(_counter(redis_client, counter), 1), timeout=15)
        dead = await read_topic(infra.kafka_bootstrap, dlq(topic), expect=1)

    assert [dict(r.headers)["dlq_reason"].decode().split(":")[0] for r in dead] == ["type_mismatch"]
    assert dead[0].value == deactivated.to_bytes()


async def _uncommitted(infra: Infra, topic: str, group_id: str) -> int:
    """Records of `topic` past what `group_id` committed."""
    reader = AIOKafkaConsumer(bootstrap_servers=infra.kafka_bootstrap, group_id=group_id)
    await reader.start()
    try:
        parts = [TopicPartition(topic, p) for p in reader.partitions_for_topic(topic) or ()]
        ends = await reader.end_offsets(parts)
        return sum([ends[tp] - (await reader.committed(tp) or 0) for tp in parts])
    finally:
        await reader.stop()


async def test_a_busy_subscription_commits_seldom_but_the_end_of_a_burst_at_once(
    infra: Infra, redis_client: Redis, namespace: str
) -> None:
    """Busy batches commit at most once per `commit_every_s` (here: never again), so a
    restart re-reads them and skips them by their marks; the small batch that ends a burst
    commits everything before it."""
    topic = TopicNames(namespace)(ev.MEMBERS)
    counter = f"{namespace}count"
    handler = CountingHandler(redis_client, counter)
    async with consuming(infra, redis_client, namespace, handler, commit_every_s=3600):
        await produce(infra, topic, [registered(f"a{i}").to_bytes() for i in range(8)])
        await wait_until(lambda: _eq(_counter(redis_client, counter), 8), timeout=15)
        await produce(infra, topic, [registered(f"b{i}").to_bytes() for i in range(8)])
        await wait_until(lambda: _eq(_counter(redis_client, counter), 16), timeout=15)
        await produce(infra, topic, [registered("tail").to_bytes()])
        await wait_until(lambda: _eq(_counter(redis_client, counter), 17), timeout=15)
        await wait_until(lambda: _eq(_uncommitted(infra, topic, f"{namespace}g"), 0), timeout=15)


async def test_a_record_sent_to_the_dlq_is_committed_at_once_never_sent_twice(
    infra: Infra, redis_client: Redis, namespace: str
) -> None:
    topic = TopicNames(namespace)(ev.MEMBERS)
    counter = f"{namespace}count"
    good = [registered(f"m{i}").to_bytes() for i in range(8)]
    async with consuming(
        infra, redis_client, namespace, CountingHandler(redis_client, counter), commit_every_s=3600
    ):
        await produce(infra, topic, good[:4])  # the first batch commits (none did before)
        await wait_until(lambda: _eq(_counter(redis_client, counter), 4), timeout=15)
        await produce(infra, topic, [b"\x00not json", *good[4:]])  # busy: a batch of 5
        await wait_until(lambda: _eq(_counter(redis_client, counter), 8), timeout=15)
        await read_topic(infra.kafka_bootstrap, dlq(topic), expect=1)
    restarted = CountingHandler(redis_client, counter)
    async with consuming(infra, redis_client, namespace, restarted, commit_every_s=3600):
        await produce(infra, topic, [registered("after").to_bytes()])
        await wait_until(lambda: _eq(_counter(redis_client, counter), 9), timeout=15)
        dead = await read_topic(infra.kafka_bootstrap, dlq(topic), expect=1)
    assert [r.value for r in dead] == [b"\x00not json"]
