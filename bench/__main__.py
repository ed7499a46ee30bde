"""`make bench`: benchmarks side by side with their peers, printed as one markdown table.

So far it measures the write path's plumbing: the outbox relay (Redis stream -> Kafka,
acks=all) against a bare aiokafka producer sending the same records, on the embedded stack.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer

from bench import projection
from shared import events as ev
from shared.events import Envelope
from shared.kafka import ensure_topics, make_broker
from shared.localstack import embedded_infra
from shared.outbox import AggregateWrite, Outbox, OutboxRelay
from shared.redis import connect
from shared.topics import TopicNames

SIZES = {"small": 20_000, "full": 200_000}
PROJECTION_SIZES = {"small": 50_000, "full": 1_000_000}


async def outbox_relay(bootstrap: str, redis_url: str, n: int) -> tuple[float, float]:
    """Seconds for the relay to publish n committed events, and for bare aiokafka to send n."""
    topics = TopicNames(f"bench{time.time_ns()}.")
    await ensure_topics(bootstrap, topics.partitions())
    redis = connect(redis_url)
    outbox = Outbox(redis, topics("outbox"))
    envelopes = [
        Envelope.wrap(ev.FollowStarted(follower=f"m{i % 1000}", followee=f"x{i}"), producer="b")
        for i in range(n)
    ]
    for start in range(0, n, 100):
        chunk = envelopes[start : start + 100]
        await outbox.commit([AggregateWrite(topics(f"agg{start}"), 0, start)], chunk, topics=topics)
    broker = make_broker(bootstrap, "bench")
    await broker.start()
    relay = OutboxRelay(redis, broker, topics("outbox"), "bench", batch_size=2000)
    started = time.perf_counter()
    while await relay.relay_once():
        pass
    relay_s = time.perf_counter() - started
    await broker.stop()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    payloads = [(e.key.encode(), e.to_bytes()) for e in envelopes]
    started = time.perf_counter()
    futures = [await producer.send(topics("raw"), v, key=k) for k, v in payloads]
    await asyncio.gather(*futures)
    raw_s = time.perf_counter() - started
    await producer.stop()
    await redis.aclose()
    return relay_s, raw_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    n = SIZES[parser.parse_args().size]
    size = parser.parse_args().size
    with tempfile.TemporaryDirectory() as tmp, embedded_infra(Path(tmp), use_env=False) as infra:
        relay_s, raw_s = asyncio.run(outbox_relay(infra.kafka_bootstrap, infra.redis_url, n))
        proj = projection.run(infra.kafka_bootstrap, infra.redis_url, PROJECTION_SIZES[size])
    rate = proj.steady_events / proj.steady_s
    with_start = proj.events / proj.projection_s
    bare = proj.events / proj.bare_s
    sadd = f"{proj.sadd_per_s:,.0f}" if proj.sadd_per_s else "n/a (no redis-benchmark)"
    rows = [
        "| benchmark | Rapport | peer | ratio |",
        "|---|---|---|---|",
        f"| outbox relay, {n:,} events (events/s) | {n / relay_s:,.0f} "
        f"| bare aiokafka send: {n / raw_s:,.0f} | {raw_s / relay_s:.2f} |",
        f"| projection apply, {proj.events:,} events, steady state (events/s) | {rate:,.0f} "
        f"| bare aiokafka consume+json: {bare:,.0f} | {rate / bare:.2f} |",
        f"| projection apply incl. process start and group join (events/s) | {with_start:,.0f} "
        f"| - | - |",
        f"| redis-benchmark pipelined SADD (ops/s) | - | {sadd} | - |",
        f"| Redis used_memory after projection | {proj.redis_used_bytes / 2**20:,.1f} MiB | - | - |",  # noqa: E501
    ]
    header = (
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    )
    table = "\n".join([header, "", *rows])
    print(table)
    out = Path(__file__).parent / "results" / "latest.md"
    out.write_text(table + "\n")


if __name__ == "__main__":
    main()
