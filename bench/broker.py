"""What one fetch costs the embedded broker, by how many batches the partition holds.

Tansu 0.6.0's memory storage (DynoStore on object_store's InMemory) keeps one object per
produced batch, and each fetch that finds records lists every object of the partition to find
its offset (`DynoStore::fetch`), where a Kafka broker looks the offset up in a segment index.
So on the local stack a fetch's CPU grows with the partition's log, and the broker's share of
a write grows over a long run. These rows put a number on it: fetches at the end of a fresh
partition as it fills with one-record batches, and fetches at the end of the write rows'
invitations partitions after all of them (their accept row ran last, on those logs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared.kafka import ensure_topics

FETCHES = 50
FILLS = (100, 2_000, 10_000)
# Time given to one measurement's fetches. Past some thousands of batches a fetch can take
# seconds of the broker's CPU on a slow host (its allocator's page faults: a third of that
# CPU was the kernel's on one VM), and a row that never ends would lose the whole section.
BUDGET_S = 60


async def end_fetch_cpu_ms(
    bootstrap: str, broker_cpu_s: Callable[[], float], partitions: Sequence[TopicPartition]
) -> float:
    """The broker's CPU (ms) per answered fetch of each partition's last record, `FETCHES`
    times or as many as `BUDGET_S` allows; infinite if none was answered in it."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    await consumer.start()
    try:
        consumer.assign(list(partitions))
        ends = await consumer.end_offsets(list(partitions))
        tps = [tp for tp in partitions if ends[tp] > 0]
        if not tps:
            return 0.0
        before, fetched = broker_cpu_s(), 0
        deadline = time.monotonic() + BUDGET_S
        while fetched < FETCHES * len(tps) and (left := deadline - time.monotonic()) > 0:
            for tp in tps:
                consumer.seek(tp, ends[tp] - 1)
            # Waiting the whole budget left: a seek while a fetch is out would throw its
            # answer away and have the broker list the partition once more.
            got = await consumer.getmany(*tps, timeout_ms=int(left * 1000) + 1)
            fetched += sum(1 for records in got.values() if records)
        if not fetched:
            return math.inf
        return (broker_cpu_s() - before) * 1000 / fetched
    finally:
        await consumer.stop()


async def fetch_cost_by_fill(
    bootstrap: str, broker_cpu_s: Callable[[], float], fills: Sequence[int] = FILLS
) -> list[tuple[int, float]]:
    """(batches the partition holds, broker CPU ms per fetch at its end), as a fresh
    one-partition topic fills with one-record batches (each send waited for)."""
    topic = f"bench.fetchcost.{time.time_ns()}"
    await ensure_topics(bootstrap, {topic: 1})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    tp, held, costs = TopicPartition(topic, 0), 0, []
    try:
        for fill in fills:
            while held < fill:
                await producer.send_and_wait(topic, b"x" * 400, partition=0)
                held += 1
            costs.append((held, await end_fetch_cpu_ms(bootstrap, broker_cpu_s, [tp])))
            if math.isinf(costs[-1][1]):
                break  # a fuller partition answers no sooner
    finally:
        await producer.stop()
    return costs
