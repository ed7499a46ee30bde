"""People you may know: the 2nd degree ranked by mutual connections and shared profile."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from services.projection import domain
from services.projection.queries.degree import second_degree
from services.projection.store import Keyspace, ReadModelStore

SUGGESTION_CANDIDATE_CAP = 200_000


async def suggestions(rm: ReadModelStore, m: str, limit: int) -> dict[str, Any]:
    ks = await rm.current()
    cache_key = ks.member("sg", m)
    cached = await rm.redis.get(cache_key)
    if cached:
        entry = json.loads(cached)
        if entry["limit"] >= limit and await _unchanged_since(rm, ks, m, entry["clock"]):
            return {"items": entry["items"][:limit], "cached": True}
    clock = int(await rm.redis.get(ks.clock) or 0)
    counts, _ = await second_degree(rm, ks, m, SUGGESTION_CANDIDATE_CAP)
    for x in await rm.exclusions(ks, m):
        counts.pop(x, None)
    # Only the best few hundred by mutual count can make the list after boosts (<= 2x).
    pool = [c for c, _ in counts.most_common(max(limit * 10, 200))]
    profiles = await rm.profiles(ks, pool)
    pool_counts = Counter({c: counts[c] for c in pool if profiles[c].get("active") == "1"})
    me = await rm.profile(ks, m)
    ranked = domain.rank_suggestions(me, pool_counts, profiles, limit)
    items = [
        {
            "member_id": c,
            "mutual_connections": n,
            "score": round(score, 3),
            "shared": reasons,
            "name": profiles[c].get("name"),
            "headline": profiles[c].get("headline"),
        }
        for c, n, score, reasons in ranked
    ]
    ttl = rm.settings.suggestions_cache_ttl_s
    await rm.redis.set(
        cache_key, json.dumps({"clock": clock, "limit": limit, "items": items}), ex=ttl
    )
    return {"items": items, "cached": False}


async def _unchanged_since(rm: ReadModelStore, ks: Keyspace, m: str, clock: int) -> bool:
    """Neither the member nor any of their connections changed after `clock`."""
    members = [m, *await rm.connections(ks, m)]
    for start in range(0, len(members), 1000):
        async with rm.redis.pipeline(transaction=False) as pipe:
            for x in members[start : start + 1000]:
                pipe.get(ks.member("lc", x))
            marks = await pipe.execute()
        if any(mark is not None and int(mark) > clock for mark in marks):
            return False
    return True
