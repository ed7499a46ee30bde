"""Transactional outbox: state change + events in one Redis step, then a relay to Kafka.

A write service never writes state and "also" publishes. `Outbox.commit` runs one Lua script
that checks the optimistic versions of every aggregate it touches (and, for consumers, that
the causing event was not applied before), writes the new states, updates indexes and
appends the events to the service's outbox stream. `OutboxRelay` publishes the stream to
Kafka with acks=all and deletes an entry only after the broker confirmed it; a crash between
the two re-publishes (at-least-once), and consumers dedupe by `event_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.errors import ContendedWrite
from shared.events import Envelope
from shared.observability import EVENTS_PUBLISHED, OUTBOX_BACKLOG
from shared.topics import TopicNames

log = logging.getLogger("rapport.outbox")

CommitResult = Literal["ok", "conflict", "duplicate"]

# KEYS: outbox stream, dedupe key ('' for none), aggregate hashes..., index keys...
# ARGV: n_aggregates, n_envelopes, n_index_ops, dedupe_ttl,
#       (expected_version, state_json) per aggregate,
#       (topic, key, type, event_id, value) per envelope,
#       (op, score, member) per index op (op: ZADD | ZREM | SADD | SREM | DEL)
_COMMIT_LUA = """
local n_agg, n_env, n_idx = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if KEYS[2] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then return 'duplicate' end
for i = 1, n_agg do
  local v = tonumber(redis.call('HGET', KEYS[2 + i], 'v') or '0')
  if v ~= tonumber(ARGV[3 + 2 * i]) then return 'conflict' end
end
for i = 1, n_agg do
  local state = ARGV[4 + 2 * i]
  redis.call('HSET', KEYS[2 + i], 'v', tonumber(ARGV[3 + 2 * i]) + 1, 's', state)
end
local base = 4 + 2 * n_agg
for i = 0, n_env - 1 do
  local a = base + 5 * i
  redis.call('XADD', KEYS[1], '*', 'topic', ARGV[a + 1], 'key', ARGV[a + 2],
             'type', ARGV[a + 3], 'event_id', ARGV[a + 4], 'value', ARGV[a + 5])
end
base = base + 5 * n_env
for i = 0, n_idx - 1 do
  local key = KEYS[3 + n_agg + i]
  local op, score, member = ARGV[base + 3 * i + 1], ARGV[base + 3 * i + 2], ARGV[base + 3 * i + 3]
  if op == 'ZADD' then redis.call('ZADD', key, score, member)
  elseif op == 'ZREM' then redis.call('ZREM', key, member)
  elseif op == 'SADD' then redis.call('SADD', key, member)
  elseif op == 'SREM' then redis.call('SREM', key, member)
  elseif op == 'DEL' then redis.call('DEL', key)
  end
end
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], '1', 'EX', tonumber(ARGV[4])) end
return 'ok'
"""


@dataclass(frozen=True)
class AggregateWrite:
    """New state for one aggregate, valid only if it is still at `expected_version`."""

    key: str
    expected_version: int
    state: Any


@dataclass(frozen=True)
class IndexOp:
    op: Literal["ZADD", "ZREM", "SADD", "SREM", "DEL"]
    key: str
    member: str = ""
    score: float = 0.0


@dataclass(frozen=True)
class Loaded:
    version: int
    state: Any


class Outbox:
    """The service's aggregates and its outbox stream, changed together or not at all."""

    def __init__(self, redis: Redis, stream_key: str, dedupe_ttl_s: int = 30 * 24 * 3600) -> None:
        self.redis = redis
        self.stream_key = stream_key
        self.dedupe_ttl_s = dedupe_ttl_s
        self._commit = redis.register_script(_COMMIT_LUA)

    async def load(self, *keys: str) -> list[Loaded]:
        """Current version and state (decoded JSON, None when absent) of each aggregate."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, "v", "s")
            rows = await pipe.execute()
        return [Loaded(int(v) if v else 0, json.loads(s) if s else None) for v, s in rows]

    async def commit(
        self,
        writes: Sequence[AggregateWrite],
        envelopes: Sequence[Envelope],
        *,
        topics: TopicNames,
        index_ops: Sequence[IndexOp] = (),
        dedupe_key: str | None = None,
    ) -> CommitResult:
        keys = [self.stream_key, dedupe_key or ""]
        keys += [w.key for w in writes]
        keys += [op.key for op in index_ops]
        args: list[Any] = [len(writes), len(envelopes), len(index_ops), self.dedupe_ttl_s]
        for w in writes:
            args += [w.expected_version, json.dumps(w.state, separators=(",", ":"))]
        for env in envelopes:
            args += [topics(env.topic), env.key, env.type, str(env.event_id), env.to_bytes()]
        for op in index_ops:
            args += [op.op, op.score, op.member]
        result = _s(await self._commit(keys=keys, args=args))
        if result not in ("ok", "conflict", "duplicate"):
            raise RuntimeError(f"unexpected outbox commit result {result!r}")
        return result  # type: ignore[return-value]

    async def backlog(self) -> int:
        return int(await self.redis.xlen(self.stream_key))


async def retry_on_conflict(
    attempt: Callable[[], Awaitable[tuple[CommitResult, Any]]], tries: int = 100
) -> tuple[CommitResult, Any]:
    """Re-run load -> decide -> commit until the commit is not a version conflict."""
    for n in range(tries):
        result, value = await attempt()
        if result != "conflict":
            return result, value
        # Jittered backoff spreads contenders out; a conflict means someone else just won.
        await asyncio.sleep(random.uniform(0, min(0.001 * 2**n, 0.05)))
    raise ContendedWrite()


_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""


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
    idle_block_ms: int = 1000
    retry_backoff_s: float = 0.5
    # Test hook: runs after the broker confirmed a batch and before the entries are deleted.
    after_publish: Callable[[list[str]], Awaitable[None]] | None = None
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        self._renew = self.redis.register_script(_RENEW_LUA)
        self._stopping = asyncio.Event()
        self._last_id = "0-0"

    @property
    def lease_key(self) -> str:
        return f"{self.stream_key}:lease"

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                if not await self._renew(keys=[self.lease_key], args=[self.owner, self.lease_ms]):
                    await self._wait(self.lease_ms / 3000)
                    continue
                published = await self.relay_once()
                if not published:
                    await self._wait_for_entries()
            except (RedisError, KafkaError, OSError) as exc:
                log.warning("outbox relay %s: %r; retrying", self.stream_key, exc)
                await self._wait(self.retry_backoff_s)

    async def relay_once(self) -> int:
        """Publish up to one batch; returns how many entries were confirmed and removed."""
        entries = await self.redis.xrange(self.stream_key, min="-", max="+", count=self.batch_size)
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
        await asyncio.gather(*futures)
        ids = [_s(entry_id) for entry_id, _ in entries]
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


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
