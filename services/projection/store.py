"""The projection's Redis read models: where the keys are, which version readers use, and
the small reads every query family shares.

Keys live under a keyspace *version* (`rapport:p:<v>:`), and `rapport:p:current` names the
version readers use, so a rebuild fills a new version and flips readers atomically. Per-member
keys carry the member in a hash tag (`c:{ann}`), so one member's keys share a slot.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from shared import scripts
from shared.domain import RateLimited
from shared.events import PROFILE_FIELDS
from shared.observability import READ_QUOTA_REFUSED, VIEWER_CACHE
from shared.redis import AutoPipeline
from shared.scoring import ScoringModel
from shared.settings import ProjectionSettings

# Members per pipeline when a query reads many members' sets or profiles.
READ_CHUNK = 500
SLICE_ENTRIES = 10_000  # set entries one background Redis call sums at most (a few ms)
SLICE_TTL_MS = 60_000  # a partial sum left by background work that stopped half way


def counts(raw: dict[Any, Any]) -> dict[str, int]:
    """A hash of counts or offsets as Redis answers it, as names and numbers."""
    return {str(k): int(v) for k, v in raw.items()}


def slices(sized: Iterable[Sequence[Any]], entries: int | None = None) -> list[list[str]]:
    """Members (given with the size of their set) in order, cut into runs whose sets hold at
    most `entries` (SLICE_ENTRIES) in all; a larger set makes a run alone."""
    entries = entries or SLICE_ENTRIES
    runs: list[list[str]] = []
    total = 0
    for member, size in sized:
        if not runs or (total + int(size) > entries and runs[-1]):
            runs.append([])
            total = 0
        runs[-1].append(str(member))
        total += int(size)
    return runs


# What a version's keys mean. A build that changes it rebuilds a version written in an older
# one (Rebuilder.upgrade); each version records its own when its first chunk is applied.
# 2: a connection's follows live in `c` alone (steps.lua's follow). 1 (none recorded): each
# follow was a set entry of its own.
READ_MODEL_FORMAT = 2


@dataclass(frozen=True)
class Keyspace:
    """Key names of one version. Hash tags keep one member's keys in one slot (`{m}`), one
    industry's in one slot (`{i:name}`), and the batch bookkeeping in one (`{g}`)."""

    prefix: str

    def member(self, kind: str, m: str) -> str:
        return f"{self.prefix}{kind}:{{{m}}}"

    def industry(self, name: str) -> str:
        """The industry's histogram: degree -> how many members counted there have it."""
        return f"{self.prefix}ih:{{i:{name}}}"

    def industry_before_histogram(self, name: str) -> str:
        """The sorted set (member -> degree) that held an industry's figures before the
        histogram: upgraded by the first script that touches the industry."""
        return f"{self.prefix}iz:{{i:{name}}}"

    def industry_degrees(self, name: str) -> str:
        """member -> the degree this industry counts for them (on a cluster, where the
        industry's step cannot read the member's keys)."""
        return f"{self.prefix}idg:{{i:{name}}}"

    def industry_keys(self, name: str) -> list[str]:
        """The keys of lua/industry.lua, in its order."""
        return [
            self.industry(name),
            self.industry_sum(name),
            self.industry_versions(name),
            self.industry_degrees(name),
            self.industry_before_histogram(name),
        ]

    def industry_sum(self, name: str) -> str:
        return f"{self.prefix}isum:{{i:{name}}}"

    def industry_versions(self, name: str) -> str:
        """member -> the newest change count this industry applied for them."""
        return f"{self.prefix}iver:{{i:{name}}}"

    def marks(self, period: int) -> str:
        """event id -> its applied-mark ('1', or 'w': awaits its decision), for the events
        marked in one period of the dedupe TTL (steps.lua's marks_key)."""
        return f"{self.prefix}seen{{g}}:{period}"

    def settled(self, period: int) -> str:
        """event id -> '1' for the causes decided in one period of the dedupe TTL."""
        return f"{self.prefix}settled{{g}}:{period}"

    @property
    def format(self) -> str:
        """READ_MODEL_FORMAT of the build that began this version."""
        return f"{self.prefix}format{{g}}"

    @property
    def clock(self) -> str:
        return f"{self.prefix}clock{{g}}"

    @property
    def pos(self) -> str:
        return f"{self.prefix}pos{{g}}"

    @property
    def stats(self) -> str:
        return f"{self.prefix}stats{{g}}"

    @property
    def inds(self) -> str:
        return f"{self.prefix}inds{{g}}"

    @property
    def active_viewers(self) -> str:
        return f"{self.prefix}sgactive{{g}}"

    @property
    def members(self) -> str:
        """Active members in member order (score 0), for scans in that order."""
        return f"{self.prefix}members{{g}}"

    @property
    def gaps(self) -> str:
        """Offsets found missing per partition (`topic:partition` -> how many)."""
        return f"{self.prefix}gaps{{g}}"

    @property
    def resets(self) -> str:
        """Times a partition's log was found to have begun again (`topic:partition` -> n)."""
        return f"{self.prefix}resets{{g}}"

    @property
    def viewer_cache_stats(self) -> str:
        return f"{self.prefix}n2stats{{g}}"


