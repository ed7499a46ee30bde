"""People you may know: the 2nd degree ranked by mutual connections and shared profile.

A member's list is kept precomputed (`sg:{m}`): a request reads it while neither the member
nor any of their connections changed since it was computed. Active viewers' stale lists are
recomputed in the background (debounced, `refresh_active`), so a request is a read. A request
that finds none computes it, bounded (`lua/graph.lua` `suggest`): the connections' sets are
summed, the smallest first, at most `suggestions_reach` entries in one call, and the best
candidates by that estimate are counted exactly. A member with more than
`suggestions_sample` connections starts from that many of them (the most engaged, then the
most recent), and sums up to `suggestions_sampled_reach` entries in slices, one short call
each: a larger sum, as a network that size needs for a list close to the exact one, without
holding Redis for long.
"""

from __future__ import annotations

import enum
import json
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

from services.projection import domain
from services.projection.store import READ_CHUNK, SLICE_TTL_MS, Keyspace, ReadModelStore, slices
from shared.settings import ProjectionSettings

ACTIVE_FOR_S = 3600  # a viewer who asked within this long keeps a refreshed list
REFRESH_PER_TICK = 500  # the most recent viewers one background pass looks at (bounded work)
EXACT = 100_000  # a sample no member reaches (the cap is 30,000 connections)


async def suggestions(
    rm: ReadModelStore, m: str, limit: int, ks: Keyspace | None = None
) -> dict[str, Any]:
    """A read of the precomputed list (without anyone connected, blocked or invited since);
    computed, bounded, when there is none yet. In `ks` when the caller read the current
    version already (as the other queries take it), else in the current one."""
    ks = ks or await rm.current()
    if not await rm.cluster_mode():
        # One call: the list kept, else (within the sample) computed (lua/graph.lua).
        computed = max(limit, 20)
        plan = _plan(rm.settings, Bound.REQUEST, 0, computed)
        boosts = list(domain.BOOSTS.values())
        args = (limit, plan.sample, plan.pool, computed, *boosts, plan.reach)
        found = await rm.graph(ks, "suggestions", m, *args)
        if int(found[0]) == 1:
            raw, gone = found[1], set(found[2])
            items = [i for i in json.loads(raw)["items"] if i["member_id"] not in gone]
            return {"items": items[:limit], "cached": True}
        if int(found[0]) == 3:
            clock, ranked, profiles = int(found[1]), _ranked(found[2]), found[3]
            named = {
                c: {"name": n, "headline": h}
                for (c, *_), (n, h) in zip(ranked, profiles, strict=True)
            }
            items = await _keep(rm, ks, m, computed, clock, ranked, named)
            return {"items": items[:limit], "cached": False}
    else:
        await rm.mark_active(ks, m)
        cached = await rm.redis.get(ks.member("sg", m))
        entry = json.loads(cached) if cached else None
        if entry and entry["limit"] >= limit and await _unchanged_since(rm, ks, m, entry["clock"]):
            return {"items": entry["items"][:limit], "cached": True}
    items = await compute(rm, ks, m, max(limit, 20))
    return {"items": items[:limit], "cached": False}


class Bound(enum.Enum):
    """How much a computation of a list may cost."""

    REQUEST = "request"  # a request that found none: one call within `reach`, or sampled
    # and in slices for a network larger than the sample
    BACKGROUND = "background"  # the refresh of active viewers: a larger sample, in slices
    EXACT = "exact"  # every connection in one call (checks only: a hub's list costs seconds)


async def compute(
    rm: ReadModelStore, ks: Keyspace, m: str, limit: int, bound: Bound = Bound.REQUEST
) -> list[dict[str, Any]]:
    """Rank and store `m`'s list within `bound`."""
    clock = int(await rm.redis.get(ks.clock) or 0)
    ranked = await rank(rm, ks, m, limit, bound)
    profiles = await rm.profiles(ks, [c for c, *_ in ranked])
    return await _keep(rm, ks, m, limit, clock, ranked, profiles)


