"""Transactional outbox: state change + events in one Redis step, then a relay to Kafka.

A write service never writes state and "also" publishes. `RedisStateStore.commit` runs one
Lua script that checks the optimistic versions of every aggregate it touches (and, for
consumers, that the causing event was not applied before), writes the new states, updates
indexes and appends the events to the service's outbox stream. `OutboxRelay` publishes the stream to
Kafka with acks=all and deletes an entry only after the broker confirmed it; a crash between
the two re-publishes (at-least-once), and consumers dedupe by `event_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import scripts
from shared.archive import ArchivedRecord, LogArchive
from shared.commands import AggregateWrite, CommitResult, FollowKey, IndexOp, Loaded, Snapshot
from shared.events import Envelope
from shared.groups import KeyLayout, SlotGroups, outside, slot, tag
from shared.observability import EVENTS_PUBLISHED, OUTBOX_BACKLOG
from shared.redis import AutoPipeline
from shared.settings import ServiceSettings
from shared.topics import TopicNames

log = logging.getLogger("rapport.outbox")


class RedisStateStore:
    """The `StateStore` on Redis: aggregates are hashes (`v` version, `s` JSON state), the
    outbox is a stream, and `commit` is one Lua script (shared/lua/outbox_commit.lua).

    With `groups` the service's keys are laid out in slot groups (shared.groups): each group
    has its own outbox stream, a commit names its group, and on Redis Cluster (`cluster`) a
    load reads each slot it touches with one call, all of them at once."""

    def __init__(
        self,
        redis: Redis,
        stream_key: str,
        topics: TopicNames,
        dedupe_ttl_s: int = 30 * 24 * 3600,
        *,
        groups: SlotGroups | None = None,
        cluster: bool = False,
    ) -> None:
        self.redis = redis
        self.stream_key = stream_key
        self.topics = topics
        self.dedupe_ttl_s = dedupe_ttl_s
        self.groups = groups
        self.cluster = cluster
        self._commit = scripts.register(redis, "shared", "outbox_commit")
        self._load = scripts.register(redis, "shared", "state_load")
        # Every request loads and commits: concurrent ones share a round trip.
        self._calls = AutoPipeline(redis)

    @classmethod
    def of(cls, redis: Redis, settings: ServiceSettings, layout: KeyLayout) -> RedisStateStore:
        """The state store of `settings.service`, its keys laid out as `layout` says."""
        return cls(
            redis,
            settings.key(settings.service, "outbox"),
            settings.topics,
            settings.dedupe_ttl_s,
            groups=settings.groups if layout is KeyLayout.SLOT_GROUPS else None,
            cluster=settings.redis_cluster,
        )

    @property
    def streams(self) -> list[str]:
        """Every outbox stream of this store: one per group, or the one. In groups, the one
        stream too: what it held when the service moved to groups is relayed from there."""
        if self.groups is None:
            return [self.stream_key]
        return [*(in_group(self.stream_key, g) for g in self.groups.all()), self.stream_key]

    async def load(
        self,
        keys: Sequence[str],
        checks: Sequence[tuple[str, str]] = (),
        follows: Sequence[FollowKey] = (),
    ) -> Snapshot:
        if not self.cluster:
            return await self._load_on_one_node(keys, checks, follows)
        # One call per slot, all at once: a followed key is in its source's slot (an id
        # carries its group), and checks read other groups' keys, never written here.
        slots: dict[int, tuple[list[int], list[int], list[int]]] = {}
        for i, key in enumerate(keys):
            slots.setdefault(slot(key), ([], [], []))[0].append(i)
        for j, (key, _) in enumerate(checks):
            slots.setdefault(slot(key), ([], [], []))[1].append(j)
        for f_index, f in enumerate(follows):
            slots[slot(keys[f.source])][2].append(f_index)

        async def one_slot(
            at: tuple[list[int], list[int], list[int]],
        ) -> tuple[tuple[list[int], list[int], list[int]], Snapshot]:
            k_at, c_at, f_at = at
            local = {i: n for n, i in enumerate(k_at)}
            part = await self._load_on_one_node(
                [keys[i] for i in k_at],
                [checks[j] for j in c_at],
                [
                    FollowKey(local[follows[n].source], follows[n].field, follows[n].key_prefix)
                    for n in f_at
                ],
            )
            return at, part

        rows: list[Loaded] = [Loaded(0, None)] * len(keys)
        flags = [False] * len(checks)
        followed: list[tuple[str | None, Loaded]] = [(None, Loaded(0, None))] * len(follows)
        for (k_at, c_at, f_at), part in await asyncio.gather(*map(one_slot, slots.values())):
            for i, row in zip(k_at, part.rows, strict=True):
                rows[i] = row
            for j, flag in zip(c_at, part.checks, strict=True):
                flags[j] = flag
            for n, entry in zip(f_at, part.followed, strict=True):
                followed[n] = entry
        return Snapshot(rows, flags, followed)

    async def _load_on_one_node(
        self,
        keys: Sequence[str],
        checks: Sequence[tuple[str, str]],
        follows: Sequence[FollowKey],
    ) -> Snapshot:
        args: list[Any] = [len(keys), len(checks), len(follows), *(m for _, m in checks)]
        for f in follows:
            args += [f.source + 1, f.field, f.key_prefix]
        out = await self._calls.script(self._load, [*keys, *(key for key, _ in checks)], args)
        n, c = len(keys), len(checks)
        return Snapshot(
            [_loaded(v, s) for v, s in out[:n]],
            [bool(flag) for flag in out[n : n + c]],
            [(_s(i) if i else None, _loaded(v, s)) for i, v, s in out[n + c :]],
        )

    async def commit(
        self,
        writes: Sequence[AggregateWrite],
        envelopes: Sequence[Envelope],
        *,
        index_ops: Sequence[IndexOp] = (),
        dedupe_key: str | None = None,
        group: str | None = None,
    ) -> CommitResult:
        if self.groups is not None and group is None:
            raise ValueError("this store is laid out in slot groups: a commit names its group")
        stream = in_group(self.stream_key, group) if group else self.stream_key
        # A consumer's mark that it applied an event lives with what the event changed.
        mark = (in_group(dedupe_key, group) if group else dedupe_key) if dedupe_key else stream
        keys = [stream, mark, *(w.key for w in writes)]
        keys += [op.key for op in index_ops]
        if group is not None and (stray := outside(keys, group)):
            # On one node too, so that a key laid out wrong fails before a cluster would.
            raise ValueError(f"a commit in group {group} writes keys outside it: {stray}")
        if self.cluster and len({slot(k) for k in keys}) > 1:
            raise ValueError(f"a commit spans several hash slots (group {group}): {keys}")
        payload = [
            self.dedupe_ttl_s,
            [
                [w.expected_version] if w.state_json is None else [w.expected_version, w.state_json]
                for w in writes
            ],
            [
                [self.topics(e.topic), e.key, e.type, str(e.event_id), e.to_bytes().decode()]
                for e in envelopes
            ],
            [[op.op, repr(op.score), op.member, op.field] for op in index_ops],
            1 if dedupe_key else 0,
        ]
        args = [orjson.dumps(payload)]  # compact, as the script's cjson reads it
        result = _s(await self._calls.script(self._commit, keys, args))
        if result not in ("ok", "conflict", "duplicate"):
            raise RuntimeError(f"unexpected outbox commit result {result!r}")
        return result  # type: ignore[return-value]

    async def set_members(self, key: str) -> set[str]:
        return {_s(m) for m in await self.redis.smembers(key)}

    async def lowest(self, key: str, max_score: float, limit: int) -> list[str]:
        ids = await self.redis.zrangebyscore(key, "-inf", max_score, start=0, num=limit)
        return [_s(i) for i in ids]

    async def claim(self, key: str, field: str, value: str) -> str:
        async with self.redis.pipeline(transaction=False) as pipe:  # one round trip
            pipe.hsetnx(key, field, value)
            pipe.hget(key, field)
            _, stored = await pipe.execute()
        return _s(stored)

    async def backlog(self) -> int:
        if len(self.streams) == 1:
            return int(await self.redis.xlen(self.stream_key))
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in self.streams:
                pipe.xlen(stream)
            return sum(int(n) for n in await pipe.execute())


def in_group(key: str, group: str) -> str:
    """`key` moved into `group`'s slot: the group's hash tag before its last part
    (`rapport:engagement:outbox` -> `rapport:engagement:{g0003}:outbox`)."""
    head, _, last = key.rpartition(":")
    return f"{head}:{tag(group)}:{last}" if head else f"{tag(group)}:{last}"


@dataclass
class OutboxRelay:
    """Publishes the outbox stream to Kafka in order; one active relay per stream (a lease).

    Several replicas may run it; only the lease holder publishes, so per-key order holds.
    """

    redis: Redis
    broker: KafkaBroker
    stream_key: str
    service: str
    batch_size: int = 500
    lease_ms: int = 5000
    # Under the request client's socket timeout (shared.redis.SOCKET_TIMEOUT_S), so an idle
    # wait is never taken for an outage.
    idle_block_ms: int = 500
    retry_backoff_s: float = 0.5
    # After a part batch of several entries (commits are coming in), the next batch starts
    # this much later and gathers what lands meanwhile: a relay that went on at once sent
    # every few entries in a produce request of their own (the broker's CPU per event went
    # up 2.4x under write load, in the one pair of runs that measured it). A batch of one is
    # an idle relay's: the next entry still goes out as soon as it lands (XREAD BLOCK).
    linger_s: float = 0.01
    # Test hook: runs after the broker confirmed a batch and before the entries are deleted.
    after_publish: Callable[[list[str]], Awaitable[None]] | None = None
    # The local stack's copy of the log (shared.archive): what the broker confirmed is copied
    # there before it leaves the outbox, and nothing is published while it is restored.
    archive: LogArchive | None = None
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        self._renew = scripts.register(self.redis, "shared", "lease_renew")
        self._stopping = asyncio.Event()
        self._last_id = "0-0"

    @property
    def lease_key(self) -> str:
        return f"{self.stream_key}:lease"

    async def run(self) -> None:
        renewed_at = -1e9
        while not self._stopping.is_set():
            try:
                # Renew a third of the way through the lease, not once per batch.
                if time.monotonic() - renewed_at > self.lease_ms / 3000:
                    if not await self._renew(
                        keys=[self.lease_key], args=[self.owner, self.lease_ms]
                    ):
                        # A standby replica reports the backlog too: any replica's scrape
                        # (or the one a client's connection reaches) shows it.
                        backlog = await self.redis.xlen(self.stream_key)
                        OUTBOX_BACKLOG.labels(self.service).set(backlog)
                        await self._wait(self.lease_ms / 3000)
                        continue
                    renewed_at = time.monotonic()
                published = await self.relay_once()
                if not published:
                    await self._wait_for_entries()
                elif 1 < published < self.batch_size and self.linger_s:
                    await self._wait(self.linger_s)
            except (RedisError, KafkaError, OSError) as exc:
                log.warning("outbox relay %s: %r; retrying", self.stream_key, exc)
                await self._wait(self.retry_backoff_s)

    async def drain(self) -> None:
        """Publish what the outbox holds, if this relay holds the lease (at shutdown)."""
        if await self.redis.get(self.lease_key) == self.owner:
            while await self.relay_once():
                pass

    async def relay_once(self) -> int:
        """Publish up to one batch; returns how many entries were confirmed and removed."""
        if self.archive is not None and await self.archive.restoring():
            return 0  # the broker is being refilled: new events would take old offsets
        entries = await self.redis.xrange(self.stream_key, min="-", max="+", count=self.batch_size)
        entries = entries or []
        if len(entries) < self.batch_size:  # the whole backlog: no XLEN needed
            OUTBOX_BACKLOG.labels(self.service).set(len(entries))
        else:
            OUTBOX_BACKLOG.labels(self.service).set(await self.redis.xlen(self.stream_key))
        if not entries:
            return 0
        futures = []
        for _, fields in entries:
            f = {_s(k): v for k, v in (fields or {}).items()}
            futures.append(
                await self.broker.publish(
                    _b(f["value"]),
                    topic=_s(f["topic"]),
                    key=_b(f["key"]),
                    headers={"type": _s(f["type"]), "event_id": _s(f["event_id"])},
                    correlation_id=_s(f["event_id"]),
                    no_confirm=True,
                )
            )
        confirmed = await asyncio.gather(*futures)
        ids = [_s(entry_id) for entry_id, _ in entries]
        if self.archive is not None:
            await self.archive.keep(
                _archived(meta, fields)
                for meta, (_, fields) in zip(confirmed, entries, strict=True)
            )
        if self.after_publish is not None:
            await self.after_publish(ids)
        await self.redis.xdel(self.stream_key, *ids)
        self._last_id = ids[-1]
        for _, fields in entries:
            EVENTS_PUBLISHED.labels(self.service, _s((fields or {}).get("type"))).inc()
        return len(ids)

    async def _wait_for_entries(self) -> None:
        # XREAD BLOCK wakes as soon as a new entry lands: a wait on the condition, not a sleep.
        await self.redis.xread({self.stream_key: self._last_id}, count=1, block=self.idle_block_ms)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    def stop(self) -> None:
        self._stopping.set()


def _loaded(version: Any, state: Any) -> Loaded:
    return Loaded(int(version) if version else 0, orjson.loads(state) if state else None)


def _archived(meta: Any, fields: Any) -> ArchivedRecord:
    """An outbox entry as the broker confirmed it (topic, partition, offset), for the archive."""
    f = {_s(k): v for k, v in (fields or {}).items()}
    headers = [("type", _b(f["type"])), ("event_id", _b(f["event_id"]))]
    return ArchivedRecord(
        meta.topic, meta.partition, meta.offset, _b(f["key"]), _b(f["value"]), headers
    )


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
