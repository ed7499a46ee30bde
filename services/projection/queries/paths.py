"""How you're connected: up to a few shortest paths between two members, the ones along the
most engaged connections first, never through a member who blocked or was blocked by either
end (lua/graph.lua; per-member reads on Redis Cluster)."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

from services.projection.queries.degree import blocked_either, mutual_on_nodes
from services.projection.store import Keyspace, ReadModelStore


@dataclass(frozen=True)
class Path:
    members: list[str]  # from the viewer to the other member
    score: float  # the stored engagement scores of its connections, summed


async def paths(rm: ReadModelStore, ks: Keyspace, a: str, b: str, limit: int) -> list[Path]:
    cap = rm.settings.paths_scan_cap
    if await rm.cluster_mode():
        return await paths_on_nodes(rm, ks, a, b, limit, cap)
    found = await rm.graph(ks, "paths", a, b, limit, cap)
    return [
        Path([str(m) for m in members], float(score)) for members, score in map(json.loads, found)
    ]


async def _score(rm: ReadModelStore, ks: Keyspace, path: list[str]) -> float:
    async with rm.redis.pipeline(transaction=False) as pipe:
        for x, y in itertools.pairwise(path):
            pipe.hget(ks.member("es", x), y)
        total = sum(float(v or 0) for v in await pipe.execute())
    return rounded(total)


def rounded(score: float) -> float:
    """Paths rank by their score to 1e-6, so sums taken in another order tie the same way."""
    return math.floor(score * 1e6 + 0.5) / 1e6


async def paths_on_nodes(
    rm: ReadModelStore, ks: Keyspace, a: str, b: str, limit: int, cap: int
) -> list[Path]:
    """The same answer by scatter and gather (Redis Cluster): the common connections from
    the other side's node; three steps from each node that holds connections of the smaller
    side, with the other side's set sent once per node."""
    if a == b or await blocked_either(rm, ks, a, b):
        return []
    if await rm.redis.sismember(ks.member("c", a), b):
        return [Path([a, b], await _score(rm, ks, [a, b]))]
    avoid: set[str] = set()
    async with rm.redis.pipeline(transaction=False) as pipe:
        for kind in ("bl", "blby"):
            for m in (a, b):
                pipe.smembers(ks.member(kind, m))
        for found in await pipe.execute():
            avoid |= {str(x) for x in found}
    common = await mutual_on_nodes(rm, ks, a, b)
    candidates = [[a, x, b] for x in common if x not in avoid][:cap]
    if candidates:
        scored = [Path(p, await _score(rm, ks, p)) for p in candidates]
    else:
        ca, cb = await rm.connections(ks, a), await rm.connections(ks, b)
        start, end, flip = (a, b, False) if len(ca) <= len(cb) else (b, a, True)
        near, far = (ca, cb) if not flip else (cb, ca)
        steps: list[tuple[str, list[str], list[str]]] = []
        for found in await rm.on_nodes(ks, "pairs", near - avoid, far, cap):
            steps.extend((str(x), list(ys), list(scores)) for x, ys, scores in found)
        steps.sort()
        walks: list[tuple[list[str], float]] = []  # from `start`, with the middle step's score
        for x, ys, scores in steps:
            for y, score in zip(ys, scores, strict=True):
                if y not in avoid and y != start and len(walks) < cap:
                    walks.append(([start, x, y, end], float(score)))
        async with rm.redis.pipeline(transaction=False) as pipe:
            for walk, _ in walks:
                pipe.hget(ks.member("es", start), walk[1])
                pipe.hget(ks.member("es", walk[2]), end)
            ends = await pipe.execute()
        scored = []
        for i, (walk, middle) in enumerate(walks):
            total = float(ends[2 * i] or 0) + middle + float(ends[2 * i + 1] or 0)
            scored.append(Path(walk[::-1] if flip else walk, rounded(total)))
    scored.sort(key=lambda p: (-p.score, ">".join(p.members)))
    return scored[:limit]
