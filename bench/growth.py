"""Cost growth: the graph queries' Redis-path latency and the read models' memory as the graph
grows (members at a fixed mean degree), drawn as a plot for docs/scaling.md.

Each size is loaded into a fresh keyspace of the bench's own Redis (the projection's key
layout, as bench.queries loads it), timed on the same query kinds as the query rows, and
dropped before the next size, so every point is measured on the same server alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench import queries as bq
from services.projection import queries
from services.projection.domain import Filters

MEAN_DEGREE = 40  # the small bench's shape: members grow, each one's network does not
QUERIES = 200
# What the plot draws, in the order of its legend.
KINDS = ("degree", "mutual", "badges, 100 ids", "network degree=2", "paths", "suggestions, cold")


@dataclass
class GrowthPoint:
    members: int
    edges: int
    max_degree: int
    used_bytes: int  # Redis memory of the graph's read models (with connection times)
    p99_ms: dict[str, float] = field(default_factory=dict)
    p50_ms: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def bytes_per_directed_edge(self) -> float:
        return self.used_bytes / max(1, 2 * self.edges)


async def measure_size(redis_url: str, members: int) -> GrowthPoint:
    started = time.monotonic()
    g = bq.power_law_graph(members, MEAN_DEGREE, min(bq.CONNECTION_CAP, members // 10))
    q = bq.query_list(g, QUERIES)
    namespace = f"g{time.time_ns()}."
    redis = Redis.from_url(redis_url, decode_responses=True, socket_timeout=300)
    try:
        before = int((await redis.info("memory"))["used_memory"])
        model = await bq.load_redis(redis, g, namespace)
        await bq.load_connection_times(redis, model, g)
        used = int((await redis.info("memory"))["used_memory"]) - before
        ks = model.keyspace(1)

        async def clear_list(x: str) -> None:
            await redis.delete(ks.member("sg", x))

        async def suggest(x: str) -> object:
            return await queries.suggestions.suggestions(model, x, 20, ks)

        timed: dict[str, tuple[Callable[..., Awaitable[Any]], list[Any]]] = {
            "degree": (lambda x, y: queries.degree.degree(model, ks, x, y), q.degree),
            "mutual": (
                lambda x, y: queries.degree.mutual_page(model, ks, x, y, None, 50),
                q.mutual,
            ),
            "badges, 100 ids": (lambda x, ids: queries.degree.badges(model, ks, x, ids), q.badges),
            "network degree=2": (
                lambda x, i: queries.network.network(
                    model, ks, x, 2, Filters(industry=i), None, 20
                ),
                q.network,
            ),
            "paths": (lambda x, y: queries.paths.paths(model, ks, x, y, 3), q.paths),
            "suggestions, cold": (suggest, q.suggestions),
        }
        before = {"suggestions, cold": clear_list}  # each list cleared, outside the time
        point = GrowthPoint(members, g.edges, max(len(a) for a in g.adjacency), used)
        for kind, (fn, args) in timed.items():
            await fn(*_args(args[0]))  # warm-up: the scripts loaded, the connection open
            p50, p99 = await bq.time_async(fn, args, before.get(kind))
            point.p50_ms[kind], point.p99_ms[kind] = p50, p99
    finally:
        # Drop this size's keys, so the next size is measured on the server alone.
        async for batch in _batches(redis.scan_iter(match=f"{namespace}*", count=5000)):
            await redis.unlink(*batch)
        await redis.aclose()
    point.seconds = time.monotonic() - started
    return point


async def _batches(keys: AsyncIterator[str], size: int = 5000) -> AsyncIterator[list[str]]:
    batch: list[str] = []
    async for key in keys:
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _args(item: object) -> tuple[object, ...]:
    return item if isinstance(item, tuple) else (item,)


def run(redis_url: str, sizes: list[int]) -> list[GrowthPoint]:
    points = []
    for n in sizes:
        points.append(asyncio.run(measure_size(redis_url, n)))
        print(f"growth: {n:,} members measured in {points[-1].seconds:.0f}s", flush=True)
    return points


def plot(points: list[GrowthPoint], out: Path) -> None:
    """p99 per query kind against members (log-log), and memory per directed edge."""
    import matplotlib

    matplotlib.use("Agg")  # no screen: render to a file
    import matplotlib.pyplot as plt

    xs = [p.members for p in points]
    fig, (latency, memory) = plt.subplots(1, 2, figsize=(11, 4.2), width_ratios=[2, 1])
    for kind in KINDS:
        latency.plot(xs, [p.p99_ms[kind] for p in points], marker="o", label=kind)
    _log_log(
        latency, "members (mean degree 40)", "p99, ms (Redis path)", "Query p99 as the graph grows"
    )
    latency.legend(fontsize=8)
    memory.plot(xs, [p.used_bytes / 2**20 for p in points], marker="o", color="tab:gray")
    _log_log(memory, "members", "MiB", "Read models' Redis memory")
    for p in points:
        memory.annotate(
            f"{p.bytes_per_directed_edge:.0f} B/edge",
            (p.members, p.used_bytes / 2**20),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=8,
        )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format=out.suffix.lstrip("."))
    plt.close(fig)


def _log_log(axes: Any, xlabel: str, ylabel: str, title: str) -> None:
    axes.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(True, which="both", alpha=0.3)


def rows(points: list[GrowthPoint]) -> list[str]:
    out = []
    for p in points:
        lat = "; ".join(f"{k} {p.p99_ms[k]:.2f}" for k in KINDS)
        out.append(
            f"| cost growth, {p.members:,} members, {p.edges:,} edges (max degree "
            f"{p.max_degree:,}): p99 ms, Redis path | {lat} | memory {p.used_bytes / 2**20:,.1f} "
            f"MiB, {p.bytes_per_directed_edge:.0f} B per directed edge | - |"
        )
    return out


def markdown(points: list[GrowthPoint], command: str) -> str:
    """The block docs/scaling.md embeds: p99 per query kind and memory at each size."""
    lines = [
        f"Measured by `{command}` on {time.strftime('%Y-%m-%d')} (p99, ms, Redis path):",
        "",
        "| members | edges | max degree | " + " | ".join(KINDS) + " | Redis memory |",
        "|---:|---:|---:|" + "---:|" * len(KINDS) + "---:|",
    ]
    for p in points:
        latencies = " | ".join(f"{p.p99_ms[k]:.2f}" for k in KINDS)
        lines.append(
            f"| {p.members:,} | {p.edges:,} | {p.max_degree:,} | {latencies} | "
            f"{p.used_bytes / 2**20:,.0f} MiB ({p.bytes_per_directed_edge:.0f} B/edge) |"
        )
    return "\n".join(lines)
