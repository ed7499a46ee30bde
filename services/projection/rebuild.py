"""Blue/green rebuild: replay every topic from offset 0 into a new keyspace version, then
flip readers to it once it caught up with the topics' ends. Also the topics' end offsets,
which the rebuild, the status and the dashboard read."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine, Iterable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.projection.apply import BatchApplier, retrying
from services.projection.store import READ_MODEL_FORMAT, ReadModelStore
from shared import scripts
from shared.observability import REBUILD_BEHIND, REBUILD_RUNNING, describe
from shared.service import cancel_and_wait
from shared.topics import ALL_TOPICS

log = logging.getLogger("rapport.projection")

# A rebuild renews its lock every batch; a replica that died frees it after this long.
LOCK_LEASE_MS = 30_000
START_TIMEOUT_S = 1.5
# Longer than any query takes (its Redis calls time out after a second or so).
DROP_GRACE_S = 5.0


class RebuildRunning(Exception):
    """A rebuild is already running (in this process or another replica)."""


class RebuildLost(Exception):
    """Another rebuild took the lock over (this one stalled past its lease)."""


class TopicEnds:
    """End offsets of the (namespaced) catalog topics, through one long-lived client."""

    def __init__(self, bootstrap_servers: str, namespace_topic: Any) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = namespace_topic
        self._client: AIOKafkaConsumer | None = None
        # One metadata refresh at a time on the shared client: the rebuild loop, status and
        # dashboard polls call this concurrently, and overlapping refreshes failed with
        # "Unable to get cluster metadata" on Tansu.
        self._lock = asyncio.Lock()
        # The last answer per topic list, for status views while the broker is down.
        self._last: dict[tuple[str, ...], tuple[dict[str, int], float]] = {}

    def partitions(
        self, consumer: AIOKafkaConsumer, topics: Iterable[str] = ALL_TOPICS
    ) -> list[TopicPartition]:
        return [
            TopicPartition(topic, p)
            for topic in (self.topic(t) for t in topics)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]

    async def within(
        self, deadline_s: float, topics: Iterable[str] = ALL_TOPICS
    ) -> tuple[dict[str, int], float | None]:
        """The end offsets, or when the broker does not answer within `deadline_s` the last
        ones read (empty if none), with the wall time they were read at (None: never)."""
        wanted = tuple(topics)
        last = self._last.get(wanted)
        if self._lock.locked() and last is not None:
            return dict(last[0]), last[1]  # a read is in flight already: do not queue another
        try:
            # Shielded: a late answer still refreshes the cache, and the shared client is
            # never cancelled in the middle of a request.
            ends = await asyncio.wait_for(asyncio.shield(self(wanted)), deadline_s)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning(
                "topic end offsets unavailable (%s); answering the last known", describe(exc)
            )
            return (dict(last[0]), last[1]) if last else ({}, None)
        return ends, self._last[wanted][1]

    async def __call__(self, topics: Iterable[str] = ALL_TOPICS) -> dict[str, int]:
        """`topic:partition` -> end offset of the catalog `topics`."""
        wanted = tuple(topics)
        async with self._lock:
            if self._client is None:
                client = AIOKafkaConsumer(
                    bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False
                )
                await client.start()
                self._client = client
            await self._client.topics()  # refreshes metadata, so new partitions are seen
            ends = await self._client.end_offsets(self.partitions(self._client, wanted))
        found = {f"{tp.topic}:{tp.partition}": offset for tp, offset in ends.items()}
        self._last[wanted] = (found, time.time())
        return found

    async def close(self) -> None:
        if self._client is not None:
            await self._client.stop()


class Rebuilder:
    def __init__(self, store: ReadModelStore, applier: BatchApplier, ends: TopicEnds) -> None:
        self.store = store
        self.applier = applier
        self.ends = ends
        self.settings = store.settings
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._lease = scripts.register(store.redis, "shared", "lease_renew")
        self._release = scripts.register(store.redis, "shared", "lease_release")
        self._flip = store.script("flip")
        self._owner = ""

    async def _hold(self) -> bool:
        """Take or renew the rebuild lock (a lease, so a crashed holder frees it)."""
        lock = self.store.rebuild_lock_key
        return bool(await self._lease(keys=[lock], args=[self._owner, LOCK_LEASE_MS]))

    async def start(self) -> dict[str, Any]:
        if self._task is not None and not self._task.done():
            raise RebuildRunning()
        self._owner = uuid.uuid4().hex
        try:
            # A request: answer within the request budget even though this client's is long.
            async with asyncio.timeout(START_TIMEOUT_S):
                return await self._start()
        except RebuildRunning:
            raise
        except BaseException:
            # The lock may have been taken before the failure (a lease call that reached a
            # stalled Redis runs when it answers again): free it once Redis answers, or no
            # rebuild could start until the lease lapses.
            self._release_later(self._owner)
            raise

    def _release_later(self, owner: str) -> None:
        async def release() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + LOCK_LEASE_MS / 1000
            while loop.time() < deadline:
                try:
                    await self._release(keys=[self.store.rebuild_lock_key], args=[owner])
                    return
                except Exception:  # Redis still away: try again until the lease lapses
                    await asyncio.sleep(0.5)

        self._in_background(release(), "rebuild-release")

    def _in_background(self, step: Coroutine[Any, Any, None], name: str) -> None:
        """Steps that outlive a request or a rebuild; stopped with the app."""
        task = asyncio.create_task(step, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _start(self) -> dict[str, Any]:
        if not await self._hold():
            raise RebuildRunning()
        redis, versions = self.store.redis, self.settings.key("p", "versions")
        version = int(await redis.incr(versions)) + 1
        if version <= await self.store.version():
            version = await self.store.version() + 1
            await redis.set(versions, version)
        await redis.hset(
            self.store.rebuild_key,
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
        redis = self.store.redis
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            enable_auto_commit=False,
            fetch_max_wait_ms=self.settings.kafka_fetch_max_wait_ms,
        )
        await retrying(consumer.start)
        REBUILD_RUNNING.set(1)
        try:
            await retrying(consumer.topics)
            partitions = self.ends.partitions(consumer)
            consumer.assign(partitions)
            await retrying(lambda: consumer.seek_to_beginning(*partitions))
            while True:
                if not await retrying(self._hold):
                    raise RebuildLost()
                ends = await retrying(self.ends)
                # Tansu's ListOffsets answers the last batch's first offset + 1; the high
                # watermark of our own fetches is exact, so the larger of the two is the end.
                for tp in partitions:
                    highwater = consumer.highwater(tp)
                    key = f"{tp.topic}:{tp.partition}"
                    if highwater is not None and key in ends:
                        ends[key] = max(ends[key], highwater)
                done = await self.store.positions(version)
                # Read past by this consumer counts as done too: offsets at the end that hold
                # no record (a transaction marker) never become a stored position.
                for tp in partitions:
                    key = f"{tp.topic}:{tp.partition}"
                    done[key] = max(done.get(key, 0), await consumer.position(tp))
                behind = {tp: end - done.get(tp, 0) for tp, end in ends.items()}
                REBUILD_BEHIND.set(sum(max(gap, 0) for gap in behind.values()))
                await redis.hset(
                    self.store.rebuild_key,
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
                    await self.applier.process(
                        records, version=version, dead_letter=False, contiguous=True
                    )
            previous = await self.store.version()
            keys = [self.store.current_key, self.store.rebuild_lock_key]
            flipped = await self._flip(keys=keys, args=[version, self._owner])
            if flipped == -1:
                raise RebuildLost()
            if flipped == 0:
                # A newer version is current already: this one is never read; drop it.
                log.warning("rebuild v%d finished behind a newer version; dropped", version)
                await redis.hset(self.store.rebuild_key, mapping={"state": "superseded"})
                await self._drop(version)
                return
            await redis.hset(
                self.store.rebuild_key,
                mapping={"state": "done", "finished_at": datetime.now(UTC).isoformat()},
            )
            log.info("projection rebuilt into version %d; readers flipped", version)
            await self._release(keys=[self.store.rebuild_lock_key], args=[self._owner])
            # A query that read the old version number just before the flip may still be
            # reading it: drop the old keys once such queries are done. The rebuild itself is
            # over: the next one may start meanwhile.
            self._in_background(self._drop_after_grace(previous), "rebuild-drop")
        except RebuildLost:
            log.warning("rebuild v%d lost its lock to another rebuild; abandoned", version)
            await self._drop(version)
        except Exception as exc:
            log.exception("rebuild failed")
            await redis.hset(
                self.store.rebuild_key, mapping={"state": "failed", "error": describe(exc)[:300]}
            )
            raise
        finally:
            REBUILD_RUNNING.set(0)
            REBUILD_BEHIND.set(0)
            await consumer.stop()
            with contextlib.suppress(Exception):  # else the lease frees it
                await self._release(keys=[self.store.rebuild_lock_key], args=[self._owner])

    async def stop(self) -> None:
        """At shutdown: a rebuild in progress ends with the process (its lock lapses, and any
        replica's reaper reports it abandoned)."""
        await cancel_and_wait([t for t in (self._task, *self._background) if t is not None])

    async def _drop_after_grace(self, version: int) -> None:
        await asyncio.sleep(DROP_GRACE_S)
        await self._drop(version)

    async def reap(self) -> None:
        """A rebuild whose process stopped (its lock lapsed) is abandoned and reported, and
        its partial version dropped; start it again. Run periodically by every replica."""
        redis = self.store.redis
        state = await redis.hgetall(self.store.rebuild_key)
        if state.get("state") != "running" or await redis.exists(self.store.rebuild_lock_key):
            return
        if self._task is not None and not self._task.done():
            return  # ours, between two renewals
        version = int(state.get("version", 0))
        log.warning("rebuild v%d was abandoned (its process stopped); dropping it", version)
        await redis.hset(
            self.store.rebuild_key,
            mapping={
                "state": "abandoned",
                "error": "the process running it stopped; start the rebuild again",
                "finished_at": datetime.now(UTC).isoformat(),
            },
        )
        if version and version != await self.store.version():
            await self._drop(version)

    async def upgrade(self) -> bool:
        """The current version written in an older format than this build's (an upgrade
        that changed what keys mean): rebuild it in this one. Readers keep the old version,
        applied to as before, until the new one caught up. Run periodically by every
        replica; True if this one started the rebuild."""
        redis, ks = self.store.redis, await self.store.current()
        recorded = int(await redis.get(ks.format) or 1)
        if recorded >= READ_MODEL_FORMAT or not await redis.hget(ks.stats, "applied"):
            return False  # current, newer (this replica is the one not upgraded), or empty
        if (await redis.hget(self.store.rebuild_key, "state")) in ("running", "failed"):
            return False  # under way, or waiting for an operator
        log.warning(
            "the read models are in format %d, this build writes %d: rebuilding them",
            recorded,
            READ_MODEL_FORMAT,
        )
        try:
            await self.start()
        except RebuildRunning:
            return False
        return True

    async def _drop(self, version: int) -> None:
        redis, prefix = self.store.redis, self.store.keyspace(version).prefix
        batch: list[Any] = []
        async for key in redis.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                await self._unlink(batch)
                batch = []
        await self._unlink(batch)

    async def _unlink(self, keys: list[Any]) -> None:
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for key in keys:  # one key per command: the keys live in many slots
                pipe.unlink(key)
            await pipe.execute()
