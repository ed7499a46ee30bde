"""Dead-letter topics: what they hold, and putting records back (`rapport dlq ...`).

Every consumer sends what it cannot process to `<topic>.dlq` with its reason and origin in
headers (`shared.consumer.dead_letter`). Replaying publishes a DLQ record again to the topic
it came from, with its key and type, after the cause was fixed (a consumer upgraded, a bug
fixed). Consumers dedupe by event id, so a replayed event is applied exactly once even when a
replay is repeated; the replay group's committed offset makes `replay` resume after what it
already replayed. The tool talks to the broker directly: whoever runs it needs broker access.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata

import shared.kafka  # noqa: F401  (its clients never have the broker create a topic)
from shared.topics import ALL_TOPICS, TopicNames, dlq

REPLAY_GROUP = "rapport-dlq-replay"


@dataclass(frozen=True)
class DeadRecord:
    offset: int
    key: str | None
    type: str
    reason: str
    consumer: str
    source: str  # topic[partition]@offset
    event_id: str
    size: int

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes]) -> DeadRecord:
        headers = {k: v.decode(errors="replace") for k, v in record.headers or ()}
        return cls(
            offset=record.offset,
            key=record.key.decode(errors="replace") if record.key else None,
            type=headers.get("type", "?"),
            reason=headers.get("dlq_reason", "?"),
            consumer=headers.get("dlq_consumer", "?"),
            source=f"{headers.get('source_topic', '?')}[{headers.get('source_partition', '?')}]"
            f"@{headers.get('source_offset', '?')}",
            event_id=headers.get("event_id", ""),
            size=len(record.value or b""),
        )


@dataclass(frozen=True)
class DeadLetterCount:
    topic: str
    records: int
    replayed: int  # how many of them `replay` put back already


class DeadLetters:
    def __init__(self, bootstrap_servers: str, namespace: str = "") -> None:
        self.bootstrap = bootstrap_servers
        self.topics = TopicNames(namespace)

    def dlq_of(self, topic: str) -> str:
        """`rapport.members` (or its DLQ's name) -> this namespace's DLQ topic."""
        logical = topic.removesuffix(".dlq")
        if logical not in ALL_TOPICS:
            raise ValueError(f"unknown topic {topic!r}; one of {', '.join(ALL_TOPICS)}")
        return dlq(self.topics(logical))

    def _consumer(self, group: str | None = None) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    async def counts(self) -> list[DeadLetterCount]:
        consumer = self._consumer(REPLAY_GROUP)
        await consumer.start()
        try:
            out = []
            for topic in ALL_TOPICS:
                name = self.dlq_of(topic)
                parts = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
                if not parts:
                    out.append(DeadLetterCount(topic, 0, 0))
                    continue
                starts = await consumer.beginning_offsets(parts)
                ends = await consumer.end_offsets(parts)
                committed = [await consumer.committed(tp) or 0 for tp in parts]
                out.append(
                    DeadLetterCount(
                        topic,
                        sum(ends[tp] - starts[tp] for tp in parts),
                        sum(max(c - starts[tp], 0) for tp, c in zip(parts, committed, strict=True)),
                    )
                )
            return out
        finally:
            await consumer.stop()

    async def read(
        self, topic: str, limit: int = 100, group: str | None = None
    ) -> tuple[AIOKafkaConsumer, list[ConsumerRecord[bytes, bytes]]]:
        """Up to `limit` records of the topic's DLQ: from the start (no group) or after what
        `group` committed. The consumer is returned started, for the caller to commit/stop."""
        name = self.dlq_of(topic)
        consumer = self._consumer(group)
        await consumer.start()
        parts = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
        if not parts:
            return consumer, []
        consumer.assign(parts)
        for tp in parts:
            committed = await consumer.committed(tp) if group else None
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        ends = await consumer.end_offsets(parts)
        records: list[ConsumerRecord[bytes, bytes]] = []
        while len(records) < limit and await behind(consumer, parts, ends):
            batch = await consumer.getmany(timeout_ms=500, max_records=limit - len(records))
            for recs in batch.values():
                records.extend(recs)
        return consumer, records[:limit]

    async def show(self, topic: str, limit: int = 100) -> list[DeadRecord]:
        consumer, records = await self.read(topic, limit)
        await consumer.stop()
        return [DeadRecord.of(r) for r in records]

    async def replay(
        self, topic: str, limit: int = 10_000, reason_prefix: str | None = None
    ) -> tuple[int, int]:
        """Publish the DLQ records not replayed yet back to their source topic; returns
        (replayed, skipped by `reason_prefix`). Commits past them once they are on the topic."""
        consumer, records = await self.read(topic, limit, group=REPLAY_GROUP)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        replayed = skipped = 0
        try:
            for record in records:
                dead = DeadRecord.of(record)
                if reason_prefix and not dead.reason.startswith(reason_prefix):
                    skipped += 1
                    continue
                source = _header(record.headers, "source_topic") or self.topics(
                    topic.removesuffix(".dlq")
                )
                headers = [("type", dead.type.encode())] if dead.type != "?" else []
                await (await producer.send(source, record.value, key=record.key, headers=headers))
                replayed += 1
            done: dict[TopicPartition, OffsetAndMetadata] = {}
            for record in records:
                tp = TopicPartition(record.topic, record.partition)
                done[tp] = OffsetAndMetadata(record.offset + 1, "")
            if done:
                await consumer.commit(done)
        finally:
            await producer.stop()
            await consumer.stop()
        return replayed, skipped


async def behind(
    consumer: AIOKafkaConsumer, parts: list[TopicPartition], ends: dict[TopicPartition, int]
) -> bool:
    for tp in parts:
        if await consumer.position(tp) < ends[tp]:
            return True
    return False


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode(errors="replace")
    return None
