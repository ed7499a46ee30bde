"""The scale model's inputs, measured on the whole stack, and the model built from them.

`measure_footprint` runs a scenario through the four services on the embedded stack: it
registers members, then connects pairs (invite, accept), and after each phase reads
- the Redis memory of each store's keys (MEMORY USAGE over every key of its prefix),
- the records each phase added to the log (topic end offsets) and their bytes as produced
  (key, value and headers; the broker's batch framing comes on top).

`model` turns those, and the per-replica throughput the write and projection rows measured
in the same run, into nodes, partitions and replicas for the sizes of `TARGETS`. What is
assumed rather than measured (a node's memory, a broker's disk and ingress, the acceptance
rate) is a named constant below, and docs/scaling.md shows it beside the result.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import defaultdict
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis

from bench import TOKEN, service_env
from rapport.client import RapportClient
from rapport.localstack import free_port
from rapport.supervisor import SERVICES, ServiceProcess, Supervisor
from shared.kafka import ensure_topics
from shared.topics import TopicNames

SCENARIO_MEMBERS = 1_000
SCENARIO_CONNECTIONS = 3_000
CONCURRENCY = 32
# The stores a key belongs to, by the segment after `rapport:` (settings.key's layout).
STORES = {
    "invitation": "invitation",
    "connection": "connection",
    "engagement": "engagement",
    "directory": "member directory (write services)",
    "p": "projection",
}


@dataclass
class Phase:
    """What one phase of the scenario added: Redis bytes per store and kind of key ("store/
    kind"), log records and their bytes."""

    redis_bytes: dict[str, int] = field(default_factory=dict)
    records: int = 0
    record_bytes: int = 0

    @property
    def stores(self) -> dict[str, int]:
        return by_store(self.redis_bytes)


@dataclass
class Footprint:
    """Per member: the registration phase. Per connection: the marginal phase, connections
    between members who already have some (what most of a large network's edges are), so
    the keys each member has once are not counted per connection."""

    members: int
    connections: int
    registered: Phase
    first_connections: Phase
    connected: Phase

    def bytes_per_member(self, store: str) -> float:
        return self.registered.stores.get(store, 0) / self.members

    def bytes_per_connection(self, store: str) -> float:
        """Kept for as long as the connection: everything but the dedupe marks."""
        kept = {k: v for k, v in self.connected.redis_bytes.items() if not _is_mark(k)}
        return by_store(kept).get(store, 0) / self.connections

    def mark_bytes_per_event(self, store: str) -> float:
        """The store's marks (`_is_mark`) per event."""
        marks = {k: v for k, v in self.connected.redis_bytes.items() if _is_mark(k)}
        return by_store(marks).get(store, 0) / max(1, self.connected.records)

    @property
    def stores(self) -> list[str]:
        """The stores that hold anything (sorted)."""
        names = set(self.registered.stores) | set(self.connected.stores)
        return sorted(
            n
            for n in names - {"other"}  # the instance registry's heartbeats
            if self.bytes_per_member(n)
            or self.bytes_per_connection(n)
            or self.mark_bytes_per_event(n)
        )

    def largest_kinds(self, n: int = 8) -> list[tuple[str, float]]:
        """The kinds of key that cost the most per connection, with their bytes."""
        kinds = sorted(self.connected.redis_bytes.items(), key=lambda kv: -kv[1])[:n]
        return [(k, v / self.connections) for k, v in kinds if v > 0]

    @property
    def events_per_member(self) -> float:
        return self.registered.records / self.members

    @property
    def events_per_connection(self) -> float:
        return self.connected.records / self.connections

    @property
    def bytes_per_event(self) -> float:
        phases = (self.registered, self.first_connections, self.connected)
        return sum(p.record_bytes for p in phases) / max(1, sum(p.records for p in phases))


async def redis_bytes(redis: Redis, namespace: str) -> dict[str, int]:
    """MEMORY USAGE summed over every key of the namespace, by store and kind of key
    ("store/kind": the segment naming the store, then the one naming the key's kind)."""
    totals: dict[str, int] = defaultdict(int)
    # rapport:<store>:<kind>:...; the projection's keys are rapport:p:<version>:<kind>:...,
    # a write service's rapport:<store>:{<slot group>}:<kind>:...
    pattern = re.compile(
        rf"^{re.escape(namespace)}rapport:([^:]+):(?:\d+:)?(?:\{{[^}}]*\}}:)?([^:{{]+)"
    )
    keys = [k async for k in redis.scan_iter(match=f"{namespace}rapport:*", count=2000)]
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        async with redis.pipeline(transaction=False) as pipe:
            for key in chunk:
                pipe.memory_usage(key, samples=0)
            sizes = await pipe.execute()
        for key, size in zip(chunk, sizes, strict=True):
            match = pattern.match(key)
            segment, kind = match.groups() if match else ("other", "?")
            totals[f"{STORES.get(segment, segment)}/{kind}"] += int(size or 0)
    return dict(totals)


def _is_mark(kind: str) -> bool:
    """Marks kept RAPPORT_DEDUPE_TTL_S, one per event: consumers' dedupe marks (`seen`) and
    the projection's marks of decided causes (`settled`, what `?after=` waits on)."""
    return kind.endswith(("/seen", "/settled"))


def by_store(kinds: dict[str, int]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for name, size in kinds.items():
        totals[name.split("/", 1)[0]] += size
    return dict(totals)


class LogMeter:
    """Records and bytes the namespace's topics gained since the last reading."""

    def __init__(self, bootstrap: str, topics: TopicNames) -> None:
        self.topics = topics
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
        )
        self.offsets: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        await self.consumer.start()
        await self.consumer.topics()  # the cluster's metadata: every topic's partitions
        parts = [
            TopicPartition(t, p)
            for t in self.topics.all
            for p in sorted(self.consumer.partitions_for_topic(t) or ())
        ]
        self.consumer.assign(parts)
        self.offsets = dict(await self.consumer.beginning_offsets(parts))

    async def added(self) -> tuple[int, int]:
        """(records, bytes) since the last call: everything up to the current end offsets."""
        ends = await self.consumer.end_offsets(list(self.offsets))
        records = sum(ends[tp] - self.offsets[tp] for tp in self.offsets)
        size = 0
        for tp, start in self.offsets.items():
            if ends[tp] <= start:
                continue
            self.consumer.seek(tp, start)
            position = start
            while position < ends[tp]:
                batch = await self.consumer.getmany(tp, timeout_ms=1000, max_records=5000)
                for record in batch.get(tp, []):
                    if record.offset >= ends[tp]:
                        break
                    headers = sum(len(k) + len(v or b"") for k, v in record.headers)
                    size += len(record.key or b"") + len(record.value or b"") + headers
                    position = record.offset + 1
        self.offsets = dict(ends)
        return records, size

    async def stop(self) -> None:
        await self.consumer.stop()


async def _scenario(
    urls: dict[str, str], redis_url: str, bootstrap: str, namespace: str
) -> Footprint:
    topics = TopicNames(namespace)
    meter = LogMeter(bootstrap, topics)
    await meter.start()
    redis = Redis.from_url(redis_url, decode_responses=True)
    gate = asyncio.Semaphore(CONCURRENCY)
    members = [f"s{i:05d}" for i in range(SCENARIO_MEMBERS)]
    try:
        async with RapportClient(urls, TOKEN, timeout=60) as api:
            last = await redis_bytes(redis, namespace)

            async def phase_of(calls: list[Awaitable[None]]) -> Phase:
                """Run one phase's calls; what it added to the log and to Redis."""
                nonlocal last
                await asyncio.gather(*calls)
                phase = Phase()
                await _settled(meter, phase)
                now = await redis_bytes(redis, namespace)
                phase.redis_bytes, last = _minus(now, last), now
                return phase

            async def register(m: str) -> None:
                async with gate:
                    created = await api.register(m, m, "Technology", location="Lisbon")
                    # In the read models before the phase is read.
                    await api.summary(m, after=created.event_id)

            async def connect(a: str, b: str) -> None:
                async with gate:
                    sent = await api.invite(a, b)
                    accepted = await api.accept(b, sent.invitation_id)
                    seen = await api.degree(a, b, after=accepted.event_id, wait_ms=30_000)
                    assert seen.degree == 1, (a, b)

            registered = await phase_of([register(m) for m in members])
            pairs = _pairs(members, 2 * SCENARIO_CONNECTIONS)
            phases = [
                await phase_of([connect(a, b) for a, b in batch])
                for batch in (pairs[:SCENARIO_CONNECTIONS], pairs[SCENARIO_CONNECTIONS:])
            ]
    finally:
        await meter.stop()
        await redis.aclose()
    return Footprint(SCENARIO_MEMBERS, SCENARIO_CONNECTIONS, registered, *phases)


async def _settled(meter: LogMeter, phase: Phase) -> None:
    """The phase's records, once the log stops growing (the services' reactions included)."""
    deadline = time.monotonic() + 30
    records, size = await meter.added()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # a quiet half second: no service has more to publish
        more, more_size = await meter.added()
        if not more:
            break
        records, size = records + more, size + more_size
    phase.records, phase.record_bytes = records, size


def _pairs(members: list[str], n: int) -> list[tuple[str, str]]:
    """n distinct pairs, spread evenly (every member about 2n/len(members) connections)."""
    pairs: list[tuple[str, str]] = []
    step = 1
    while len(pairs) < n:
        for i, a in enumerate(members):
            pairs.append((a, members[(i + step) % len(members)]))
            if len(pairs) == n:
                break
        step += 1
    return pairs


def _minus(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}


def measure_footprint(bootstrap: str, redis_url: str, logs: Path) -> Footprint:
    namespace = f"s{time.time_ns()}."
    asyncio.run(ensure_topics(bootstrap, TopicNames(namespace).partitions()))
    env = service_env(bootstrap, redis_url, namespace, RAPPORT_INVITATION_WEEKLY_LIMIT="1000000")
    procs = [ServiceProcess(n, free_port(), env, logs) for n in SERVICES]
    supervisor = Supervisor(procs)
    try:
        supervisor.start_all(timeout_s=90)
        urls = {p.name: p.url for p in procs}
        return asyncio.run(_scenario(urls, redis_url, bootstrap, namespace))
    finally:
        supervisor.stop()


# --- the model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    members: int
    mean_connections: int
    peak_invitations_per_s: float


# The issue's sizes: 400 connections on average, and the 1B network's 10,000 invitations/s at
# peak scaled down with the members for the smaller ones.
TARGETS = (
    Target("1M members", 1_000_000, 400, 10),
    Target("100M members", 100_000_000, 400, 1_000),
    Target("1B members", 1_000_000_000, 400, 10_000),
)

# Assumed, not measured here (docs/scaling.md names each):
REDIS_NODE_GIB = 64  # memory of one Redis node
REDIS_FILL = 0.6  # of which data may take (fork for AOF rewrite, fragmentation, growth)
REDIS_REPLICAS_PER_PRIMARY = 1
BROKER_DISK_TB = 8  # usable log disk of one broker
BROKER_INGRESS_MB_S = 50  # sustained produce bytes per broker, replication included
REPLICATION_FACTOR = 3
ACCEPTED_SHARE = 0.5  # of invitations, answered with an accept at peak
AVERAGE_SHARE = 0.5  # the day's average event rate, as a share of the peak
DEDUPE_TTL_S = 30 * 24 * 3600  # RAPPORT_DEDUPE_TTL_S's default: how long a mark is kept
UTILISATION = 0.7  # a replica runs at this share of its measured peak (the HPA target)
MIN_PARTITIONS = 12


@dataclass(frozen=True)
class Throughput:
    """Per replica, measured by the same bench run (one process of each service)."""

    register_per_s: float
    invite_per_s: float
    accept_per_s: float
    projection_events_per_s: float
    engage_per_s: float
    engage_on_cluster_per_s: float
    # The connection service's consumer: accepted invitations answered (a connection or a
    # rejection) per second, working alone through a backlog.
    connection_answers_per_s: float


@dataclass
class Plan:
    target: Target
    write_redis_gib: float
    projection_redis_gib: float
    write_primaries: int
    projection_primaries: int
    invitation_replicas: int
    connection_replicas: int
    projection_replicas: int
    partitions: int
    log_tib: float
    peak_events_per_s: float
    peak_ingress_mb_s: float
    brokers: int


WRITE_STORES = ("invitation", "connection", "engagement", "member directory (write services)")


def plan(target: Target, f: Footprint, t: Throughput) -> Plan:
    connections = target.members * target.mean_connections / 2
    gib = 2**30
    invites = target.peak_invitations_per_s
    accepts = invites * ACCEPTED_SHARE
    # Events at peak: each invitation's own, and each accepted one's (its connection's) share.
    per_invitation = f.events_per_connection / 2
    events = invites * per_invitation + accepts * per_invitation
    # Dedupe marks live RAPPORT_DEDUPE_TTL_S: as many as the events of that window.
    marked_events = events * AVERAGE_SHARE * DEDUPE_TTL_S

    def memory(stores: Iterable[str]) -> float:
        return sum(
            target.members * f.bytes_per_member(s)
            + connections * f.bytes_per_connection(s)
            + marked_events * f.mark_bytes_per_event(s)
            for s in stores
        )

    write_bytes = memory(WRITE_STORES)
    projection_bytes = memory(["projection"])
    per_node = REDIS_NODE_GIB * REDIS_FILL * gib
    invitation_replicas = math.ceil(
        (invites / t.invite_per_s + accepts / t.accept_per_s) / UTILISATION
    )
    # The connection service answers every accepted invitation (its consumer skips the
    # other invitation events after decoding them).
    connection_replicas = math.ceil(accepts / t.connection_answers_per_s / UTILISATION)
    projection_replicas = math.ceil(events / t.projection_events_per_s / UTILISATION)
    consumers = max(invitation_replicas, connection_replicas, projection_replicas, 1)
    # Partitions cap a consumer group's parallelism and cannot shrink: twice the need.
    partitions = max(MIN_PARTITIONS, 2 ** math.ceil(math.log2(2 * consumers)))
    total_events = target.members * f.events_per_member + connections * f.events_per_connection
    log_bytes = total_events * f.bytes_per_event * REPLICATION_FACTOR
    ingress = events * f.bytes_per_event * REPLICATION_FACTOR / 1e6
    brokers = max(
        REPLICATION_FACTOR,
        math.ceil(log_bytes / (BROKER_DISK_TB * 1e12)),
        math.ceil(ingress / BROKER_INGRESS_MB_S),
    )
    return Plan(
        target,
        write_bytes / gib,
        projection_bytes / gib,
        max(1, math.ceil(write_bytes / per_node)),
        max(1, math.ceil(projection_bytes / per_node)),
        max(2, invitation_replicas),
        max(2, connection_replicas),
        max(2, projection_replicas),
        partitions,
        log_bytes / 2**40,
        events,
        ingress,
        brokers,
    )


def footprint_rows(f: Footprint) -> list[str]:
    per_store = "; ".join(
        f"{s} {f.bytes_per_member(s):,.0f} / {f.bytes_per_connection(s):,.0f} (+ marks "
        f"{f.mark_bytes_per_event(s):,.0f} per event)"
        for s in f.stores
    )
    return [
        f"| Redis bytes per member / per connection, by store ({f.members:,} members, then "
        f"{f.connections:,} connections twice through the services; the second time's) "
        f"| {per_store} | - | - |",
        f"| events per action; broker bytes per event | {f.events_per_member:.2f} per "
        f"registration, {f.events_per_connection:.2f} per connection (invite + accept); "
        f"{f.bytes_per_event:,.0f} B per event (key, value, headers) | - | - |",
    ]


def model_markdown(f: Footprint, t: Throughput, command: str) -> str:
    """The block docs/scaling.md embeds: the measured inputs, then the plan per size."""
    plans = [plan(target, f, t) for target in TARGETS]
    lines = [
        f"Measured by `{command}` on {time.strftime('%Y-%m-%d')}:",
        "",
        "| input | measured |",
        "|---|---|",
        f"| register, one connection-service process | {t.register_per_s:,.0f} req/s |",
        f"| invite, one invitation-service process | {t.invite_per_s:,.0f} req/s |",
        f"| accept, one invitation-service process | {t.accept_per_s:,.0f} req/s |",
        f"| projection, one process, one Redis node | {t.projection_events_per_s:,.0f} events/s |",
        f"| connection consumer, one process, accepted invitations answered "
        f"| {t.connection_answers_per_s:,.0f} /s |",
        f"| engage, one engagement-service process, one Redis node | {t.engage_per_s:,.0f} req/s |",
        f"| engage, one engagement-service process, 3-node Redis Cluster "
        f"| {t.engage_on_cluster_per_s:,.0f} req/s |",
        f"| events per registration | {f.events_per_member:.2f} |",
        f"| events per connection (invite + accept) | {f.events_per_connection:.2f} |",
        f"| bytes per event as produced (key, value, headers) | {f.bytes_per_event:,.0f} B |",
    ]
    for s in f.stores:
        lines.append(
            f"| Redis, {s}: per member / per connection / marks per event | "
            f"{f.bytes_per_member(s):,.0f} B / {f.bytes_per_connection(s):,.0f} B / "
            f"{f.mark_bytes_per_event(s):,.0f} B |"
        )
    largest = ", ".join(f"`{kind}` {size:,.0f} B" for kind, size in f.largest_kinds())
    lines += ["", f"Where a connection's bytes go (store/kind of key, per connection): {largest}."]
    lines += [
        "",
        "| | " + " | ".join(p.target.name for p in plans) + " |",
        "|---|" + "---|" * len(plans),
    ]

    def row(name: str, values: Iterable[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    row(
        "connections (edges)",
        (f"{p.target.members * p.target.mean_connections / 2:,.0f}" for p in plans),
    )
    row("invitations/s at peak", (f"{p.target.peak_invitations_per_s:,.0f}" for p in plans))
    row("events/s at peak", (f"{p.peak_events_per_s:,.0f}" for p in plans))
    row("write side Redis data", (f"{p.write_redis_gib:,.1f} GiB" for p in plans))
    row(
        "write side Redis, nodes",
        (
            f"{p.write_primaries} primaries + {p.write_primaries * REDIS_REPLICAS_PER_PRIMARY} replicas"
            for p in plans
        ),
    )
    row("read models' Redis data", (f"{p.projection_redis_gib:,.1f} GiB" for p in plans))
    row(
        "read models' Redis Cluster",
        (
            f"{p.projection_primaries} primaries + {p.projection_primaries * REDIS_REPLICAS_PER_PRIMARY} replicas"
            for p in plans
        ),
    )
    row("invitation service replicas", (str(p.invitation_replicas) for p in plans))
    row("connection service replicas", (str(p.connection_replicas) for p in plans))
    row("projection replicas", (str(p.projection_replicas) for p in plans))
    row("partitions per topic", (str(p.partitions) for p in plans))
    row("log, replicated, kept forever", (f"{p.log_tib:,.2f} TiB" for p in plans))
    row("produce bytes at peak, replicated", (f"{p.peak_ingress_mb_s:,.1f} MB/s" for p in plans))
    row("Kafka brokers", (str(p.brokers) for p in plans))
    return "\n".join(lines)


def update_doc(doc: Path, name: str, block: str) -> None:
    """Replace the generated block `name` of a document (between its markers) with `block`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = doc.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{block}\n{end}{tail}")
