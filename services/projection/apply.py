"""Applying batches of events to the read models.

`BatchApplier.process(records)` decodes what is new in a batch of records, turns each event
into per-member ops (domain.to_ops) and applies them in chunks: member scripts (effects on
each member's keys), industry scripts, then the chunk's applied-marks and positions. On one
node all of it is one script call per chunk (chunk.lua); on a cluster, one call per slot
for each step. Every step can be re-run after a crash without changing the outcome, so a
re-delivered batch repairs a partial apply. Positions live with the read model; a batch
that starts past the stored position of its partition asks the consumer to rewind there.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from redis.exceptions import ResponseError

from services.projection import domain
from services.projection.store import READ_MODEL_FORMAT, Keyspace, ReadModelStore
from shared.consumer import DeadLetter, DeadLetterSink, admit, dead_letter, retry_transient
from shared.events import InvalidEvent
from shared.observability import (
    EVENTS_CONSUMED,
    LOG_RESETS,
    OFFSETS_SKIPPED,
    count_by_type,
    describe,
)

log = logging.getLogger("rapport.projection")

# Events per atomic apply step: one node runs a chunk in one script call, ~10 ms of Redis
# time, so queries between two chunks wait no longer than that.
APPLY_CHUNK = 250
YIELD_EVERY = 8  # events decoded between two chances for the chunk in flight to run
PIPELINE_DEPTH = 2  # one node: chunks sent before the first of them answers
OVERTOOK = -1  # chunk.lua's answer for a chunk run before the one sent ahead of it
CLUSTER_CALLS_IN_FLIGHT = 32  # under the cluster client's connections per node (64)


@dataclass
class _Chunk:
    version: int
    ops: list[domain.Applied]
    positions: dict[str, int]
    sources: dict[str, ConsumerRecord[Any, Any]]  # to dead-letter an event Redis refuses
    dead_letter: bool
    lower: frozenset[str]
    token: str  # names this chunk in chunk.lua's check of the order
    after: str  # the chunk that must have run before this one ('' for none)
    task: asyncio.Task[int] | None = None


async def retrying(call: Any) -> Any:
    """Transient broker or Redis errors wait, never fail: no event is at fault."""
    return await retry_transient(call, "projection")


class BatchApplier:
    def __init__(self, store: ReadModelStore, dead_letters: DeadLetterSink) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self._chunk_script = store.script("chunk")
        self._member_script = store.script("member")
        self._industry_script = store.script("industry")
        self._marks_script = store.script("marks")
        self._seen_script = store.script("seen")
        self._counted_script = store.script("counted")
        self._id, self._sent = uuid4().hex[:12], 0  # this applier, chunks it has sent
        self._in_flight: deque[_Chunk] = deque()  # chunks sent, in order, not yet settled
        # Partitions this consumer rewound, and where to: if the records resume past that
        # offset again, the ones in between do not exist (a gap), not a lost position.
        self._rewound: dict[TopicPartition, int] = {}

    async def process(
        self,
        records: Sequence[ConsumerRecord[Any, Any]],
        version: int | None = None,
        dead_letter: bool = True,
        contiguous: bool = False,
        highwaters: dict[TopicPartition, int] | None = None,
        wait: bool = True,
    ) -> dict[TopicPartition, int]:
        """Apply what is new in `records` to `version` (default: the current one); returns
        the partitions to rewind, with the offset to rewind to. Without `wait`, the last
        chunks may still be in flight when this returns (the consumer's next batch overlaps
        them; `drain` waits for them).

        Records that start past a partition's stored position mean the consumer ran ahead of
        the read model (a flip, a committed offset ahead): rewind there, once. If they start
        past it again, or the reader is `contiguous` (a rebuild reading from the log start),
        the offsets in between do not exist (retention moved the log start, a transaction
        marker, compaction): the gap is counted and reported, and the partition goes on.

        A partition whose end (`highwaters`, from the fetch) lies before its stored position
        is a log that was lost and began again (a broker that kept nothing): its records are
        new events, so they are applied (still deduplicated by event id) from where the new
        log is, and the reset is reported loudly, never skipped as "applied before"."""
        version, stored, epochs = await self._batch_start(version)
        lowered: list[str] = []  # positions a lost log moves back
        by_partition: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = defaultdict(list)
        for record in records:
            by_partition[TopicPartition(record.topic, record.partition)].append(record)
        rewind: dict[TopicPartition, int] = {}
        ops: list[domain.Applied] = []
        # Where each event came from, to dead-letter it should its apply fail.
        sources: dict[str, ConsumerRecord[Any, Any]] = {}
        positions: dict[str, int] = {}
        # Chunks are applied in order, each atomically with its positions. While Redis runs
        # one chunk's script, this process decodes the next (the two use different cores);
        # on one node a second chunk is sent before the first answers, so Redis goes from one
        # to the next without waiting for this process (chunk.lua runs a chunk only after
        # the one sent before it: one that overtook it is sent again).
        depth = 1 if await self.store.cluster_mode() else PIPELINE_DEPTH
        consumed: list[str] = []  # event types, counted once per batch
        now = datetime.now(UTC)
        in_flight = self._in_flight
        flushed = False

        async def flush() -> None:
            nonlocal flushed
            while len(in_flight) >= depth:
                await self._settle()
            # The chunk this one must follow: the last one sent to the same version (a
            # rebuild's chunks, to another, may be in flight beside the consumer's).
            previous = next((c for c in reversed(in_flight) if c.version == version), None)
            self._sent += 1
            chunk = _Chunk(
                version,
                list(ops),
                dict(positions),
                {a.event_id: sources.pop(a.event_id) for a in ops if a.event_id in sources},
                dead_letter,
                frozenset(lowered),
                token=f"{self._id}:{self._sent}",
                after=previous.token if previous else "",
            )
            chunk.task = asyncio.create_task(
                self._apply_chunk(chunk, previous.task if previous else None)
            )
            in_flight.append(chunk)
            ops.clear()
            flushed = True

        for tp, recs in by_partition.items():
            expected = stored.get(f"{tp.topic}:{tp.partition}", 0)
            highwater = (highwaters or {}).get(tp)
            key = f"{tp.topic}:{tp.partition}"
            if highwater is not None and highwater < expected:
                await self.note_reset(version, tp, expected, highwater)
                epochs[key] = epochs.get(key, 0) + 1
                lowered.append(key)
                expected = recs[0].offset
            # Where in the log: the partition and its epoch (a log that began again reuses
            # offsets, so its ops must not be taken for old ones).
            source = f"{key}#{epochs.get(key, 0)}"
            if recs[0].offset > expected:
                if not contiguous and self._rewound.get(tp) != expected:
                    self._rewound[tp] = expected
                    rewind[tp] = expected
                    continue
                await self.note_gap(version, tp, expected, recs[0].offset)
            self._rewound.pop(tp, None)
            for record in recs:
                if record.offset < expected:
                    continue  # applied before (a re-delivery after a crash or a rebalance)
                reason = None
                try:
                    envelope, event = admit(record, now)
                    applied = domain.to_ops(
                        envelope, event, self.store.scoring, source, record.offset
                    )
                except InvalidEvent as exc:
                    reason = exc.reason
                except Exception as exc:  # e.g. a time so far out that its score overflows
                    reason = f"apply_failed: {describe(exc)}"
                if reason is None:
                    ops.append(applied)
                    sources[applied.event_id] = record
                    consumed.append(envelope.type)
                elif dead_letter:  # a rebuild meets poison again; it was dead-lettered live
                    # One bad record never stops the partition: it goes aside with its reason.
                    await self.send_to_dlq(record, reason)
                positions[f"{tp.topic}:{tp.partition}"] = record.offset + 1
                if len(ops) >= APPLY_CHUNK:
                    await flush()
                elif len(ops) % YIELD_EVERY == 0:
                    # Decoding is CPU work with no await: step aside now and then, so the
                    # chunk in flight gets its script onto the wire and its answer taken in.
                    await asyncio.sleep(0)
        if ops or (positions and not flushed):
            await flush()
        count_by_type(EVENTS_CONSUMED, "projection", consumed)
        if wait:
            await self.drain()
        return rewind

    async def drain(self) -> None:
        """Wait until every chunk sent is applied."""
        while self._in_flight:
            await self._settle()

    async def _settle(self) -> None:
        """Wait for the oldest chunk in flight. If it failed, the ones after it did nothing
        (each waits for the one before): all are dropped and the failure raised, so the
        consumer's next batch starts past the stored positions and rewinds there."""
        chunk = self._in_flight[0]
        assert chunk.task is not None
        try:
            await chunk.task
        except BaseException:
            self._in_flight.clear()
            raise
        self._in_flight.popleft()

    async def _batch_start(self, version: int | None) -> tuple[int, dict[str, int], dict[str, int]]:
        """The version (default: the current one), its stored positions as they stand once
        the chunks in flight are applied, and the partitions' log epochs."""
        while self._in_flight and self._in_flight[0].task and self._in_flight[0].task.done():
            await self._settle()
        version, stored, epochs = await retrying(lambda: self.store.batch_start(version))
        for chunk in self._in_flight:
            if chunk.version == version:
                for tp, offset in chunk.positions.items():
                    lowers = tp in chunk.lower
                    stored[tp] = offset if lowers else max(stored.get(tp, 0), offset)
        return version, stored, epochs

    async def _apply_chunk(self, chunk: _Chunk, previous: asyncio.Task[int] | None) -> int:
        """Apply a chunk after the one sent before it (`previous`). Run first (it went on
        another connection), it did nothing: it is run again once that one is applied."""
        applied = await self._apply_once(chunk)
        if applied == OVERTOOK:
            if previous is not None:
                await previous  # if that one failed, so does this one, having done nothing
            chunk.after = ""
            applied = await self._apply_once(chunk)
        self.store.changed.notify()
        return applied

    async def _apply_once(self, chunk: _Chunk) -> int:
        version, ops, positions, lower = chunk.version, chunk.ops, chunk.positions, chunk.lower
        try:
            return int(
                await retrying(
                    lambda: self.apply(version, ops, positions, lower, chunk.after, chunk.token)
                )
            )
        except ResponseError as exc:
            # Not an outage (those are retried): Redis refused one of the events. Apply one by
            # one so the others go in, and set the refused one aside with its reason. (Only
            # the last call lets the chunk sent after this one run.)
            log.error("batch apply failed (%s); applying one by one", describe(exc))
            for op in ops:
                try:
                    await retrying(lambda op=op: self.apply(version, [op], {}))
                except ResponseError as single:
                    source = chunk.sources.get(op.event_id)
                    if chunk.dead_letter and source is not None:
                        await self.send_to_dlq(source, f"apply_failed: {describe(single)}"[:500])
            return int(
                await retrying(lambda: self.apply(version, [], positions, lower, "", chunk.token))
            )

    async def note_gap(self, version: int, tp: TopicPartition, expected: int, found: int) -> None:
        missing = found - expected
        log.warning(
            "%s[%d]: offsets %d..%d do not exist (log start moved, a marker or compaction); "
            "going on from %d",
            tp.topic,
            tp.partition,
            expected,
            found - 1,
            found,
        )
        OFFSETS_SKIPPED.labels(tp.topic).inc(missing)
        gaps = self.store.keyspace(version).gaps
        await retrying(
            lambda: self.store.redis.hincrby(gaps, f"{tp.topic}:{tp.partition}", missing)
        )

    async def note_reset(self, version: int, tp: TopicPartition, position: int, end: int) -> None:
        log.error(
            "%s[%d] ends at %d, before the stored position %d: the log was lost and began "
            "again (a broker that kept nothing?). Applying its records as new; events the old "
            "log held and this projection had not applied are gone with it.",
            tp.topic,
            tp.partition,
            end,
            position,
        )
        LOG_RESETS.labels(tp.topic).inc()
        resets = self.store.keyspace(version).resets
        await retrying(lambda: self.store.redis.hincrby(resets, f"{tp.topic}:{tp.partition}", 1))

    async def send_to_dlq(self, record: ConsumerRecord[Any, Any], reason: str) -> None:
        letter = DeadLetter.of(record)
        await dead_letter(self.dead_letters, "projection", letter, reason, retry=retrying)
        await retrying(lambda: self.store.redis.hincrby(self.store.dlq_key, record.topic, 1))

    async def apply(
        self,
        version: int,
        batch: list[domain.Applied],
        positions: dict[str, int],
        lower: frozenset[str] = frozenset(),
        after: str = "",
        token: str = "",
    ) -> int:
        """Apply one chunk atomically enough to re-run: effects, industry figures, marks.
        Positions only move forward (a stalled replica's late chunk cannot move one back),
        except those in `lower` (a log that began again). On one node, the chunk named
        `after` must have run before this one (`token`), else nothing is done (OVERTOOK)."""
        redis, ks = self.store.redis, self.store.keyspace(version)
        ttl = self.store.settings.dedupe_ttl_s
        if not await self.store.cluster_mode():
            # Each event's place in the log once, its partition by number; the chunk in one
            # flat list (chunk.lua reads it): Lua's JSON decoder made six tables per event of
            # the nested form, half of the script's decode and grouping time.
            sources: dict[str, int] = {}
            chunk: list[Any] = []
            for a in batch:
                source = sources.setdefault(a.source, len(sources) + 1)
                chunk += (a.event_id, a.ts, int(a.awaits_decision), a.settles or "")
                chunk += (source, a.offset, len(a.ops))
                for member, op in a.ops:
                    chunk += (member, len(op), *op)
            args = [ks.prefix, orjson.dumps(chunk), orjson.dumps(positions), ttl]
            args += [orjson.dumps(sorted(lower)), after, token, orjson.dumps(list(sources))]
            args += [self.store.mark_period(), READ_MODEL_FORMAT]
            keys = [ks.pos, ks.stats, f"{ks.prefix}chain{{g}}:{self._id}"]
            return int(await self._chunk_script(keys=keys, args=args))
        # A cluster: each step's calls go to the slots they touch, one member per call.
        fresh = await self._not_yet_applied(ks, batch)
        per_member: dict[str, list[list[Any]]] = {}
        for applied in fresh:
            for m, op in applied.full_ops():
                per_member.setdefault(m, []).append(op)
        if per_member:
            clock = await redis.incr(ks.clock)
            members = list(per_member)
            checks, calls = [], []
            for m in members:
                keys = [ks.member("m", m)]
                payload = orjson.dumps([[m, per_member[m]]])
                calls.append((self._member_script, keys, [ks.prefix, payload, clock, ttl]))
                kinds = orjson.dumps([[m, _kinds(per_member[m])]])
                checks.append((self._member_script, keys, [ks.prefix, kinds, clock, ttl, 1]))
            # All or nothing: one event's members may fall in different calls, so every key
            # of the chunk is checked before any call writes (member.lua's check mode).
            await self._run_scripts(checks)
            rows = [row for result in await self._run_scripts(calls) for row in result]
            results = {
                m: (str(c), str(n), int(d), int(v))
                for m, (c, n, d, v) in zip(members, rows, strict=True)
            }
            moves, recount = domain.industry_moves(results)
            await self._run_scripts(
                [
                    (
                        self._industry_script,
                        ks.industry_keys(name),
                        [orjson.dumps(entries)],
                    )
                    for name, entries in moves.items()
                ]
            )
            # Where a member is counted changes exactly when they join, leave or move: written
            # only by whoever holds the member's current change count (never a stale replica),
            # and then `members{g}` (active members, in member order) follows.
            recounted = list(recount.items())
            written = await self._run_scripts(
                [
                    (
                        self._counted_script,
                        [ks.member("m", m), ks.member("iv", m)],
                        [now, member_version],
                    )
                    for m, (now, member_version) in recounted
                ]
            )
            async with redis.pipeline(transaction=False) as pipe:
                if moves:
                    pipe.sadd(ks.inds, *moves)
                for (m, (now, _)), ok in zip(recounted, written, strict=True):
                    if int(ok) and now:
                        pipe.zadd(ks.members, {m: 0})
                    elif int(ok):
                        pipe.zrem(ks.members, m)
                await pipe.execute()
        events = orjson.dumps(
            [[a.event_id, a.ts, int(a.awaits_decision), a.settles or ""] for a in fresh]
        )
        args = [ks.prefix, events, orjson.dumps(positions), ttl, orjson.dumps(sorted(lower))]
        args += [self.store.mark_period(), READ_MODEL_FORMAT]
        return int(await self._marks_script(keys=[ks.pos, ks.stats], args=args))

    async def _run_scripts(self, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        """Run scripts concurrently, each routed to its own slot's node (a cluster's
        pipelines refuse scripts); results in the order of `calls`. At most
        CLUSTER_CALLS_IN_FLIGHT at once: the cluster client refuses a call past its
        connections per node (MaxConnectionsError, which would be retried for ever)."""
        gate = asyncio.Semaphore(CLUSTER_CALLS_IN_FLIGHT)

        async def call(script: Any, keys: list[str], args: list[Any]) -> Any:
            async with gate:
                return await script(keys=keys, args=args)

        return list(await asyncio.gather(*(call(s, k, a) for s, k, a in calls)))

    async def _not_yet_applied(
        self, ks: Keyspace, batch: list[domain.Applied]
    ) -> list[domain.Applied]:
        """Drop events applied before (a relay re-publish) and repeats inside the batch."""
        if not batch:
            return []
        seen = await self._seen_script(
            keys=[ks.pos],
            args=[
                ks.prefix,
                orjson.dumps([a.event_id for a in batch]),
                self.store.mark_period(),
            ],
        )
        fresh, ids = [], set()
        for applied, already in zip(batch, seen, strict=True):
            if not already and applied.event_id not in ids:
                ids.add(applied.event_id)
                fresh.append(applied)
        return fresh


def _kinds(ops: list[list[Any]]) -> list[list[Any]]:
    """A member's ops reduced to what the type check needs: each kind once, each list by
    name (member.lua reads the kind at 5 and the list name at 6)."""
    seen = {(op[4], op[5] if op[4] in ("l+", "l-") else "") for op in ops}
    return [[0, 0, "", 0, kind, arg] for kind, arg in sorted(seen)]
