"""The local stack's log archive at work (see `shared.archive` for why it exists):

- `follow`: the archiver process `rapport run` supervises. It copies every record of every
  topic (dead letters included) into the archive, committing its group's offsets after.
- `restore`: produces the archived records again, in offset order, into the same partitions
  of an empty broker, with the relays held back meanwhile. Offsets come out the same, so the
  read model's positions and the consumers' dedupe marks hold across broker restarts.

Run as `python -m rapport.archive <bootstrap> <redis-url> [namespace]` (the archiver).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from shared.archive import ArchivedRecord, LogArchive
from shared.kafka import ensure_topics
from shared.topics import TopicNames

RESTORE_METADATA_WAIT_S = 30.0
log = logging.getLogger("rapport.archive")

ARCHIVER_GROUP = "rapport-log-archive"


def _archive(redis: Redis, namespace: str) -> LogArchive:
    return LogArchive(redis, f"{namespace}rapport")


async def follow(bootstrap: str, redis_url: str, namespace: str = "") -> None:
    """Copy every record into the archive, for as long as the process runs."""
    topics = TopicNames(namespace)
    redis = Redis.from_url(redis_url)
    archive = _archive(redis, namespace)
    consumer = AIOKafkaConsumer(
        *topics.partitions(),
        bootstrap_servers=bootstrap,
        group_id=f"{namespace}{ARCHIVER_GROUP}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            records = [
                ArchivedRecord(
                    r.topic, r.partition, r.offset, r.key, r.value or b"", tuple(r.headers or ())
                )
                for recs in batch.values()
                for r in recs
            ]
            if records:
                await archive.keep(records)
                await consumer.commit()
    finally:
        await consumer.stop()
        await redis.aclose()


async def log_layout(
    redis_url: str, namespace: str = "", per_topic: int | None = None
) -> dict[str, int]:
    """The partition count of every topic of an archived log: the counts it was written
    with, else (a new log) `TopicNames.partitions(per_topic)`, recorded for the restarts to
    come. A log archived before counts were recorded was written with `PARTITIONS`."""
    wanted = TopicNames(namespace).partitions(per_topic)
    redis = Redis.from_url(redis_url)
    try:
        archive = _archive(redis, namespace)
        recorded = await archive.layout()
        if not recorded and await archive.partitions():
            recorded = TopicNames(namespace).partitions()
        layout = {topic: recorded.get(topic, count) for topic, count in wanted.items()}
        await archive.keep_layout(layout)
        return layout
    finally:
        await redis.aclose()


async def restore(
    bootstrap: str, redis_url: str, namespace: str = "", layout: dict[str, int] | None = None
) -> int:
    """Produce the archive into an empty broker (topics created first, with the counts the
    log was written with: `layout`, else read by `log_layout`); returns how many records.
    Relays hold back while it runs. A partition whose offsets would come out different (the
    archive missed a record) is re-archived at its new offsets and reported."""
    layout = layout or await log_layout(redis_url, namespace)
    await ensure_topics(bootstrap, layout)
    redis = Redis.from_url(redis_url)
    archive = _archive(redis, namespace)
    await redis.set(archive.restoring_key, "1")
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=2**20 + 2**16, linger_ms=5
    )
    await producer.start()
    restored = 0
    try:
        await _until_known(producer, layout)
        for key in await archive.partitions():
            records = await archive.records(key)
            sent = [
                await producer.send(
                    r.topic, r.value, key=r.key, partition=r.partition, headers=list(r.headers)
                )
                for r in records
            ]
            metas = await asyncio.gather(*sent)
            moved = [
                ArchivedRecord(r.topic, r.partition, m.offset, r.key, r.value, r.headers)
                for r, m in zip(records, metas, strict=True)
                if m.offset != r.offset
            ]
            if moved:
                log.warning(
                    "%s: %d record(s) came back at other offsets; re-archived", key, len(moved)
                )
                await redis.delete(key)
                await archive.keep(
                    ArchivedRecord(r.topic, r.partition, m.offset, r.key, r.value, r.headers)
                    for r, m in zip(records, metas, strict=True)
                )
            restored += len(records)
    finally:
        await producer.stop()
        await redis.delete(archive.restoring_key)
        await redis.aclose()
    return restored


async def _until_known(producer: AIOKafkaProducer, counts: dict[str, int]) -> None:
    """Until the producer's metadata holds every partition of the topics just created: a
    fresh broker may report a topic before all its partitions, and a send to one it has not
    reported fails (aiokafka: "Unrecognized partition")."""
    deadline = asyncio.get_running_loop().time() + RESTORE_METADATA_WAIT_S
    for topic, count in counts.items():
        while len(await producer.partitions_for(topic)) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"the broker does not report {count} partitions of {topic}")
            await asyncio.sleep(0.05)  # a backoff between metadata requests
            await producer.client.force_metadata_update()


def main() -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    bootstrap, redis_url, *rest = sys.argv[1:]
    asyncio.run(follow(bootstrap, redis_url, rest[0] if rest else ""))


if __name__ == "__main__":
    main()
