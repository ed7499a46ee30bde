"""How you're connected: up to a few shortest paths between two members, the ones along the
most engaged connections first, never through a member who blocked or was blocked by either
end (lua/graph.lua; per-member reads on Redis Cluster)."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

from services.projection.queries.degree import blocked_either
from services.projection.store import Keyspace, ReadModelStore


@dataclass(frozen=True)
class Path:
    members: list[str]  # from the viewer to the other member
    score: float  # the stored engagement scores of its connections, summed


async def paths(rm: ReadModelStore, ks: Keyspace, a: str, b: str, limit: int) -> list[Path]:
    cap = rm.settings.paths_scan_cap
    if await rm.cluster_mode():
        return await paths_per_member(rm, ks, a, b, limit, cap)
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


async def paths_per_member(
    rm: ReadModelStore, ks: Keyspace, a: str, b: str, limit: int, cap: int
) -> list[Path]:
    """The same answer from per-member reads (Redis Cluster)."""
    if a == b or await blocked_either(rm, ks, a, b):
        return []
    ca, cb = await rm.connections(ks, a), await rm.connections(ks, b)
    if b in ca:
        return [Path([a, b], await _score(rm, ks, [a, b]))]
    avoid: set[str] = set()
    for kind in ("bl", "blby"):
        for m in (a, b):
            avoid |= {str(x) for x in await rm.redis.smembers(ks.member(kind, m))}
    candidates = [[a, x, b] for x in sorted(ca & cb) if x not in avoid][:cap]
    if not candidates:
        start, end, flip = (a, b, False) if len(ca) <= len(cb) else (b, a, True)
        near, far = (ca, cb) if not flip else (cb, ca)
        async for x, reach in rm.sets_of(ks, "c", near - avoid):
            for y in sorted((reach & far) - avoid - {start}):
                path = [start, x, y, end]
                candidates.append(path[::-1] if flip else path)
            if len(candidates) >= cap:
                break
        candidates = candidates[:cap]
    scored = [Path(p, await _score(rm, ks, p)) for p in candidates]
    scored.sort(key=lambda p: (-p.score, ">".join(p.members)))
    return scored[:limit]