# How often a `?after=` wait looks again with no batch applied here: another replica may own
# the event's partition.
AFTER_POLL_S = 0.05


class AppliedBatches:
    """Batches this process applied: a count, and a wake-up for those waiting on the next.
    A waiter names the count it saw before it last looked, so a batch applied while it was
    looking (its Redis round trip) wakes it at once instead of being missed: with a plain
    condition that batch's notice went to nobody and the waiter slept out its poll (50 ms,
    seen in 2-5% of idle `?after=` reads)."""

    def __init__(self) -> None:
        self.count = 0
        self._next = asyncio.Event()

    def notify(self) -> None:
        self.count += 1
        woken, self._next = self._next, asyncio.Event()
        woken.set()

    async def wait_past(self, seen: int, timeout_s: float) -> None:
        """Return once a batch past `seen` was applied, or after `timeout_s`."""
        if self.count != seen:
            return
        try:
            await asyncio.wait_for(self._next.wait(), timeout_s)
        except TimeoutError:
            pass


class ReadModelStore:
    def __init__(self, redis: Redis, settings: ProjectionSettings, scoring: ScoringModel) -> None:
        self.redis = redis
        self.settings = settings
        self.scoring = scoring
        self._cluster: bool | None = None
        # Notified after each applied batch, so `?after=` waits wake up at once.
        self.changed = AppliedBatches()
        self.calls = AutoPipeline(redis)
        self._graph = scripts.library(self.calls, "services.projection", "graph")
        self._node = self.script("node")
        self._visible = self.script("visible")
        self._seen_version = 1  # the current version as batch_start last read it

    def script(self, name: str) -> Any:
        return scripts.register(self.redis, "services.projection", name)

    def through(self, redis: Redis) -> ReadModelStore:
        """The same read models through another client (background work's longer timeout),
        sharing the applied-batch notifications that `?after=` waits on."""
        twin = ReadModelStore(redis, self.settings, self.scoring)
        twin.changed = self.changed
        return twin

    # versions ------------------------------------------------------------------------------
    @property
    def current_key(self) -> str:
        return self.settings.key("p", "current")

    @property
    def rebuild_key(self) -> str:
        return self.settings.key("p", "rebuild")

    @property
    def rebuild_lock_key(self) -> str:
        """One rebuild at a time across replicas; in the current key's slot (hash tag), so
        the flip can check the lock and the version in one script."""
        return "{" + self.current_key + "}:rebuild-lock"

    @property
    def dlq_key(self) -> str:
        return self.settings.key("p", "dlq")

    def keyspace(self, version: int) -> Keyspace:
        return Keyspace(self.settings.key("p", str(version)) + ":")

    async def version(self) -> int:
        return int(await self.redis.get(self.current_key) or 1)

    async def current(self) -> Keyspace:
        return self.keyspace(await self.version())

    async def cluster_mode(self) -> bool:
        """Whether Redis runs as a cluster (then one member per script call)."""
        if self._cluster is None:
            info = await self.redis.info("cluster")
            self._cluster = bool(int(info.get("cluster_enabled", 0)))
        return self._cluster

    async def graph(self, ks: Keyspace, query: str, *args: Any) -> Any:
        """One graph query of lua/graph.lua on the keyspace `ks` (single node)."""
        return await self._graph(keys=[ks.pos], args=[ks.prefix, query, *args])

    async def on_nodes(
        self,
        ks: Keyspace,
        step: str,
        members: Iterable[str],
        others: Iterable[str] = (),
        param: Any = "",
    ) -> list[Any]:
        """Scatter and gather on Redis Cluster: one call of lua/node.lua's `step` per node,
        over the `members` that node holds, with `others` sent once to each; the answers,
        one per node that holds any."""
        cluster = cast(RedisCluster, self.redis)
        await cluster.initialize()  # the slot map (once; at once after that)
        groups: dict[str, list[str]] = {}
        for m in members:
            node = cluster.get_node_from_key(ks.member("c", m))
            groups.setdefault(node.name if node else "", []).append(m)
        sent = list(others)
        return list(
            await asyncio.gather(
                *(
                    self._node(
                        keys=[ks.member("c", held[0])],
                        args=[ks.prefix, step, param, len(held), *held, *sent],
                    )
                    for held in groups.values()
                )
            )
        )

    async def found_on_nodes(
        self, ks: Keyspace, step: str, members: Iterable[str], others: Iterable[str] = ()
    ) -> set[str]:
        """The members every node's `step` answered (a step that answers members)."""
        answers = await self.on_nodes(ks, step, members, others)
        return {str(x) for found in answers for x in found}

    async def mark_active(self, ks: Keyspace, viewer: str) -> None:
        """The viewer asked: the background refresh keeps their network and suggestions
        (on one node graph.lua marks them in the same call as the query)."""
        await self.redis.zadd(ks.active_viewers, {viewer: time.time()})

    async def warm(self, ks: Keyspace, viewer: str) -> bool:
        """Build the viewer's network cache unless it is valid, summing their connections'
        sets in slices, one short call each (a hub's network is millions of entries: one
        call would hold Redis for a second). Whether it built one."""
        started = await self.graph(ks, "warm_start", viewer)
        if not started:
            return False
        clock, sized = started
        union = f"{ks.member('n2b', viewer)}:{secrets.token_hex(6)}"  # one per build
        for run in slices(sized):
            await self.graph(ks, "warm_sum", union, SLICE_TTL_MS, *run)
        budget = self.settings.viewer_cache_bytes
        await self.graph(ks, "warm_keep", viewer, union, clock, budget)
        return True

    def count_viewer_cache(self, hit: bool) -> None:
        VIEWER_CACHE.labels("hit" if hit else "miss").inc()

    # scraping guard -------------------------------------------------------------------------
    @property
    def quota_refused_key(self) -> str:
        return self.settings.key("p", "quota-refused")

    async def spend_read_quota(self, member: str, cost: int, endpoint: str) -> Keyspace:
        """Count `cost` members looked up by `member` this minute (shared by every replica);
        429 with Retry-After past `read_quota_per_minute`. Answers the current keyspace,
        read in the same round trip: the lookup that follows reads there."""
        now = time.time()
        key = self.settings.key("p", "quota", member, str(int(now // 60)))
        used, _, version = await self.calls.execute_all(
            ("INCRBY", key, cost), ("EXPIRE", key, 120), ("GET", self.current_key)
        )
        limit = self.settings.read_quota_per_minute
        if int(used) > limit:
            READ_QUOTA_REFUSED.labels(endpoint).inc()
            await self.redis.hincrby(self.quota_refused_key, endpoint, 1)
            raise RateLimited(f"at most {limit} member lookups per minute", int(60 - now % 60) + 1)
        return self.keyspace(int(version or 1))

    async def quota_refused(self) -> dict[str, int]:
        return counts(await self.redis.hgetall(self.quota_refused_key))

    # positions and read-your-writes --------------------------------------------------------
    async def positions(self, version: int) -> dict[str, int]:
        return counts(await self.redis.hgetall(self.keyspace(version).pos))

    async def batch_start(self, version: int | None) -> tuple[int, dict[str, int], dict[str, int]]:
        """What a batch needs before it applies: the version (the current one, unless given),
        its stored positions, and each partition's log epoch (resets). One round trip while
        the current version is the one seen last: each waits behind the chunk Redis is
        running, and three in a row let the pipeline of chunks run dry."""
        guess = self._seen_version if version is None else version
        ks = self.keyspace(guess)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(ks.pos)
            pipe.hgetall(ks.resets)
            if version is None:
                pipe.get(self.current_key)
            pos, resets, *current = await pipe.execute()
        if current and int(current[0] or 1) != guess:  # a flip since: read the new version
            self._seen_version = int(current[0] or 1)
            return await self.batch_start(self._seen_version)
        return guess, counts(pos), counts(resets)

    def mark_period(self) -> int:
        """The period of the dedupe TTL that marks written now go into."""
        return int(time.time()) // self.settings.dedupe_ttl_s

    async def applied(self, event_ids: Sequence[str]) -> bool:
        """Every event is in the read model, and so is what each awaits (an accepted
        invitation awaits its connection's decision)."""
        ks = await self.current()
        ids = orjson.dumps(list(event_ids))
        return bool(await self._visible(keys=[ks.pos], args=[ks.prefix, ids, self.mark_period()]))

    async def wait_applied(self, event_ids: Sequence[str], wait_ms: int) -> bool:
        """Wait until all of `event_ids` are in the read model (read-your-writes), up to
        `wait_ms`. Several: a client's writes since its last read, which may sit on
        different partitions (each applied on its own).

        Wakes on every batch this process applies; polls too, since another replica's
        consumer may own the event's partition.
        """
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            seen = self.changed.count
            if await self.applied(event_ids):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await self.changed.wait_past(seen, min(remaining, AFTER_POLL_S))

    # shared reads --------------------------------------------------------------------------
    async def profile(self, ks: Keyspace, m: str) -> dict[str, Any]:
        return {str(k): v for k, v in (await self.redis.hgetall(ks.member("m", m))).items()}

    async def profiles(self, ks: Keyspace, members: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Profile fields and `active` of each member, in one pipeline."""
        fields = (*PROFILE_FIELDS, "active")
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in members:
                pipe.hmget(ks.member("m", m), *fields)
            rows = await pipe.execute()
        return {
            m: dict(zip(fields, row, strict=True)) for m, row in zip(members, rows, strict=True)
        }

    async def connections(self, ks: Keyspace, m: str, list_name: str | None = None) -> set[str]:
        key = ks.member("c", m) if list_name is None else f"{ks.member('l', m)}:{list_name}"
        return {str(x) for x in await self.redis.smembers(key)}

    async def sets_of(self, ks: Keyspace, kind: str, members: Iterable[str]) -> Any:
        """Each member's set of `kind` (e.g. `c`, connections), READ_CHUNK members per
        pipeline: an async iterator of (member, set) pairs."""
        ordered = sorted(members)
        for start in range(0, len(ordered), READ_CHUNK):
            chunk = ordered[start : start + READ_CHUNK]
            async with self.redis.pipeline(transaction=False) as pipe:
                for m in chunk:
                    pipe.smembers(ks.member(kind, m))
                for m, found in zip(chunk, await pipe.execute(), strict=True):
                    yield m, found

    async def exclusions(self, ks: Keyspace, m: str) -> set[str]:
        """Blocked either way, and pending invitations either way."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(ks.member("bl", m))
            pipe.smembers(ks.member("blby", m))
            pipe.hvals(ks.member("ir", m))
            pipe.hvals(ks.member("is", m))
            blocked, blocked_by, received, sent = await pipe.execute()
        pending = {v.split("|", 1)[0] for v in (*received, *sent)}
        return {str(x) for x in (*blocked, *blocked_by)} | pending
