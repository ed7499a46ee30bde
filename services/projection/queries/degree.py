"""Degrees: between two members (1st, 2nd, 3rd or none, with their mutual connections), and
a member's 2nd and 3rd-degree neighbourhoods."""

from __future__ import annotations

from collections import Counter

from services.projection.store import Keyspace, ReadModelStore


async def mutual(rm: ReadModelStore, ks: Keyspace, a: str, b: str) -> list[str]:
    """Sorted common connections: the smaller set checked against the larger (O(min))."""
    ca, cb = ks.member("c", a), ks.member("c", b)
    async with rm.redis.pipeline(transaction=False) as pipe:
        pipe.scard(ca)
        pipe.scard(cb)
        na, nb = await pipe.execute()
    small, large = (ca, cb) if na <= nb else (cb, ca)
    members = sorted(str(x) for x in await rm.redis.smembers(small))
    if not members:
        return []
    flags = await rm.redis.smismember(large, members)
    return [m for m, f in zip(members, flags, strict=True) if f]


async def degree(rm: ReadModelStore, ks: Keyspace, a: str, b: str) -> tuple[int | None, list[str]]:
    """0 for oneself, 1, 2 (with the mutual connections), 3, or None (further or unknown)."""
    if a == b:
        return 0, []
    if await rm.redis.sismember(ks.member("c", a), b):
        return 1, await mutual(rm, ks, a, b)
    common = await mutual(rm, ks, a, b)
    if common:
        return 2, common
    return (3 if await is_third_degree(rm, ks, a, b) else None), []


async def is_third_degree(rm: ReadModelStore, ks: Keyspace, a: str, b: str) -> bool:
    """The degree-3 query, meet in the middle: does the smaller side's 2nd-degree
    neighbourhood reach one of the other side's connections? Stops at the first hit."""
    na, nb = await rm.redis.scard(ks.member("c", a)), await rm.redis.scard(ks.member("c", b))
    near, far = (a, b) if na <= nb else (b, a)
    targets = await rm.connections(ks, far)
    if not targets:
        return False
    async for _, reach in rm.sets_of(ks, "c", await rm.connections(ks, near)):
        if not targets.isdisjoint(reach):
            return True
    return False


async def _one_step_out(
    rm: ReadModelStore, ks: Keyspace, members: set[str], cap: int
) -> tuple[Counter[str], bool]:
    """How many of `members` each of their connections is connected to, and whether the
    scan stopped at `cap` distinct members."""
    counts: Counter[str] = Counter()
    async for _, friends in rm.sets_of(ks, "c", members):
        counts.update(friends)
        if len(counts) > cap:
            return counts, True
    return counts, False


async def second_degree(
    rm: ReadModelStore, ks: Keyspace, m: str, cap: int
) -> tuple[Counter[str], bool]:
    """Mutual-connection counts of everyone two steps away, and whether `cap` cut it short."""
    first = await rm.connections(ks, m)
    counts, capped = await _one_step_out(rm, ks, first, cap)
    for x in (*first, m):
        counts.pop(x, None)
    return counts, capped


async def third_degree(
    rm: ReadModelStore, ks: Keyspace, m: str, first: set[str], second: set[str], cap: int
) -> tuple[set[str], bool]:
    """Everyone three steps away: neighbours of the 2nd degree that are not nearer, and
    whether `cap` cut the scan short."""
    reach, capped = await _one_step_out(rm, ks, second, cap)
    return set(reach) - second - first - {m}, capped
