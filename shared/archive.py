"""The log's durable copy on the local stack (`RAPPORT_LOG_ARCHIVE=1`, set by `rapport run`).

The embedded broker keeps its log in memory only. So the local stack keeps a copy of every
record in its own Redis (AOF on disk): one hash per partition, offset -> record. Written
twice over: by each outbox relay for what it publishes, before it removes the entries from its
outbox (so none of our own events can be lost between the broker's ack and the copy), and by
the archiver process (`rapport.archive`) for everything on the topics (external producers,
dead letters). Both writes are idempotent (the offset is the field). When the broker starts
empty (`make run` again, or after it crashed), the records are produced again in offset order
into the same partitions, so offsets, stored positions and dedupe marks all still hold; while
that runs the relays hold back (`restoring`), so no new event takes an old offset.

Production runs a replicated Kafka and leaves this off.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis


@dataclass(frozen=True)
class ArchivedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "k": base64.b64encode(self.key).decode() if self.key is not None else None,
                "v": base64.b64encode(self.value).decode(),
                "h": [[k, base64.b64encode(v).decode()] for k, v in self.headers],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, topic: str, partition: int, offset: int, raw: str) -> ArchivedRecord:
        data = json.loads(raw)
        return cls(
            topic,
            partition,
            offset,
            base64.b64decode(data["k"]) if data["k"] is not None else None,
            base64.b64decode(data["v"]),
            tuple((k, base64.b64decode(v)) for k, v in data["h"]),
        )


class LogArchive:
    def __init__(self, redis: Redis, prefix: str = "rapport") -> None:
        self.redis = redis
        self.prefix = f"{prefix}:log-archive"

    @property
    def restoring_key(self) -> str:
        return f"{self.prefix}:restoring"

    @property
    def layout_key(self) -> str:
        return f"{self.prefix}:layout"

    async def keep_layout(self, partitions: dict[str, int]) -> None:
        """Record each topic's partition count, once: a key's partition is its hash modulo
        that count, so a log is restored with the counts it was written with (else a key's
        later events would land in another partition than its earlier ones)."""
        if partitions:
            async with self.redis.pipeline(transaction=False) as pipe:
                for topic, count in partitions.items():
                    pipe.hsetnx(self.layout_key, topic, count)
                await pipe.execute()

    async def layout(self) -> dict[str, int]:
        """The recorded partition counts ({} before any were recorded)."""
        raw: dict[Any, Any] = await self.redis.hgetall(self.layout_key)
        return {_text(k): int(v) for k, v in raw.items()}

    def partition_key(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:{{{topic}}}:{partition}"

    def parse_partition_key(self, key: str) -> tuple[str, int]:
        rest = key.removeprefix(f"{self.prefix}:{{")
        topic, _, partition = rest.rpartition("}:")
        return topic, int(partition)

    async def keep(self, records: Iterable[ArchivedRecord]) -> int:
        """Copy records (idempotent: a record is its partition's offset)."""
        by_key: dict[str, dict[Any, Any]] = {}
        for r in records:
            by_key.setdefault(self.partition_key(r.topic, r.partition), {})[str(r.offset)] = (
                r.to_json()
            )
        if by_key:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, fields in by_key.items():
                    pipe.hset(key, mapping=fields)
                await pipe.execute()
        return sum(len(f) for f in by_key.values())

    async def restoring(self) -> bool:
        return bool(await self.redis.exists(self.restoring_key))

    async def partitions(self) -> list[str]:
        keys = [_text(k) async for k in self.redis.scan_iter(match=f"{self.prefix}:{{*")]
        return sorted(keys)

    async def records(self, key: str) -> list[ArchivedRecord]:
        topic, partition = self.parse_partition_key(key)
        raw: dict[Any, Any] = await self.redis.hgetall(key)
        return [
            ArchivedRecord.from_json(topic, partition, int(offset), _text(value))
            for offset, value in sorted(raw.items(), key=lambda kv: int(kv[0]))
        ]

    async def size(self) -> int:
        total = 0
        for key in await self.partitions():
            total += int(await self.redis.hlen(key))
        return total


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
