"""A member's connections and their 2nd and 3rd-degree network, filtered and paged."""

from __future__ import annotations

from typing import Any

from services.projection.domain import Filters
from services.projection.store import READ_CHUNK, Keyspace, ReadModelStore
from shared.events import PROFILE_FIELDS

NETWORK_SCAN_CAP = 50_000


async def network(
    rm: ReadModelStore,
    ks: Keyspace,
    m: str,
    degree: int,
    filters: Filters,
    cursor: str | None,
    limit: int,
) -> dict[str, Any]:
    """One page of `m`'s 2nd (or 3rd) degree, in member order after `cursor`, filtered: on
    the server (lua/graph.lua `network`, from the viewer's cached network when it is valid);
    on Redis Cluster by scatter and gather."""
    if await rm.cluster_mode():
        if degree == 2:
            return await second_degree_page(rm, ks, m, filters, cursor, limit)
        return await third_degree_page(rm, ks, m, filters, cursor, limit)
    hit, ids, more, capped = await rm.graph(
        ks, "network", m, cursor or "", limit, NETWORK_SCAN_CAP, degree, *filters.keys()
    )
    rm.count_viewer_cache(bool(hit))
    return await _page(rm, ks, ids, bool(more or capped), bool(capped))


async def _page(
    rm: ReadModelStore, ks: Keyspace, ids: list[str], more: bool, capped: bool
) -> dict[str, Any]:
    profiles = await rm.profiles(ks, ids)
    items = [{"member_id": x, **{f: profiles[x].get(f) for f in PROFILE_FIELDS}} for x in ids]
    return {"items": items, "next_cursor": ids[-1] if more and ids else None, "capped": capped}


async def third_degree_page(
    rm: ReadModelStore, ks: Keyspace, m: str, filters: Filters, cursor: str | None, limit: int
) -> dict[str, Any]:
    """One page of `m`'s 3rd degree by scatter and gather (Redis Cluster), as the one-node
    scan reads it: the members in order after `cursor`, at most NETWORK_SCAN_CAP of them,
    those matching the filters (asked of their nodes) and neither 1st nor 2nd degree, whose
    connections include a 2nd-degree member (`m`'s connections sent once per node)."""
    first = await rm.connections(ks, m)
    skip = await rm.exclusions(ks, m) | {m}
    found: list[str] = []
    start, scanned, capped = f"({cursor}" if cursor else "-", 0, False
    while first and len(found) <= limit:
        chunk = [str(x) for x in await rm.redis.zrangebylex(ks.members, start, "+", 0, 500)]
        if scanned + len(chunk) > NETWORK_SCAN_CAP:
            chunk, capped = chunk[: NETWORK_SCAN_CAP - scanned], True
        scanned += len(chunk)
        wanted = [x for x in chunk if x not in skip and x not in first]
        matching = await rm.found_on_nodes(ks, "matching", wanted, filters.keys())
        second = await rm.found_on_nodes(ks, "touching", matching, first)
        rest = {x: found_set async for x, found_set in rm.sets_of(ks, "c", matching - second)}
        reached = await rm.found_on_nodes(ks, "touching", set().union(*rest.values()), first)
        found += [x for x in chunk if x in rest and not reached.isdisjoint(rest[x])]
        if capped or len(chunk) < 500:
            break
        start = f"({chunk[-1]}"
    # A match past the page comes before the cap (the one-node scan stops there).
    more = len(found) > limit
    capped = capped and not more
    return await _page(rm, ks, found[:limit], more or capped, capped)


async def second_degree_page(
    rm: ReadModelStore, ks: Keyspace, m: str, filters: Filters, cursor: str | None, limit: int
) -> dict[str, Any]:
    """One page of `m`'s 2nd degree by scatter and gather (Redis Cluster): each node that
    holds connections of `m` answers the next members in order that their connections hold
    (`m`'s own connections and exclusions sent once); the nodes of those members say which
    match the filters. Rounds go on until the page is full or the candidates run out."""
    first = await rm.connections(ks, m)
    skip = sorted(first | await rm.exclusions(ks, m) | {m})
    want = max(4 * limit, 100)
    after = cursor or ""
    found: list[str] = []
    # One match past the page says another page follows (as on one node).
    while first and len(found) <= limit:
        answers = await rm.on_nodes(ks, "after", first, skip, f"{want}:{after}")
        # Complete up to the last member of any node that had more: the next round goes on
        # from there.
        horizon = min((str(ids[-1]) for ids, cut in answers if cut and ids), default=None)
        ordered = sorted({str(x) for ids, _ in answers for x in ids})
        if horizon is not None:
            ordered = [x for x in ordered if x <= horizon]
        matching = await rm.found_on_nodes(ks, "matching", ordered, filters.keys())
        found += [x for x in ordered if x in matching]
        if horizon is None:
            break
        after = horizon
    return await _page(rm, ks, found[:limit], len(found) > limit, False)


async def filtered_page(
    rm: ReadModelStore,
    ks: Keyspace,
    ordered: list[str],
    filters: Filters,
    cursor: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """The first `limit` active members after `cursor` whose profile matches `filters`."""
    if cursor:
        ordered = [x for x in ordered if x > cursor]
    page: list[dict[str, Any]] = []
    for start in range(0, len(ordered), READ_CHUNK):
        chunk = ordered[start : start + READ_CHUNK]
        profiles = await rm.profiles(ks, chunk)
        for x in chunk:
            p = profiles[x]
            if p.get("active") == "0" or not filters.match(p):
                continue
            page.append({"member_id": x, **{f: p.get(f) for f in PROFILE_FIELDS}})
            if len(page) == limit:
                more = x != ordered[-1]
                return page, (x if more else None)
    return page, None


async def connection_page(
    rm: ReadModelStore,
    m: str,
    filters: Filters,
    list_name: str | None,
    cursor: str | None,
    limit: int,
) -> dict[str, Any]:
    ks = await rm.current()
    members = sorted(await rm.connections(ks, m, list_name))
    page, next_cursor = await filtered_page(rm, ks, members, filters, cursor, limit)
    return {"items": page, "next_cursor": next_cursor, "total": len(members)}
