"""Industry figures: members, connections, average, median and size distribution, read in
O(industries x distinct degrees) from the aggregates that apply keeps (a histogram of the
counted members' degrees and their sum: lua/steps.lua's move_degree, lua/industry.lua).
"""

from __future__ import annotations

from typing import Any

from services.projection import domain
from services.projection.store import Keyspace, ReadModelStore


async def industries(rm: ReadModelStore) -> list[dict[str, Any]]:
    ks = await rm.current()
    names = sorted(str(n) for n in await rm.redis.smembers(ks.inds))
    async with rm.redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(ks.industry(name))
            pipe.get(ks.industry_sum(name))
            pipe.exists(ks.industry_before_histogram(name))
        rows = await pipe.execute()
    out = []
    for i, name in enumerate(names):
        histogram, total, legacy = rows[i * 3 : (i + 1) * 3]
        if legacy:  # not touched since the histogram came: its figures have not moved
            figures = await _before_histogram(rm, ks, name)
        else:
            figures = domain.DegreeFigures.of({int(d): int(n) for d, n in histogram.items()})
        if not figures.members:
            continue
        out.append(
            {
                "industry": name,
                "members": figures.members,
                "connections": int(total or 0),
                "average_connections": domain.average(int(total or 0), figures.members),
                "median_connections": figures.median,
                "distribution": figures.distribution,
            }
        )
    return out


async def _before_histogram(rm: ReadModelStore, ks: Keyspace, name: str) -> domain.DegreeFigures:
    """The figures of an industry still in the sorted-set layout (member -> degree)."""
    key = ks.industry_before_histogram(name)
    async with rm.redis.pipeline(transaction=False) as pipe:
        pipe.zcard(key)
        for low, high, _ in domain.SIZE_BUCKETS:
            pipe.zcount(key, low, "+inf" if high is None else high)
        count, *buckets = await pipe.execute()
    middle: Any = await rm.redis.zrange(key, (count - 1) // 2, count // 2, withscores=True)
    return domain.DegreeFigures(
        count,
        domain.median([float(score) for _, score in middle]),
        {label: n for (_, _, label), n in zip(domain.SIZE_BUCKETS, buckets, strict=True)},
    )
