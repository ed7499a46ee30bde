"""The projection's subscriber: every topic, in batches, into the Redis read model.

Positions live with the read model (`pos` of the current keyspace version), written by the
same script as the batch's effects and dedupe marks; Kafka's committed offsets are advisory.
A batch that starts past the stored position of its partition (a rebuild flipped, or Kafka's
offset ran ahead) rewinds the consumer to the stored position; records before it are skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from faststream.kafka.annotations import KafkaMessage
from faststream.middlewares import AckPolicy
from redis.exceptions import ResponseError

from services.projection import domain
from services.projection.store import ReadModel
from shared.consumer import raw_records, report_lag, retry_transient
from shared.errors import ApiError
from shared.events import InvalidEvent, decode
from shared.observability import DLQ_RECORDS, EVENTS_CONSUMED
from shared.scoring import ScoringModel
from shared.service import Runtime
from shared.settings import ProjectionSettings
from shared.topics import ALL_TOPICS, dlq

log = logging.getLogger("rapport.projection")

APPLY_CHUNK = 500


class Applier:
    """Turns consumed records into one atomic apply per batch."""

    def __init__(self, runtime: Runtime, model: ReadModel) -> None:
        self.runtime = runtime
        self.model = model

    async def process(
        self,
        records: tuple[ConsumerRecord[Any, Any], ...] | list[ConsumerRecord[Any, Any]],
        version: int | None = None,
        dead_letter: bool = True,
    ) -> dict[TopicPartition, int]:
        """Apply what is new in `records` to `version` (default: the current one); returns
        the partitions to rewind, with the offset to rewind to."""
        if version is None:
            version = await self.retrying(self.model.version)
        stored = await self.retrying(lambda: self.model.positions(version))
        by_partition: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = defaultdict(list)
        for record in records:
            by_partition[TopicPartition(record.topic, record.partition)].append(record)
        rewind: dict[TopicPartition, int] = {}
        ops: list[domain.Applied] = []
        positions: dict[str, int] = {}
        # Chunks are applied in order, each atomically with its positions; while Redis runs
        # one chunk's script, this process decodes the next (the two use different cores).
        in_flight: asyncio.Task[None] | None = None

        async def flush() -> asyncio.Task[None]:
            if in_flight is not None:
                await in_flight
            task = asyncio.create_task(self._apply(version, list(ops), dict(positions)))
            ops.clear()
            await asyncio.sleep(0)  # let the task send its script before we decode on
            return task

        for tp, recs in by_partition.items():
            expected = stored.get(f"{tp.topic}:{tp.partition}", 0)
            if recs[0].offset > expected:
                rewind[tp] = expected
                continue
            for record in recs:
                if record.offset < expected:
                    continue  # applied before (a re-delivery after a crash or a rebalance)
                try:
                    envelope, event = decode(record.value or b"")
                except InvalidEvent as exc:
                    if dead_letter:  # a rebuild meets poison again; it was dead-lettered live
                        await self.dead_letter(record, exc.reason)
                else:
                    ops.append(domain.to_ops(envelope, event, self.model.scoring))
                    EVENTS_CONSUMED.labels("projection", envelope.type).inc()
                positions[f"{tp.topic}:{tp.partition}"] = record.offset + 1
                if len(ops) >= APPLY_CHUNK:
                    in_flight = await flush()
        if ops or (positions and in_flight is None):
            in_flight = await flush()
        if in_flight is not None:
            await in_flight
            async with self.model.changed:
                self.model.changed.notify_all()
        return rewind

    async def _apply(
        self, version: int, ops: list[domain.Applied], positions: dict[str, int]
    ) -> None:
        try:
            await self.retrying(lambda: self.model.apply(version, ops, positions))
        except ResponseError as exc:
            # Ops come from validated events, so this is a bug; keep going without losing any.
            log.error("batch apply failed (%r); applying one by one", exc)
            for op in ops:
                try:
                    await self.retrying(lambda op=op: self.model.apply(version, [op], {}))
                except ResponseError as single:
                    log.error("event %s failed: %r", op.event_id, single)
                    DLQ_RECORDS.labels("projection", "apply", "handler_failed").inc()
            await self.retrying(lambda: self.model.apply(version, [], positions))

    async def dead_letter(self, record: ConsumerRecord[Any, Any], reason: str) -> None:
        headers = {
            "dlq_reason": reason[:500],
            "dlq_consumer": "projection",
            "source_topic": record.topic,
            "source_partition": str(record.partition),
            "source_offset": str(record.offset),
        }
        DLQ_RECORDS.labels("projection", record.topic, reason.split(":", 1)[0]).inc()
        log.warning(
            "projection: %s[%d]@%d -> DLQ: %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
        )
        await self.retrying(
            lambda: self.runtime.broker.publish(
                record.value or b"", topic=dlq(record.topic), key=record.key, headers=headers
            )
        )
        await self.retrying(
            lambda: self.runtime.redis.hincrby(
                self.runtime.settings.key("p", "dlq"), record.topic, 1
            )
        )

    async def retrying(self, call: Any) -> Any:
        return await retry_transient(call, "projection")


class Rebuilder:
    """Blue/green rebuild: replay every topic from offset 0 into a new keyspace version,
    then flip readers to it once it caught up with the topics' ends."""

    def __init__(self, runtime: Runtime, model: ReadModel, applier: Applier) -> None:
        self.runtime = runtime
        self.model = model
        self.applier = applier
        assert isinstance(runtime.settings, ProjectionSettings)
        self.settings = runtime.settings
        self._offsets: AIOKafkaConsumer | None = None
        # One metadata refresh at a time on the shared client: the rebuild loop, status and
        # dashboard polls call end_offsets concurrently, and overlapping refreshes failed
        # with "Unable to get cluster metadata" on Tansu.
        self._offsets_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def _partitions(
        self, consumer: AIOKafkaConsumer, topics: Iterable[str] = ALL_TOPICS
    ) -> list[TopicPartition]:
        return [
            TopicPartition(topic, p)
            for topic in (self.settings.topics(t) for t in topics)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]

    async def end_offsets(self, topics: Iterable[str] = ALL_TOPICS) -> dict[str, int]:
        """`topic:partition` -> end offset of the (namespaced) catalog `topics`."""
        async with self._offsets_lock:
            if self._offsets is None:
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=self.settings.kafka_bootstrap_servers,
                    enable_auto_commit=False,
                )
                await consumer.start()
                self._offsets = consumer
                self.runtime.closers.append(consumer.stop)
            consumer = self._offsets
            await consumer.topics()  # refreshes metadata, so new partitions are seen
            ends = await consumer.end_offsets(self._partitions(consumer, topics))
        return {f"{tp.topic}:{tp.partition}": offset for tp, offset in ends.items()}

    async def start(self) -> dict[str, Any]:
        if self._task is not None and not self._task.done():
            raise ApiError(409, "rebuild_running", "a rebuild is already running")
        version = int(await self.runtime.redis.incr(self.settings.key("p", "versions"))) + 1
        if version <= await self.model.version():
            version = await self.model.version() + 1
            await self.runtime.redis.set(self.settings.key("p", "versions"), version)
        await self.runtime.redis.hset(
            self.model.rebuild_key,
            mapping={
                "state": "running",
                "version": version,
                "applied": 0,
                "total": 0,
                "started_at": datetime.now(UTC).isoformat(),
                "finished_at": "",
            },
        )
        self._task = asyncio.create_task(self.run(version), name="projection-rebuild")
        return {"state": "running", "version": version}

    async def run(self, version: int) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, enable_auto_commit=False
        )
        retrying = self.applier.retrying  # transient broker/Redis errors wait, never fail
        await retrying(consumer.start)
        try:
            await retrying(consumer.topics)
            partitions = self._partitions(consumer)
            consumer.assign(partitions)
            await retrying(lambda: consumer.seek_to_beginning(*partitions))
            while True:
                ends = await retrying(self.end_offsets)
                # Tansu's ListOffsets answers the last batch's first offset + 1; the high
                # watermark of our own fetches is exact, so the larger of the two is the end.
                for tp in partitions:
                    highwater = consumer.highwater(tp)
                    key = f"{tp.topic}:{tp.partition}"
                    if highwater is not None and key in ends:
                        ends[key] = max(ends[key], highwater)
                done = await self.model.positions(version)
                behind = {tp: end - done.get(tp, 0) for tp, end in ends.items()}
                await self.runtime.redis.hset(
                    self.model.rebuild_key,
                    mapping={"applied": sum(done.values()), "total": sum(ends.values())},
                )
                if all(gap <= 0 for gap in behind.values()):
                    break
                batch = await retrying(
                    lambda: consumer.getmany(
                        timeout_ms=200, max_records=self.settings.batch_max_records
                    )
                )
                records = [r for recs in batch.values() for r in recs]
                if records:
                    await self.applier.process(records, version=version, dead_letter=False)
            previous = await self.model.version()
            await self.runtime.redis.set(self.model.current_key, version)
            await self.runtime.redis.hset(
                self.model.rebuild_key,
                mapping={"state": "done", "finished_at": datetime.now(UTC).isoformat()},
            )
            log.info("projection rebuilt into version %d; readers flipped", version)
            await self._drop(previous)
        except Exception as exc:
            log.exception("rebuild failed")
            await self.runtime.redis.hset(
                self.model.rebuild_key, mapping={"state": "failed", "error": repr(exc)[:300]}
            )
            raise
        finally:
            await consumer.stop()

    async def _drop(self, version: int) -> None:
        prefix = self.model.keyspace(version).prefix
        async for keys in _batched(
            self.runtime.redis.scan_iter(match=prefix + "*", count=1000), 1000
        ):
            async with self.runtime.redis.pipeline(transaction=False) as pipe:
                for key in keys:  # one key per command: the keys live in many slots
                    pipe.unlink(key)
                await pipe.execute()


async def _batched(items: Any, size: int) -> Any:
    batch = []
    async for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def register(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, ProjectionSettings)
    model = ReadModel(runtime.redis, settings, ScoringModel())
    applier = Applier(runtime, model)
    runtime.store = model
    runtime.components["rebuilder"] = Rebuilder(runtime, model, applier)

    async def apply_events_to_read_model(msg: KafkaMessage) -> None:
        raw = msg.raw_message
        records = raw if isinstance(raw, tuple) else (raw,)
        rewind = await applier.process(records)
        consumer: Any = msg.consumer
        for tp, offset in rewind.items():
            consumer.seek(tp, offset)
        if not rewind:
            await msg.ack()
        report_lag("projection", consumer, records)

    runtime.broker.subscriber(
        *(settings.topics(t) for t in ALL_TOPICS),
        group_id=f"{settings.namespace}rapport-projection",
        batch=True,
        max_records=settings.batch_max_records,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        decoder=raw_records,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
    )(apply_events_to_read_model)
