"""The dashboard's network explorer: a member's neighbourhood as a small graph to draw.

Big networks are sampled, and the answer says so: the most engaged 1st-degree connections
(then by id) up to `FIRST_SHOWN`, and for each of them a few random connections of their own
that are 2nd-degree to the member, up to `SECOND_SHOWN`.
"""

from __future__ import annotations

from typing import Any

from services.projection.queries.engagement import engagement_pairs
from services.projection.store import Keyspace, ReadModelStore

FIRST_SHOWN = 24
SECOND_PER_FIRST = 3
SECOND_SHOWN = 48


async def neighbourhood(rm: ReadModelStore, ks: Keyspace, m: str) -> dict[str, Any]:
    pairs = await engagement_pairs(rm, ks, m)
    ranked = sorted(pairs, key=lambda p: (-p.stored, p.other))
    first = [p.other for p in ranked[:FIRST_SHOWN]]
    everyone = {p.other for p in pairs}
    async with rm.redis.pipeline(transaction=False) as pipe:
        for f in first:
            pipe.srandmember(ks.member("c", f), SECOND_PER_FIRST * 3)
        picks = await pipe.execute()
    edges = [[m, f] for f in first]
    second: list[str] = []
    for f, candidates in zip(first, picks, strict=True):
        taken = 0
        for s in sorted(str(c) for c in candidates):
            if s == m or s in everyone or taken >= SECOND_PER_FIRST:
                continue
            if s not in second:
                if len(second) >= SECOND_SHOWN:
                    continue
                second.append(s)
            edges.append([f, s])
            taken += 1
    profiles = await rm.profiles(ks, [m, *first, *second])
    nodes = [
        {
            "id": n,
            "degree": d,
            "name": profiles[n].get("name"),
            "industry": profiles[n].get("industry"),
        }
        for d, group in ((0, [m]), (1, first), (2, second))
        for n in group
    ]
    return {
        "nodes": nodes,
        "edges": edges,
        "connections": len(pairs),
        "first_shown": len(first),
        "second_shown": len(second),
        "sampled": len(pairs) > len(first) or any(len(p) >= SECOND_PER_FIRST * 3 for p in picks),
    }
