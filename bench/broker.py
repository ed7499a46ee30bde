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

import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared.kafka import ensure_topics

FETCHES = 50
FILLS = (100, 2_000, 10_000)
GIVE_UP_S = 120  # a broker that stopped answering fetches ends the measurement


async def end_fetch_cpu_ms(
    bootstrap: str, broker_cpu_s: Callable[[], float], partitions: Sequence[TopicPartition]
) -> float:
    """The broker's CPU (ms) per fetch of each partition's last record, `FETCHES` times."""
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
        deadline = time.monotonic() + GIVE_UP_S
        while fetched < FETCHES * len(tps):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the broker answered {fetched} fetches of {tps} in {GIVE_UP_S} s"
                )
            for tp in tps:
                consumer.seek(tp, ends[tp] - 1)
            got = await consumer.getmany(*tps, timeout_ms=1000)
            fetched += sum(1 for records in got.values() if records)
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
    finally:
        await producer.stop()
    return costs
