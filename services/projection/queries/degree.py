"""Degrees: between two members (1st, 2nd, 3rd or none, with their mutual connections), and
a page of badges.

On one Redis node each answer is one call of `lua/graph.lua`, where the sets are. On Redis
Cluster the same answers scatter and gather (`*_on_nodes`): one call of `lua/node.lua` per
node over the members it holds, the other side's set sent along once per node; a test
compares the two paths on every query.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.projection.store import Keyspace, ReadModelStore

MUTUAL_SAMPLE = 5


@dataclass(frozen=True)
class DegreeAnswer:
    degree: int | None  # None: further than 3, unknown, or a block either way
    mutual_connections: int
    mutual_sample: list[str]


async def degree(rm: ReadModelStore, ks: Keyspace, a: str, b: str) -> DegreeAnswer:
    if await rm.cluster_mode():
        return await degree_on_nodes(rm, ks, a, b)
    value, count, sample = await rm.graph(ks, "degree", a, b, MUTUAL_SAMPLE)
    return DegreeAnswer(None if value < 0 else int(value), int(count), [str(x) for x in sample])


async def mutual(rm: ReadModelStore, ks: Keyspace, a: str, b: str) -> list[str]:
    """Sorted common connections (intersected on the server)."""
    if await rm.cluster_mode():  # the two sets live in two slots
        return await mutual_on_nodes(rm, ks, a, b)
    return sorted(str(x) for x in await rm.redis.sinter([ks.member("c", a), ks.member("c", b)]))


async def mutual_page(
    rm: ReadModelStore, ks: Keyspace, a: str, b: str, cursor: str | None, limit: int
) -> tuple[int, list[str], bool]:
    """How many connections `a` and `b` share, the first `limit` of them after `cursor` in
    member order, and whether more follow. None across a block either way."""
    if await rm.cluster_mode():
        if await blocked_either(rm, ks, a, b):  # as for a member that does not exist
            return 0, [], False
        common = await mutual(rm, ks, a, b)
        after = [m for m in common if not cursor or m > cursor]
        return len(common), after[:limit], len(after) > limit
    total, page, more = await rm.graph(ks, "mutual", a, b, cursor or "", limit)
    return int(total), [str(x) for x in page], bool(more)


async def badges(rm: ReadModelStore, ks: Keyspace, viewer: str, ids: list[str]) -> list[int | None]:
    """The degree of each of `ids` from `viewer`: from the viewer's cached network when it is
    valid, else meeting in the middle per id (the viewer becomes active, so the background
    refresh builds their network)."""
    if await rm.cluster_mode():
        return await badges_on_nodes(rm, ks, viewer, ids)
    hit, values = await rm.graph(ks, "badges", viewer, *ids)
    rm.count_viewer_cache(bool(hit))
    return [None if v < 0 else int(v) for v in values]


async def blocked_either(rm: ReadModelStore, ks: Keyspace, a: str, b: str) -> bool:
    async with rm.redis.pipeline(transaction=False) as pipe:
        pipe.sismember(ks.member("bl", a), b)
        pipe.sismember(ks.member("blby", a), b)
        return any(await pipe.execute())


async def mutual_on_nodes(rm: ReadModelStore, ks: Keyspace, a: str, b: str) -> list[str]:
    """Sorted common connections (Redis Cluster): the smaller set, sent to the other's node."""
    async with rm.redis.pipeline(transaction=False) as pipe:
        pipe.scard(ks.member("c", a))
        pipe.scard(ks.member("c", b))
        size_a, size_b = await pipe.execute()
    small, other = (a, b) if size_a <= size_b else (b, a)
    sent = await rm.connections(ks, small)
    if not sent:
        return []
    (common,) = await rm.on_nodes(ks, "common", [other], sent)
    return [str(x) for x in common]


async def degree_on_nodes(rm: ReadModelStore, ks: Keyspace, a: str, b: str) -> DegreeAnswer:
    """The degree by scatter and gather (Redis Cluster)."""
    if a == b:
        return DegreeAnswer(0, 0, [])
    if await blocked_either(rm, ks, a, b):
        return DegreeAnswer(None, 0, [])
    common = await mutual_on_nodes(rm, ks, a, b)
    sample = common[:MUTUAL_SAMPLE]
    if await rm.redis.sismember(ks.member("c", a), b):
        return DegreeAnswer(1, len(common), sample)
    if common:
        return DegreeAnswer(2, len(common), sample)
    third = await is_third_degree(rm, ks, a, b)
    return DegreeAnswer(3 if third else None, 0, [])


async def is_third_degree(rm: ReadModelStore, ks: Keyspace, a: str, b: str) -> bool:
    """Meet in the middle (Redis Cluster): does a connection of the smaller side share a
    connection with the other side? The other side's set goes once to each node that holds
    connections of the smaller side; each node stops at its first hit."""
    near, far = a, b
    if await rm.redis.scard(ks.member("c", a)) > await rm.redis.scard(ks.member("c", b)):
        near, far = b, a
    targets = await rm.connections(ks, far)
    if not targets:
        return False
    return bool(await rm.found_on_nodes(ks, "touching", await rm.connections(ks, near), targets))


async def badges_on_nodes(
    rm: ReadModelStore, ks: Keyspace, viewer: str, ids: list[str]
) -> list[int | None]:
    """The degree of each of `ids` (Redis Cluster), with the viewer's connections sent once
    per node: an id whose connections hold one of them is 2 steps away; else one whose
    connections include a member that is 2 steps away is 3."""
    first = await rm.connections(ks, viewer)
    async with rm.redis.pipeline(transaction=False) as pipe:
        pipe.smembers(ks.member("bl", viewer))
        pipe.smembers(ks.member("blby", viewer))
        blocked = {str(x) for found in await pipe.execute() for x in found}
    known: dict[str, int | None] = {}
    for x in ids:
        if x == viewer:
            known[x] = 0
        elif x in blocked:
            known[x] = None
        elif x in first:
            known[x] = 1
    rest = sorted({x for x in ids if x not in known})
    if rest and first:
        known.update(dict.fromkeys(await rm.found_on_nodes(ks, "touching", rest, first), 2))
    rest = [x for x in rest if x not in known]
    if rest and first:
        sets = {m: found async for m, found in rm.sets_of(ks, "c", rest)}
        reached = await rm.found_on_nodes(ks, "touching", set().union(*sets.values()), first)
        known.update({x: 3 for x in rest if not reached.isdisjoint(sets[x])})
    return [known.get(x) for x in ids]
