"""The projection's subscriber: every topic, in batches, into the read models.

Positions live with the read model, written by the same script as a chunk's effects and
dedupe marks; Kafka's committed offsets are advisory. When the applier asks to rewind a
partition (a rebuild flipped, or Kafka's offset ran ahead), the consumer seeks there and the
batch is not acked.
"""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from faststream.kafka import KafkaBroker

from services.projection.apply import BatchApplier
from shared.consumer import (
    BatchMessage,
    OffsetCommits,
    batch_subscriber,
    records_of,
    report_lag,
)
from shared.settings import ProjectionSettings
from shared.topics import ALL_TOPICS

# What makes a batch large for the projection's fetch pacing (shared.kafka.FetchPacing). It
# reads every topic, so one member's few actions make bursts of about five events (register
# two, invite, accept: the invitation's and the connection's events): at the services' 4, two
# such bursts in a row put it on the busy hold, and an idle stack's `?after=` read then waited
# 30-40 ms for the projection instead of 8 (bench, idle freshness, three partitions a topic).
# Under write load it gets 20-30 records per 10 ms hold, and goes busy as before.
BUSY_BATCH_RECORDS = 16


def subscribe(broker: KafkaBroker, applier: BatchApplier, settings: ProjectionSettings) -> None:
    commits = OffsetCommits()
    pacing = settings.fetch_pacing(busy_records=BUSY_BATCH_RECORDS)

    async def apply_events_to_read_model(msg: BatchMessage) -> None:
        records = records_of(msg)
        consumer: Any = msg.consumer
        # Each partition's end as this fetch saw it (exact), to tell a lost log from a
        # re-delivery.
        highwaters = {}
        for topic, partition in {(r.topic, r.partition) for r in records}:
            tp = TopicPartition(topic, partition)
            if (end := consumer.highwater(tp)) is not None:
                highwaters[tp] = end
        # The batch's last chunks may still be in Redis when this returns: the next batch's
        # fetch and decode overlap them (the applier keeps them in order).
        rewind = await applier.process(records, highwaters=highwaters, wait=False)
        for tp, offset in rewind.items():
            consumer.seek(tp, offset)
        # A commit is a broker round trip between two batches, and the positions that count
        # are in Redis: commit at most once a second (a restart re-reads at most that much,
        # which the stored positions skip).
        if not rewind and commits.due():
            await commits.commit(msg)
        if pacing is not None:
            pacing.after_batch(consumer, len(records))
        report_lag("projection", consumer, records)

    batch_subscriber(
        broker,
        [settings.topics(t) for t in ALL_TOPICS],
        group_id=f"{settings.namespace}rapport-projection",
        max_records=settings.batch_max_records,
        **settings.consumer_options(),
    )(apply_events_to_read_model)
