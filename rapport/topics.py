"""`python -m rapport.topics`: create Rapport's topics (idempotent).

`RAPPORT_TOPIC_REPLICATION_FACTOR` (default 1, a single broker) sets on how many brokers each
topic is kept: 3 on a production cluster, where the log is the system's truth."""

from __future__ import annotations

import asyncio
import os

from shared.kafka import ensure_topics, wait_for_broker
from shared.topics import TopicNames


async def main() -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    await wait_for_broker(bootstrap, timeout_s=120)
    created = await ensure_topics(
        bootstrap,
        TopicNames(os.environ.get("RAPPORT_NAMESPACE", "")).partitions(),
        replication_factor=int(os.environ.get("RAPPORT_TOPIC_REPLICATION_FACTOR", "1")),
    )
    print("created:", ", ".join(created) or "nothing (all present)")


if __name__ == "__main__":
    asyncio.run(main())