async def _keep(
    rm: ReadModelStore,
    ks: Keyspace,
    m: str,
    limit: int,
    clock: int,
    ranked: list[tuple[str, int, float, list[str]]],
    profiles: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Store `m`'s list, as computed at `clock` (a change after it leaves it stale)."""
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
    entry = json.dumps({"clock": clock, "limit": limit, "items": items})
    await rm.redis.set(ks.member("sg", m), entry, ex=rm.settings.suggestions_cache_ttl_s)
    return items


async def rank(
    rm: ReadModelStore, ks: Keyspace, m: str, limit: int, bound: Bound = Bound.REQUEST
) -> list[tuple[str, int, float, list[str]]]:
    """The best `limit` (member, mutual count, score, shared fields), ranked on the server
    within `bound` (on Redis Cluster by scatter and gather, the same answer)."""
    boosts = list(domain.BOOSTS.values())
    if await rm.cluster_mode():
        found = await _rank_on_nodes(rm, ks, m, limit, bound, boosts)
    else:
        degree = await rm.redis.scard(ks.member("c", m)) if bound is Bound.REQUEST else 0
        plan = _plan(rm.settings, bound, degree, limit)
        if plan.sliced:
            found = await _rank_in_slices(rm, ks, m, limit, boosts, plan)
        else:
            args = (plan.sample, plan.pool, limit, *boosts, plan.reach)
            found = await rm.graph(ks, "suggest", m, *args)
    return _ranked(found)


def _ranked(found: Any) -> list[tuple[str, int, float, list[str]]]:
    """A ranking as the scripts answer it: (member, mutual count, score, shared fields)."""
    fields = list(domain.BOOSTS)
    return [
        (str(c), int(n), float(score), [f for i, f in enumerate(fields) if int(flags) >> i & 1])
        for c, n, score, flags in found
    ]


@dataclass(frozen=True)
class Plan:
    """How a list is computed within a bound: from at most `sample` connections, summing at
    most `reach` entries of their sets (the smallest first; 0: all), the best `pool` by that
    estimate counted exactly; in one call, or `sliced` in short ones."""

    sample: int
    reach: int
    pool: int
    sliced: bool


def _plan(settings: ProjectionSettings, bound: Bound, degree: int, limit: int) -> Plan:
    """The plan of `bound` for a member with `degree` connections (one node and cluster)."""
    wide = max(10 * limit, 200)
    if bound is Bound.EXACT:
        return Plan(EXACT, 0, wide, sliced=False)
    if bound is Bound.BACKGROUND:
        return Plan(settings.suggestions_background_sample, 0, wide, sliced=True)
    if degree > settings.suggestions_sample:
        sample, reach = settings.suggestions_sample, settings.suggestions_sampled_reach
        return Plan(sample, reach, wide, sliced=True)
    return Plan(settings.suggestions_sample, settings.suggestions_reach, max(2 * limit, 40), False)


async def _rank_in_slices(
    rm: ReadModelStore, ks: Keyspace, m: str, limit: int, boosts: list[float], plan: Plan
) -> Any:
    """`m`'s list within `plan`, every step in slices of at most SLICE_ENTRIES, one call
    each: no call holds Redis for long, however large the network."""
    estimated, sized = await rm.graph(ks, "suggest_start", m, plan.sample)
    estimated = bool(int(estimated))
    if reach := plan.reach:
        sized = sorted(sized, key=lambda entry: (int(entry[1]), str(entry[0])))
        total = 0
        for end, (_, size) in enumerate(sized):
            if end and total + int(size) > reach:
                sized, estimated = sized[:end], True
                break
            total += int(size)
    # Keys of this computation alone: two replicas may refresh one viewer at once.
    estimate = f"{ks.member('sgbg', m)}:{secrets.token_hex(6)}"
    for run in slices(sized):
        await rm.graph(ks, "suggest_sum", estimate, SLICE_TTL_MS, *run)
    counted, flag = f"{estimate}:n", "1" if estimated else "0"
    pooled = await rm.graph(
        ks, "suggest_pool", m, estimate, counted, SLICE_TTL_MS, flag, plan.pool, limit, *boosts
    )
    for run in slices(pooled):
        await rm.graph(ks, "suggest_count", m, counted, SLICE_TTL_MS, *run)
    return await rm.graph(ks, "suggest_rank", m, counted, limit, *boosts)


async def _rank_on_nodes(
    rm: ReadModelStore, ks: Keyspace, m: str, limit: int, bound: Bound, boosts: list[float]
) -> list[tuple[str, int, str, int]]:
    """The list `lua/graph.lua` ranks on one node (`suggest`, or the sliced steps), the same
    steps by scatter and gather on Redis Cluster: set sizes, sums and exact counts come from
    the nodes that hold the members, in one call per node each; the choices between them
    are made here, as the scripts make them."""
    first = sorted(await rm.connections(ks, m))
    plan = _plan(rm.settings, bound, len(first), limit)
    sample, reach, pool, sliced = plan.sample, plan.reach, plan.pool, plan.sliced
    start, estimated = first, False
    if len(first) > sample:
        start, estimated = await _most_engaged_and_recent(rm, ks, m, first, sample), True
    if reach:  # the smallest sets first, `reach` entries in all
        size = await _sizes(rm, ks, start)
        total, kept = 0, list[str]()
        for x in sorted(start, key=lambda x: (size[x], x)):
            if kept and total + size[x] > reach:
                estimated = True
                break
            total += size[x]
            kept.append(x)
        start = kept
    known = {m, *first, *await rm.exclusions(ks, m)}
    counts: dict[str, int] = {}
    for flat in await rm.on_nodes(ks, "count", start, sorted(known)):
        for i in range(0, len(flat), 2):
            counts[str(flat[i])] = counts.get(str(flat[i]), 0) + int(flat[i + 1])
    if estimated:  # the best `pool` by the estimate, ties by id
        best = sorted(counts, key=lambda x: (-counts[x], x))[:pool]
        if not sliced and reach:  # count_pool: within 10 x `reach` lookups
            size, spent = await _sizes(rm, ks, best), 0
            for i, x in enumerate(best):
                cost = min(size[x], len(first))
                if i >= limit and spent + cost > 10 * reach:
                    best = best[:i]
                    break
                spent += cost
        counts = {}
        for pairs in await rm.on_nodes(ks, "overlap", best, first):
            counts.update({str(x): int(n) for x, n in pairs})
    elif sliced:  # suggest_pool, exact sums: only those that can still make the list
        floor = await _floor(rm, ks, counts, limit, math.prod(boosts))
        counts = {x: n for x, n in counts.items() if n >= floor}
    return await _rank_counted(rm, ks, m, counts, limit, boosts)


async def _sizes(rm: ReadModelStore, ks: Keyspace, members: list[str]) -> dict[str, int]:
    size: dict[str, int] = {}
    for pairs in await rm.on_nodes(ks, "sizes", members):
        size.update({str(x): int(n) for x, n in pairs})
    return size


async def _most_engaged_and_recent(
    rm: ReadModelStore, ks: Keyspace, m: str, conns: list[str], n: int
) -> list[str]:
    """graph.lua's most_engaged_and_recent: the `n` connections `m` engaged with most, then
    those connected most recently, ties by id."""
    async with rm.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(ks.member("es", m))
        pipe.hgetall(ks.member("ca", m))
        es, ca = await pipe.execute()
    scores = {str(x): float(v) for x, v in es.items()}
    since = {str(x): float(v) for x, v in ca.items()}
    cut = sorted(since.get(x, 0.0) for x in conns)[len(conns) - n]
    picked = [x for x in conns if scores.get(x, 0.0) > 0 or since.get(x, 0.0) >= cut]
    picked.sort(key=lambda x: (-scores.get(x, 0.0), -since.get(x, 0.0), x))
    return picked[:n]


async def _floor(
    rm: ReadModelStore, ks: Keyspace, counts: dict[str, int], limit: int, max_boost: float
) -> float:
    """The count below which no one can make the list: the `limit`-th active member's (by
    falling count) over the largest boost; 0 when fewer are active."""
    active = 0
    ordered = sorted(counts, key=lambda x: -counts[x])
    for start in range(0, len(ordered), READ_CHUNK):
        chunk = ordered[start : start + READ_CHUNK]
        profiles = await rm.profiles(ks, chunk)
        for x in chunk:
            active += profiles[x].get("active") == "1"
            if active == limit:
                return counts[x] / max_boost
    return 0.0


async def _rank_counted(
    rm: ReadModelStore,
    ks: Keyspace,
    m: str,
    counts: dict[str, int],
    limit: int,
    boosts: list[float],
) -> list[tuple[str, int, str, int]]:
    """graph.lua's rank_counts: by falling count, each active one scored by its boosts,
    until no later count can reach the list."""
    me = await rm.redis.hmget(ks.member("m", m), "ki", "ke", "kl")
    mine = [value or None for value in me]
    # Only the fields m has can be shared (as graph.lua's rank_counts bounds its scan).
    max_boost = math.prod(b for b, wanted in zip(boosts, mine, strict=True) if wanted)
    best: list[tuple[str, int, float, int]] = []
    ordered = sorted(counts, key=lambda x: (-counts[x], x))
    for start in range(0, len(ordered), READ_CHUNK):
        chunk = ordered[start : start + READ_CHUNK]
        async with rm.redis.pipeline(transaction=False) as pipe:
            for x in chunk:
                pipe.hmget(ks.member("m", x), "active", "ki", "ke", "kl")
            rows = await pipe.execute()
        for x, row in zip(chunk, rows, strict=True):
            n = counts[x]
            if len(best) == limit and n * max_boost < best[-1][2]:
                return _as_found(best)
            if row[0] != "1":
                continue
            boost, flags = 1.0, 0
            for i, (wanted, theirs) in enumerate(zip(mine, row[1:], strict=True)):
                if wanted and theirs == wanted:
                    boost, flags = boost * boosts[i], flags + (1 << i)
            best.append((x, n, n * boost, flags))
            best.sort(key=lambda e: (-e[2], -e[1], e[0]))
            del best[limit:]
    return _as_found(best)


def _as_found(best: list[tuple[str, int, float, int]]) -> list[tuple[str, int, str, int]]:
    # As a script answers: the score as Lua's tostring writes it (14 significant digits).
    return [(x, n, f"{score:.14g}", flags) for x, n, score, flags in best]


async def refresh_active(rm: ReadModelStore) -> int:
    """For each viewer active within the last hour: recompute a stale people-you-may-know
    list, and build their network cache when it is stale (debounced: this runs every
    `suggestions_refresh_s`). Returns how many lists it recomputed."""
    ks = await rm.current()
    now = time.time()
    await rm.redis.zremrangebyscore(ks.active_viewers, "-inf", now - ACTIVE_FOR_S)
    refreshed = 0
    cluster = await rm.cluster_mode()
    recent = await rm.redis.zrevrange(ks.active_viewers, 0, REFRESH_PER_TICK - 1)
    for m in [str(x) for x in recent]:
        cached = await rm.redis.get(ks.member("sg", m))
        entry = json.loads(cached) if cached else None
        if entry is not None and not await _unchanged_since(rm, ks, m, entry["clock"]):
            await compute(rm, ks, m, entry["limit"], Bound.BACKGROUND)
            refreshed += 1
        if not cluster:
            await rm.warm(ks, m)
    return refreshed


async def _unchanged_since(rm: ReadModelStore, ks: Keyspace, m: str, clock: int) -> bool:
    """Neither the member nor any of their connections changed after `clock`."""
    if not await rm.cluster_mode():
        return bool(await rm.graph(ks, "fresh", m, clock))
    members = [m, *await rm.connections(ks, m)]
    for start in range(0, len(members), 1000):
        async with rm.redis.pipeline(transaction=False) as pipe:
            for x in members[start : start + 1000]:
                # Any other change (lc) or a connection change (cc), whichever is later.
                pipe.get(ks.member("lc", x))
                pipe.get(ks.member("cc", x))
            marks = await pipe.execute()
        if any(mark is not None and int(mark) > clock for mark in marks):
            return False
    return True
