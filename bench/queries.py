"""Query latency on a synthetic power-law network: Rapport through HTTP and its Redis data
path directly, beside PostgreSQL (adjacency table, both directions indexed) and NetworkX in
process, all answering the same query list on the same graph."""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import statistics
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import networkx as nx
import numpy as np
import psycopg
from redis.asyncio import Redis

from bench import TOKEN, service_env, writes
from rapport.client import RapportClient
from rapport.supervisor import ServiceProcess
from services.projection import queries
from services.projection.domain import Filters
from services.projection.queries.suggestions import Bound
from services.projection.store import ReadModelStore
from shared.events import grouping_key
from shared.scoring import ScoringModel
from shared.settings import ProjectionSettings

INDUSTRIES = ["Technology", "Finance", "Healthcare", "Media", "Manufacturing", "Consumer Goods"]


@dataclass
class Graph:
    members: list[str]
    adjacency: list[set[int]]
    industry: list[str]

    @property
    def edges(self) -> int:
        return sum(len(a) for a in self.adjacency) // 2


CONNECTION_CAP = 30_000  # no member has more connections (the connection service's cap)


def power_law_graph(n: int, mean_degree: float, max_degree: int, seed: int = 7) -> Graph:
    """Chung-Lu style: expected degree of member i ~ (i + i0)^(-1/(gamma-1)), scaled so the
    mean is `mean_degree` and member 0 reaches about `max_degree`; the head is clipped to the
    30,000-connection cap, as the connection service enforces it."""
    rng = np.random.default_rng(seed)
    gamma = 2.5
    ranks = np.arange(n, dtype=float)
    i0 = 1.0
    weights = (ranks + i0) ** (-1 / (gamma - 1))
    weights *= mean_degree * n / weights.sum()
    # Lift the head so the largest member reaches max_degree (real networks have such hubs).
    weights[0] = max(weights[0], max_degree)
    weights = np.minimum(weights, CONNECTION_CAP)
    probabilities = weights / weights.sum()
    m = int(n * mean_degree / 2)
    adjacency: list[set[int]] = [set() for _ in range(n)]
    added = 0
    while added < m:
        size = int((m - added) * 1.2) + 1000
        a = rng.choice(n, size=size, p=probabilities)
        b = rng.choice(n, size=size, p=probabilities)
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            full = len(adjacency[x]) >= CONNECTION_CAP or len(adjacency[y]) >= CONNECTION_CAP
            if x != y and y not in adjacency[x] and not full:
                adjacency[x].add(y)
                adjacency[y].add(x)
                added += 1
                if added >= m:
                    break
    pyrng = random.Random(seed)
    return Graph(
        [f"member-{i:07d}" for i in range(n)],
        adjacency,
        [pyrng.choice(INDUSTRIES) for _ in range(n)],
    )


@dataclass
class QueryList:
    degree: list[tuple[str, str]] = field(default_factory=list)
    mutual: list[tuple[str, str]] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    network: list[tuple[str, str]] = field(default_factory=list)
    badges: list[tuple[str, list[str]]] = field(default_factory=list)
    paths: list[tuple[str, str]] = field(default_factory=list)
    hubs: list[str] = field(default_factory=list)


