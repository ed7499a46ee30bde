"""Industry figures: members, connections, average, median and size distribution, read in
O(industries) from the aggregates that apply keeps (domain.industry_moves, lua/industry.lua).
"""

from __future__ import annotations

from typing import Any

from services.projection import domain
from services.projection.store import ReadModelStore


async def industries(rm: ReadModelStore) -> list[dict[str, Any]]:
    ks = await rm.current()
    names = sorted(str(n) for n in await rm.redis.smembers(ks.inds))
    async with rm.redis.pipeline(transaction=False) as pipe:
        for name in names:
            key = ks.industry(name)
            pipe.zcard(key)
            pipe.get(ks.industry_sum(name))
            for low, high, _ in domain.SIZE_BUCKETS:
                pipe.zcount(key, low, "+inf" if high is None else high)
        rows = await pipe.execute()
    per = 2 + len(domain.SIZE_BUCKETS)
    out = []
    for i, name in enumerate(names):
        count, total, *buckets = rows[i * per : (i + 1) * per]
        if not count:
            continue
        middle: Any = await rm.redis.zrange(
            ks.industry(name), (count - 1) // 2, count // 2, withscores=True
        )
        out.append(
            {
                "industry": name,
                "members": count,
                "connections": int(total or 0),
                "average_connections": domain.average(int(total or 0), count),
                "median_connections": domain.median([float(score) for _, score in middle]),
                "distribution": {
                    label: n for (_, _, label), n in zip(domain.SIZE_BUCKETS, buckets, strict=True)
                },
            }
        )
    return out
