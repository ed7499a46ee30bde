"""The outbox on a real redis-server and a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from shared import events as ev
from shared.commands import AggregateWrite
from shared.events import Envelope, decode
from shared.kafka import make_broker
from shared.outbox import OutboxRelay, RedisStateStore
from shared.service import Runtime
from shared.settings import EngagementSettings
from shared.topics import TopicNames
from tests.helpers import Infra, poll_until, read_topic, wait_until

pytestmark = pytest.mark.integration


def _follow(i: int, follower: str = "ann") -> Envelope:
    return Envelope.wrap(ev.FollowStarted(follower=follower, followee=f"m{i}"), producer="test")


@contextlib.asynccontextmanager
async def _relay(infra: Infra, redis: Redis, stream: str, **options: object):
    broker = make_broker(infra.kafka_bootstrap, "test-relay")
    await broker.start()
    relay = OutboxRelay(redis, broker, stream, "test", **options)  # type: ignore[arg-type]
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.stop()
        await task
        await broker.stop()


async def test_commit_is_all_or_nothing_under_optimistic_versions(
    redis_client: Redis, namespace: str
) -> None:
    topics = TopicNames(namespace)
    outbox = RedisStateStore(redis_client, f"{namespace}outbox", topics)
    key = f"{namespace}agg:1"

    assert await outbox.commit([AggregateWrite.of(key, 0, {"n": 1})], [_follow(1)]) == "ok"
    # A writer that read version 0 lost the race: nothing of its change lands.
    stale = await outbox.commit([AggregateWrite.of(key, 0, {"n": 99})], [_follow(2)])

    assert stale == "conflict"
    [loaded] = (await outbox.load([key])).rows
    assert (loaded.version, loaded.state) == (1, {"n": 1})
    assert await outbox.backlog() == 1


async def test_dedupe_key_makes_a_consumer_commit_idempotent(
    redis_client: Redis, namespace: str
) -> None:
    topics = TopicNames(namespace)
    outbox = RedisStateStore(redis_client, f"{namespace}outbox", topics)
    key, mark = f"{namespace}agg:1", f"{namespace}seen:e1"
    first = await outbox.commit([AggregateWrite.of(key, 0, 1)], [_follow(1)], dedupe_key=mark)
    again = await outbox.commit([AggregateWrite.of(key, 1, 2)], [_follow(1)], dedupe_key=mark)
    assert (first, again) == ("ok", "duplicate")
    assert (await outbox.load([key])).rows[0].state == 1
    assert await outbox.backlog() == 1


async def test_relay_delivers_every_event_once_in_order_per_key(
    infra: Infra, redis_client: Redis, namespace: str
) -> None:
    topics = TopicNames(namespace)
    stream = f"{namespace}outbox"
    outbox = RedisStateStore(redis_client, stream, topics)
    sent = [_follow(i, follower=f"f{i % 3}") for i in range(60)]
    async with _relay(infra, redis_client, stream):
        for i, envelope in enumerate(sent):
            result = await outbox.commit(
                [AggregateWrite.of(f"{namespace}agg:{i}", 0, i)], [envelope]
            )
            assert result == "ok"
        records = await read_topic(infra.kafka_bootstrap, topics(ev.FollowStarted.topic), expect=60)
        await wait_until(lambda: _is_zero(outbox.backlog()))

    received = [decode(r.value)[0] for r in records]
    assert sorted(str(e.event_id) for e in received) == sorted(str(e.event_id) for e in sent)
    assert all(dict(r.headers)["type"] == b"FollowStarted" for r in records)
    for key in {e.key for e in sent}:
        expected = [e.event_id for e in sent if e.key == key]
        assert [e.event_id for e in received if e.key == key] == expected
        # One key, one partition: that is what keeps per-key order.
        assert len({r.partition for r in records if r.key == key.encode()}) == 1


async def _is_zero(value: object) -> bool:
    return await value == 0  # type: ignore[misc]


async def test_events_committed_before_a_crash_are_published_after_restart(
    infra: Infra, redis_client: Redis, namespace: str
) -> None:
    """Crash between the Redis commit and the publish: the relay was never running."""
    topics = TopicNames(namespace)
    stream = f"{namespace}outbox"
    outbox = RedisStateStore(redis_client, stream, topics)
    envelope = _follow(1)
    assert await outbox.commit([AggregateWrite.of(f"{namespace}a", 0, 1)], [envelope]) == "ok"

    async with _relay(infra, redis_client, stream):
        records = await read_topic(infra.kafka_bootstrap, topics(envelope.topic), expect=1)
    assert [decode(r.value)[0].event_id for r in records] == [envelope.event_id]


async def test_crash_after_publish_before_ack_republishes(
    infra: Infra, redis_client: Redis, namespace: str
) -> None:
    """The broker confirmed but the relay died before deleting: the entry is sent again."""
    topics = TopicNames(namespace)
    stream = f"{namespace}outbox"
    outbox = RedisStateStore(redis_client, stream, topics)
    envelope = _follow(7)
    await outbox.commit([AggregateWrite.of(f"{namespace}a", 0, 1)], [envelope])
    crashed = asyncio.Event()

    async def crash(_: list[str]) -> None:
        crashed.set()
        raise ConnectionError("relay process died")

    async with _relay(infra, redis_client, stream, after_publish=crash, lease_ms=300):
        await asyncio.wait_for(crashed.wait(), 10)
    assert await outbox.backlog() == 1  # still there: never acknowledged

    async with _relay(infra, redis_client, stream):
        records = await read_topic(infra.kafka_bootstrap, topics(envelope.topic), expect=2)
        await wait_until(lambda: _is_zero(outbox.backlog()))
    ids = [decode(r.value)[0].event_id for r in records]
    assert ids == [envelope.event_id, envelope.event_id]  # at-least-once; consumers dedupe


async def test_only_one_relay_publishes_at_a_time(
    infra: Infra, redis_client: Redis, namespace: str
) -> None:
    topics = TopicNames(namespace)
    stream = f"{namespace}outbox"
    outbox = RedisStateStore(redis_client, stream, topics)
    sent = [_follow(0) for _ in range(30)]  # one key, so one partition and a total order
    async with _relay(infra, redis_client, stream), _relay(infra, redis_client, stream):
        for i, envelope in enumerate(sent):
            await outbox.commit([AggregateWrite.of(f"{namespace}a{i}", 0, i)], [envelope])
        records = await read_topic(infra.kafka_bootstrap, topics(sent[0].topic), expect=30)
    assert [json.loads(r.value)["event_id"] for r in records] == [str(e.event_id) for e in sent]


async def test_a_publish_to_a_topic_the_broker_lacks_fails_and_creates_no_topic(
    infra: Infra, namespace: str
) -> None:
    """Topics come from `ensure_topics` with their partition counts: a client asking about a
    missing one (after an embedded broker restarted empty, say) must not have the broker
    create it with its own default count (shared.kafka.MetadataWithoutAutoCreate)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    missing = f"{namespace}never-created"
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, request_timeout_ms=1000)
    await producer.start()
    try:
        with pytest.raises(KafkaError):  # UnknownTopicOrPartition, once the wait is over
            await producer.send_and_wait(missing, b"lost?")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        assert missing not in await admin.list_topics()
    finally:
        await admin.close()


