"""`rapport replay <service>`: a write service's state rebuilt from the event log.

The log is the truth: every write service's Redis state (aggregates and indexes) is a fold of
the events on the topics, its own and those it reacts to. Replaying reads every catalog topic
from its start, puts the events in the order they happened (time, then topic, partition and
offset) and folds each through the service's own `evolve` (`CommandLoop.fold`), into a fresh
keyspace by default (then compared with the live state by digest) or, after the live state
was lost, into the live keyspace itself.

The digest covers what the service's rules read: aggregates' states (not their versions),
indexes and the member directory; not outbox entries, leases or consumers' dedupe marks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from redis.asyncio import Redis

from rapport.dlq import behind
from services.connection.store import ConnectionStore
from services.engagement.store import EngagementStore
from services.invitation.main import rules_from
from services.invitation.store import InvitationStore
from shared.commands import CommandLoop
from shared.consumer import admit
from shared.events import Envelope, Event, InvalidEvent
from shared.outbox import RedisStateStore
from shared.settings import (
    ConnectionSettings,
    EngagementSettings,
    InvitationSettings,
    ServiceSettings,
)
from shared.topics import ALL_TOPICS, TopicNames

WRITE_SERVICES = ("invitation", "connection", "engagement")


@dataclass(frozen=True)
class LogEvent:
    envelope: Envelope
    event: Event
    order: tuple[Any, ...]


async def read_through(
    bootstrap: str,
    namespace: str = "",
    keep: Callable[[ConsumerRecord[Any, Any]], None] | None = None,
) -> dict[str, int]:
    """Read every catalog topic from each log's start to its end now, handing each record to
    `keep`; returns each partition's true end (`topic:partition` -> offset). Reading through
    is exact where Tansu's ListOffsets answers short."""
    topics = TopicNames(namespace)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        parts = [
            TopicPartition(topics(t), p)
            for t in ALL_TOPICS
            for p in sorted(consumer.partitions_for_topic(topics(t)) or ())
        ]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        while await behind(consumer, parts, ends):
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for record in records:
                    if keep is not None:
                        keep(record)
        return {f"{tp.topic}:{tp.partition}": await consumer.position(tp) for tp in parts}
    finally:
        await consumer.stop()


async def read_log(bootstrap: str, namespace: str = "") -> list[LogEvent]:
    """Every valid event on the catalog topics, from each log's start to its end now, in the
    order they happened. Records a consumer would dead-letter are left out, as it did."""
    events: list[LogEvent] = []

    def keep(r: ConsumerRecord[Any, Any]) -> None:
        try:
            envelope, event = admit(r)
        except InvalidEvent:
            return
        events.append(
            LogEvent(envelope, event, (envelope.occurred_at, r.topic, r.partition, r.offset))
        )

    await read_through(bootstrap, namespace, keep)
    return sorted(events, key=lambda e: e.order)


def settings_of(service: str, namespace: str) -> ServiceSettings:
    cls = {"invitation": InvitationSettings, "connection": ConnectionSettings}.get(
        service, EngagementSettings
    )
    return cls(namespace=namespace)  # type: ignore[call-arg]


STORES: dict[str, type[CommandLoop[Any, Any]]] = {
    "connection": ConnectionStore,
    "invitation": InvitationStore,
    "engagement": EngagementStore,
}


def loop_of(service: str, redis: Redis, settings: ServiceSettings) -> CommandLoop[Any, Any]:
    state = RedisStateStore.of(redis, settings, STORES[service].layout)
    if service == "connection":
        return ConnectionStore(state, settings)  # type: ignore[arg-type]
    if service == "invitation":
        return InvitationStore(state, settings, rules_from(settings))  # type: ignore[arg-type]
    return EngagementStore(state, settings)  # type: ignore[arg-type]


async def replay(
    service: str,
    redis: Redis,
    events: list[LogEvent],
    keyspace: str,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Fold `events` into `service`'s state under the key namespace `keyspace`."""
    if service not in WRITE_SERVICES:
        raise ValueError(f"unknown write service {service!r}; one of {WRITE_SERVICES}")
    loop = loop_of(service, redis, settings_of(service, keyspace))
    for n, e in enumerate(events, 1):
        await loop.fold(e.event, e.envelope.occurred_at)
        if progress is not None and n % 1000 == 0:
            progress(n)
    return len(events)


async def digest(service: str, redis: Redis, keyspace: str) -> str:
    """A hash of `service`'s state under `keyspace`, comparable across keyspaces."""
    entries = await _state(service, redis, keyspace)
    blob = json.dumps(entries, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


async def has_state(service: str, redis: Redis, keyspace: str) -> bool:
    return bool(await _state(service, redis, keyspace))


async def _state(service: str, redis: Redis, keyspace: str) -> list[tuple[str, Any]]:
    root = f"{keyspace}rapport:"
    patterns = [f"{root}{service}:*"] + ([f"{root}directory:*"] if service == "connection" else [])
    entries: list[tuple[str, Any]] = []
    for pattern in patterns:
        async for raw_key in redis.scan_iter(match=pattern, count=1000):
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            name = key.removeprefix(root)
            if _bookkeeping(name):
                continue
            value = await _value(redis, key)
            if value is not None:
                entries.append((name, value))
    return sorted(entries, key=lambda e: e[0])


def _bookkeeping(name: str) -> bool:
    parts = name.split(":")
    return parts[-1] in ("outbox", "lease") or "seen" in parts


async def _value(redis: Redis, key: str) -> Any:
    kind = _text(await redis.type(key))
    if kind == "hash":
        fields = {_text(k): _text(v) for k, v in (await redis.hgetall(key)).items()}
        if set(fields) == {"v", "s"}:  # an aggregate: its state, not its version
            state = _canonical(json.loads(fields["s"]))
            return None if _holds_nothing(state) else state
        return sorted(fields.items())
    if kind == "set":
        return sorted(_text(m) for m in await redis.smembers(key))
    if kind == "zset":
        scored: list[Any] = await redis.zrange(key, 0, -1, withscores=True)
        return sorted((_text(member), score) for member, score in scored)
    return None  # streams (the outbox) and plain keys (leases, marks) are bookkeeping


def _canonical(value: Any) -> Any:
    """Sets serialise in hash order: compare lists as sorted."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted((_canonical(v) for v in value), key=lambda v: json.dumps(v, default=str))
    return value


def _holds_nothing(state: Any) -> bool:
    """An aggregate still at its defaults (read by a decision, never changed)."""
    return isinstance(state, dict) and all(
        v in (None, False, 0, "", [], {}) for v in state.values()
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