def query_list(g: Graph, count: int, seed: int = 11) -> QueryList:
    rng = random.Random(seed)
    n = len(g.members)
    q = QueryList()
    with_friends = [i for i in range(n) if g.adjacency[i]]
    for k in range(count):
        x = rng.choice(with_friends)
        kind = k % 4
        y = x
        if kind == 0:  # 1st
            y = rng.choice(sorted(g.adjacency[x]))
        elif kind in (1, 2):  # 2nd, 3rd: walk
            for _ in range(kind + 1):
                y = rng.choice(sorted(g.adjacency[y]))
        else:  # anyone (mostly 3rd or none on a sparse tail)
            y = rng.randrange(n)
        if y == x:
            y = (x + 1) % n
        q.degree.append((g.members[x], g.members[y]))
        q.mutual.append((g.members[x], g.members[rng.choice(sorted(g.adjacency[x]))]))
    q.suggestions = [g.members[rng.choice(with_friends)] for _ in range(max(count // 4, 20))]
    q.network = [
        (g.members[rng.choice(with_friends)], rng.choice(INDUSTRIES))
        for _ in range(max(count // 8, 10))
    ]
    # A search-results page: 100 ids, a few of them near the viewer, most anywhere.
    for _ in range(max(count // 8, 10)):
        x = rng.choice(with_friends)
        friends = rng.sample(sorted(g.adjacency[x]), min(3, len(g.adjacency[x])))
        near = [*friends, *(rng.choice(sorted(g.adjacency[f])) for f in friends)]
        ids = [*near, *(rng.randrange(n) for _ in range(100 - len(near)))]
        q.badges.append((g.members[x], list(dict.fromkeys(g.members[i] for i in ids))))
    q.paths = [pair for i, pair in enumerate(q.degree) if i % 4 in (1, 2)]
    # The members with the most connections: where the bounded suggestions sample.
    q.hubs = [g.members[i] for i in sorted(range(n), key=lambda i: -len(g.adjacency[i]))[:20]]
    return q


async def load_redis(redis: Redis, g: Graph, namespace: str) -> ReadModelStore:
    """Bulk-load the projection's own key layout (what applying the events would produce)."""
    settings = ProjectionSettings(namespace=namespace)
    model = ReadModelStore(redis, settings, ScoringModel())
    ks = model.keyspace(1)
    for start in range(0, len(g.members), 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + 2000, len(g.members))):
                m = g.members[i]
                profile = {"name": m, "industry": g.industry[i], "active": "1"}
                profile["ki"] = grouping_key(g.industry[i])
                pipe.hset(ks.member("m", m), mapping=profile)
                friends = [g.members[j] for j in g.adjacency[i]]
                for chunk in range(0, len(friends), 5000):
                    pipe.sadd(ks.member("c", m), *friends[chunk : chunk + 5000])
            pipe.zadd(ks.members, dict.fromkeys(g.members[start : start + 2000], 0))
            await pipe.execute()
    return model


async def load_connection_times(redis: Redis, model: ReadModelStore, g: Graph) -> None:
    """When each connection was made (`ca`, what "most recent" samples by), in whole seconds
    as the projection stores them, the same on both sides; loaded apart so the memory row can show the graph with and without it."""
    ks = model.keyspace(1)
    for start in range(0, len(g.members), 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + 2000, len(g.members))):
                m = g.members[i]
                since = {
                    g.members[j]: 1_600_000_000
                    + zlib.crc32(f"{min(i, j)}-{max(i, j)}".encode()) % 10**8
                    for j in g.adjacency[i]
                }
                items = list(since.items())
                for chunk in range(0, len(items), 5000):
                    pipe.hset(ks.member("ca", m), mapping=dict(items[chunk : chunk + 5000]))
            await pipe.execute()


def load_postgres(dsn: str, g: Graph, table: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE UNLOGGED TABLE {table} (a text NOT NULL, b text NOT NULL)")
        with conn.cursor().copy(f"COPY {table} (a, b) FROM STDIN") as copy:
            for i, friends in enumerate(g.adjacency):
                a = g.members[i]
                for j in friends:
                    copy.write_row((a, g.members[j]))
        conn.execute(f"DROP TABLE IF EXISTS {table}_members")
        conn.execute(f"CREATE UNLOGGED TABLE {table}_members (id text PRIMARY KEY, industry text)")
        with conn.cursor().copy(f"COPY {table}_members (id, industry) FROM STDIN") as copy:
            for m, industry in zip(g.members, g.industry, strict=True):
                copy.write_row((m, industry))
        conn.execute(f"CREATE INDEX ON {table} (a, b)")
        conn.execute(f"CREATE INDEX ON {table} (b, a)")
        conn.execute(f"ANALYZE {table}")


class PostgresPeer:
    def __init__(self, dsn: str, table: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.t = table

    def degree(self, x: str, y: str) -> int | None:
        c, t = self.conn, self.t
        if c.execute(f"SELECT 1 FROM {t} WHERE a = %s AND b = %s", (x, y)).fetchone():
            return 1
        mutual = c.execute(
            f"SELECT count(*) FROM {t} e1 JOIN {t} e2 ON e1.b = e2.a WHERE e1.a = %s AND e2.b = %s",
            (x, y),
        ).fetchone()
        if mutual and mutual[0]:
            return 2
        third = c.execute(
            f"SELECT 1 FROM {t} e1 JOIN {t} e2 ON e1.b = e2.a "
            f"WHERE e1.a = %s AND e2.b IN (SELECT b FROM {t} WHERE a = %s) LIMIT 1",
            (x, y),
        ).fetchone()
        return 3 if third else None

    def mutual(self, x: str, y: str, limit: int = 50) -> tuple[int, list[str]]:
        """What the mutual endpoint answers: how many connections x and y share, and the
        first `limit` of them in member order, in one query."""
        rows = self.conn.execute(
            f"SELECT count(*) OVER (), e1.b FROM {self.t} e1 JOIN {self.t} e2 ON e1.b = e2.b "
            f"WHERE e1.a = %s AND e2.a = %s ORDER BY e1.b LIMIT %s",
            (x, y, limit),
        ).fetchall()
        return (int(rows[0][0]) if rows else 0), [r[1] for r in rows]

    def network(self, x: str, industry: str) -> list[str]:
        t = self.t
        rows = self.conn.execute(
            f"SELECT DISTINCT e2.b FROM {t} e1 JOIN {t} e2 ON e1.b = e2.a "
            f"JOIN {t}_members m ON m.id = e2.b "
            f"WHERE e1.a = %s AND m.industry = %s AND e2.b <> %s "
            f"AND NOT EXISTS (SELECT 1 FROM {t} f WHERE f.a = %s AND f.b = e2.b) "
            f"ORDER BY e2.b LIMIT 20",
            (x, industry, x, x),
        ).fetchall()
        return [r[0] for r in rows]

    def suggestions(self, x: str) -> list[tuple[str, int]]:
        t = self.t
        rows = self.conn.execute(
            f"SELECT e2.b, count(*) AS n FROM {t} e1 JOIN {t} e2 ON e1.b = e2.a "
            f"WHERE e1.a = %s AND e2.b <> %s "
            f"AND NOT EXISTS (SELECT 1 FROM {t} f WHERE f.a = %s AND f.b = e2.b) "
            f"GROUP BY e2.b ORDER BY n DESC, e2.b LIMIT 20",
            (x, x, x),
        ).fetchall()
        return [(r[0], int(r[1])) for r in rows]

    def badges(self, x: str, ids: list[str]) -> list[int | None]:
        """The same page of badges as one query."""
        t = self.t
        rows = self.conn.execute(
            f"WITH f AS (SELECT b FROM {t} WHERE a = %(x)s), "
            f"s AS (SELECT DISTINCT e.b FROM {t} e JOIN f ON e.a = f.b WHERE e.b <> %(x)s) "
            f"SELECT i.id, CASE WHEN i.id = %(x)s THEN 0 "
            f"WHEN i.id IN (SELECT b FROM f) THEN 1 WHEN i.id IN (SELECT b FROM s) THEN 2 "
            f"WHEN EXISTS (SELECT 1 FROM {t} e WHERE e.b = i.id AND e.a IN (SELECT b FROM s)) "
            f"THEN 3 END FROM unnest(%(ids)s::text[]) WITH ORDINALITY AS i(id, n) ORDER BY i.n",
            {"x": x, "ids": ids},
        ).fetchall()
        return [r[1] for r in rows]


class NetworkXPeer:
    def __init__(self, g: Graph) -> None:
        self.industry = dict(zip(g.members, g.industry, strict=True))
        self.g = nx.Graph()
        self.g.add_nodes_from(g.members)
        self.g.add_edges_from(
            (g.members[i], g.members[j]) for i, fs in enumerate(g.adjacency) for j in fs if i < j
        )

    def degree(self, x: str, y: str) -> int | None:
        if self.g.has_edge(x, y):
            return 1
        nx_, ny = set(self.g[x]), set(self.g[y])
        if nx_ & ny:
            return 2
        near, far = (nx_, ny) if len(nx_) <= len(ny) else (ny, nx_)
        return 3 if any(not far.isdisjoint(self.g[f]) for f in near) else None

    def mutual(self, x: str, y: str, limit: int = 50) -> tuple[int, list[str]]:
        common = set(self.g[x]) & set(self.g[y])
        return len(common), sorted(common)[:limit]

    def badges(self, x: str, ids: list[str]) -> list[int | None]:
        return [0 if y == x else self.degree(x, y) for y in ids]

    def network(self, x: str, industry: str) -> list[str]:
        first = set(self.g[x])
        second = {z for f in first for z in self.g[f]} - first - {x}
        return sorted(z for z in second if self.industry[z] == industry)[:20]

    def suggestions(self, x: str) -> list[tuple[str, int]]:
        first = set(self.g[x])
        counts: Counter[str] = Counter()
        for f in first:
            counts.update(iter(self.g[f]))  # keys: an AtlasView would count as a mapping
        for drop in (*first, x):
            counts.pop(drop, None)
        return counts.most_common(20)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


# A p99 of a 200-query list is its second-slowest call: every peer repeats whole passes of
# its list until it has this many samples, unless a pass has taken this long (the slow
# peers of the full size: their single pass is already minutes).
MIN_SAMPLES = 1000
REPEAT_BUDGET_S = 5.0


def passes(args: list[Any], repeat: bool = True) -> Iterator[Any]:
    """The items of whole passes over `args`: one pass, then (with `repeat`) more while
    samples are few and time is short."""
    started, taken = time.perf_counter(), 0
    while True:
        yield from args
        taken += len(args)
        if not repeat or taken >= MIN_SAMPLES or time.perf_counter() - started >= REPEAT_BUDGET_S:
            return


def time_sync(fn: Callable[..., Any], args: list[Any]) -> tuple[float, float]:
    samples = []
    for a in passes(args):
        started = time.perf_counter()
        fn(*a) if isinstance(a, tuple) else fn(a)
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


# Seconds of wrk per HTTP row: the query list, repeated, one request at a time.
WRK_READ_S = 3


def wrk_reads(url: str, reads: list[tuple[str, str]]) -> tuple[float, float]:
    """p50 and p99 (ms) of GETs of `reads` (member, path), each as its member, over one
    connection: the service's latency as a compiled client sees it. (The Python client's
    own URL building, HTTP parsing and model validation would count otherwise.)"""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listed:
        listed.writelines(f"{member} {path}\n" for member, path in reads)
    try:
        run = writes.wrk(url, writes.READS, WRK_READ_S, 1, WRK_PATHS=listed.name)
    finally:
        Path(listed.name).unlink()
    refused = {status: n for status, n in run.statuses.items() if status != 200}
    if refused or run.errors:
        raise RuntimeError(f"reads answered {refused} ({run.errors} socket errors)")
    return run.p50_ms, run.p99_ms


async def time_async(
    fn: Callable[..., Awaitable[Any]],
    args: list[Any],
    before: Callable[..., Awaitable[Any]] | None = None,
    repeat: bool = True,
) -> tuple[float, float]:
    """p50 and p99 of `fn` over passes of `args` (one unless `repeat`), one call at a time;
    `before` (untimed) prepares each."""
    samples = []
    for a in passes(args, repeat):
        if before is not None:
            await (before(*a) if isinstance(a, tuple) else before(a))
        started = time.perf_counter()
        await (fn(*a) if isinstance(a, tuple) else fn(a))
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


@dataclass
class QueryResults:
    members: int
    edges: int
    max_degree: int
    rows: dict[str, dict[str, tuple[float, float]]]
    redis_bytes: int
    checks: int
    recall_at_10: float | None  # the hubs' lists from the background refresh vs the exact
    recall_hubs_request: float | None  # the same as a request that found none computes them
    recall_cold: float  # the same for members of the cold suggestion queries
    times_bytes: int  # the read models with each connection's time (`ca`) too
    cache_bytes: int  # the viewer-network caches the run built (apart from the read models)


async def suggestion_recall(
    model: ReadModelStore,
    ks: Any,
    members: list[str],
    bound: queries.suggestions.Bound,
    above_sample: bool = True,
) -> float | None:
    """Recall@10 of the people-you-may-know lists computed within `bound` against the exact
    lists, of those `members` with more connections than the sample (or any, unless
    `above_sample`); None when none is left."""
    sample = model.settings.suggestions_sample
    recalls = []
    for x in members:
        if above_sample and await model.redis.scard(ks.member("c", x)) <= sample:
            continue
        bounded = await queries.suggestions.compute(model, ks, x, 10, bound)
        exact = await queries.suggestions.compute(model, ks, x, 10, Bound.EXACT)
        ids = {i["member_id"] for i in exact}
        recalls.append(len(ids & {i["member_id"] for i in bounded}) / max(1, len(ids)))
    return statistics.mean(recalls) if recalls else None


async def run_queries(
    g: Graph, q: QueryList, redis_url: str, bootstrap: str, pg_dsn: str, logs: Path
) -> QueryResults:
    namespace = f"q{time.time_ns()}."
    # Generous timeout: the exact suggestion lists of the largest networks (recall) take long.
    redis = Redis.from_url(redis_url, decode_responses=True, socket_timeout=300)
    before = int((await redis.info("memory"))["used_memory"])
    model = await load_redis(redis, g, namespace)
    redis_bytes = int((await redis.info("memory"))["used_memory"]) - before
    await load_connection_times(redis, model, g)
    times_bytes = int((await redis.info("memory"))["used_memory"]) - before
    ks = model.keyspace(1)

    table = f"bench_edges_{namespace.strip('.')}"
    load_postgres(pg_dsn, g, table)
    pg = PostgresPeer(pg_dsn, table)
    nxp = NetworkXPeer(g)
    # The graph, its query list and NetworkX's copy are millions of objects that live to the
    # end: out of the collector's sight, so that its full passes over them do not land in
    # whichever peer's query happens to be running (the system measured holds none of them).
    gc.collect()
    gc.freeze()

    # Same answers from every peer on the degree list (the bench checks it measures truth).
    checks = 0
    for x, y in q.degree[:50]:
        ours = (await queries.degree.degree(model, ks, x, y)).degree
        assert ours == pg.degree(x, y) == nxp.degree(x, y), (x, y)
        checks += 1
    for x, y in q.mutual[:20]:
        total, page, _ = await queries.degree.mutual_page(model, ks, x, y, None, 50)
        assert (total, page) == pg.mutual(x, y) == nxp.mutual(x, y), (x, y)
        checks += 1
    for x, ids in q.badges[:5]:
        ours_b = await queries.degree.badges(model, ks, x, ids)
        assert ours_b == pg.badges(x, ids) == nxp.badges(x, ids), x
        checks += 1
    for x, y in q.paths[:20]:
        found = await queries.paths.paths(model, ks, x, y, 3)
        length = nxp.degree(x, y)
        assert all(len(p.members) - 1 == length for p in found), (x, y)
        assert all(nxp.g.has_edge(u, v) for p in found for u, v in itertools.pairwise(p.members))
        assert bool(found) == (length is not None), (x, y)
        checks += 1
    for x, industry in q.network[:10]:
        page = await queries.network.network(model, ks, x, 2, Filters(industry=industry), None, 20)
        assert (
            [i["member_id"] for i in page["items"]]
            == pg.network(x, industry)
            == nxp.network(x, industry)
        )
        checks += 1

    token = TOKEN
    # The background refresh would build every viewer's network while the loops time the
    # request paths; the warm rows build them explicitly instead. (Its first run is at the
    # service's start: the viewers the checks above marked active are forgotten.)
    await redis.delete(ks.active_viewers)
    # wrk repeats the query list: the per-member read quota (a scraping guard) stays out of it.
    env = service_env(
        bootstrap,
        redis_url,
        namespace,
        RAPPORT_PROJECTION_SUGGESTIONS_REFRESH_S="86400",
        RAPPORT_PROJECTION_READ_QUOTA_PER_MINUTE=str(10**9),
    )
    from rapport.localstack import free_port

    proc = ServiceProcess("projection", free_port(), env, logs)
    proc.start()
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    try:
        async with RapportClient({"projection": proc.url}, token, timeout=30) as api:
            for _ in range(200):
                if await api.ready("projection"):
                    break
                await asyncio.sleep(0.1)  # waiting for the service process to come up

            # Over HTTP with wrk (one connection), each request as its member.
            def http(reads: list[tuple[str, str]]) -> tuple[float, float]:
                return wrk_reads(proc.url, reads)

            degree_reads = [(x, f"/members/{x}/degree/{y}") for x, y in q.degree]
            mutual_reads = [(x, f"/members/{x}/mutual/{y}?limit=50") for x, y in q.mutual]
            suggest_reads = [(x, f"/members/{x}/suggestions?limit=20") for x in q.suggestions]
            badge_reads = [(x, f"/members/{x}/degrees?ids={','.join(ids)}") for x, ids in q.badges]
            network_reads = [
                (x, f"/members/{x}/network?degree=2&limit=20&industry={quote(industry)}")
                for x, industry in q.network
            ]
            path_reads = [(x, f"/members/{x}/paths/{y}?limit=3") for x, y in q.paths]

            async def http_suggest(x: str) -> Any:
                return await api.suggestions(x)

            async def clear_cache(x: str) -> None:
                await redis.delete(ks.member("sg", x))

            async def direct_suggest(x: str) -> Any:
                return await queries.suggestions.suggestions(model, x, 20, ks)

            # Warm-up: connections, scripts, and the service's first seconds (its consumer
            # joins its group and reads the topics).
            http(degree_reads + mutual_reads)
            rows["degree"] = {
                "http": http(degree_reads),
                "redis": await time_async(
                    lambda x, y: queries.degree.degree(model, ks, x, y), q.degree
                ),
                "postgres": time_sync(pg.degree, q.degree),
                "networkx": time_sync(nxp.degree, q.degree),
            }
            rows["mutual"] = {
                "http": http(mutual_reads),
                "redis": await time_async(
                    lambda x, y: queries.degree.mutual_page(model, ks, x, y, None, 50), q.mutual
                ),
                "postgres": time_sync(pg.mutual, q.mutual),
                "networkx": time_sync(nxp.mutual, q.mutual),
            }
            rows["suggestions (cold)"] = {
                # The typed Python client, in turn; each list cleared first, outside the time.
                "http client": await time_async(http_suggest, q.suggestions, clear_cache),
                "redis": await time_async(direct_suggest, q.suggestions, clear_cache),
                "postgres": time_sync(pg.suggestions, q.suggestions),
                "networkx": time_sync(nxp.suggestions, q.suggestions),
            }
            rows["suggestions (precomputed)"] = {
                "http": http(suggest_reads),
                "redis": await time_async(direct_suggest, q.suggestions),
            }
            pg_badges, pg_network = time_sync(pg.badges, q.badges), time_sync(pg.network, q.network)

            async def badges_and_search(badges_label: str, search_label: str) -> None:
                rows[f"badges, 100 ids, {badges_label}"] = {
                    "http": http(badge_reads),
                    "redis": await time_async(
                        lambda x, ids: queries.degree.badges(model, ks, x, ids), q.badges
                    ),
                    "postgres": pg_badges,
                }
                rows[f"network degree=2 & industry, {search_label}"] = {
                    "http": http(network_reads),
                    "redis": await time_async(
                        lambda x, i: queries.network.network(
                            model, ks, x, 2, Filters(industry=i), None, 20
                        ),
                        q.network,
                    ),
                    "postgres": pg_network,
                }

            await badges_and_search("cold (meet in the middle)", "cold (member scan)")
            viewers = sorted({x for x, _ in q.badges} | {x for x, _ in q.network})
            rows["viewer network build (background, in slices)"] = {
                # Once each: a second build of a network still valid is no build.
                "redis": await time_async(lambda x: model.warm(ks, x), viewers, repeat=False),
            }
            await badges_and_search("warm (cached network)", "warm (cached network)")
            rows["paths (degree 2 and 3)"] = {
                "http": http(path_reads),
                "redis": await time_async(
                    lambda x, y: queries.paths.paths(model, ks, x, y, 3), q.paths
                ),
            }
            recall = await suggestion_recall(model, ks, q.hubs, Bound.BACKGROUND)
            recall_request = await suggestion_recall(model, ks, q.hubs, Bound.REQUEST)
            cold = q.suggestions[:40]
            recall_cold = await suggestion_recall(model, ks, cold, Bound.REQUEST, False) or 0.0
            stats = await redis.hgetall(ks.viewer_cache_stats)
            cache_bytes = int(stats.get("bytes", 0))
    finally:
        if proc.child:
            proc.child.stop()
        pg.conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_members")
        pg.conn.close()
        await redis.aclose()
    return QueryResults(
        len(g.members),
        g.edges,
        max(len(a) for a in g.adjacency),
        rows,
        redis_bytes,
        checks,
        recall,
        recall_request,
        recall_cold,
        times_bytes,
        cache_bytes,
    )