async def test_a_service_relays_its_outbox_while_its_event_loop_is_busy(
    infra: Infra, namespace: str, service_env: dict[str, str]
) -> None:
    """A request handler that holds the service's event loop (here: for as long as the test
    waits) does not hold the outbox back: the relay runs on a loop of its own. What is
    committed just before a stop is published by the stop, not left for the next start."""
    runtime = Runtime.build(EngagementSettings())
    await runtime.start()
    [stream] = runtime.state.streams
    watcher = redis_sync.Redis.from_url(infra.redis_url)
    first, last = _follow(1), _follow(2)
    try:
        try:
            assert (
                await runtime.state.commit([AggregateWrite.of(f"{namespace}a", 0, 1)], [first])
                == "ok"
            )
            # Blocking on purpose: no other task of this loop runs until the outbox is empty.
            poll_until(lambda: watcher.xlen(stream) == 0, timeout=10, what="the outbox relayed")
            assert (
                await runtime.state.commit([AggregateWrite.of(f"{namespace}a", 1, 2)], [last])
                == "ok"
            )
        finally:
            await runtime.stop()
        left = watcher.xlen(stream)
    finally:
        watcher.close()
    records = await read_topic(infra.kafka_bootstrap, TopicNames(namespace)(first.topic), expect=2)
    assert left == 0
    assert {decode(r.value)[0].event_id for r in records} == {first.event_id, last.event_id}
