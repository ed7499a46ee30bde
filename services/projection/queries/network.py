"""A member's connections and their 2nd and 3rd-degree network, filtered and paged."""

from __future__ import annotations

from typing import Any

from services.projection.domain import Filters
from services.projection.queries.degree import second_degree, third_degree
from services.projection.store import READ_CHUNK, Keyspace, ReadModelStore
from shared.events import PROFILE_FIELDS

NETWORK_SCAN_CAP = 50_000


async def network(
    rm: ReadModelStore, m: str, degree: int, filters: Filters, cursor: str | None, limit: int
) -> dict[str, Any]:
    """One page of `m`'s 2nd (or 3rd) degree, in member order after `cursor`, filtered; the
    2nd degree from the viewer's cached network on the server (single node)."""
    ks = await rm.current()
    if degree == 2 and not await rm.cluster_mode():
        hit, ids, more, capped = await rm.graph(
            ks, "network", m, cursor or "", limit, NETWORK_SCAN_CAP, *filters.keys()
        )
        rm.count_viewer_cache(bool(hit))
        profiles = await rm.profiles(ks, ids)
        items = [{"member_id": x, **{f: profiles[x].get(f) for f in PROFILE_FIELDS}} for x in ids]
        next_cursor = ids[-1] if (more or capped) and ids else None
        return {"items": items, "next_cursor": next_cursor, "capped": bool(capped)}
    if degree == 2:
        return await second_degree_page(rm, ks, m, filters, cursor, limit)
    first = await rm.connections(ks, m)
    second, capped = await second_degree(rm, ks, m, NETWORK_SCAN_CAP)
    candidates = set(second)
    if degree == 3:
        candidates, cut = await third_degree(rm, ks, m, first, set(second), NETWORK_SCAN_CAP)
        capped = capped or cut
    candidates -= await rm.exclusions(ks, m)
    page, next_cursor = await filtered_page(rm, ks, sorted(candidates), filters, cursor, limit)
    return {"items": page, "next_cursor": next_cursor, "capped": capped}


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
        matching: set[str] = set()
        for hits in await rm.on_nodes(ks, "matching", ordered, filters.keys()):
            matching.update(str(x) for x in hits)
        found += [x for x in ordered if x in matching]
        if horizon is None:
            break
        after = horizon
    page = found[:limit]
    profiles = await rm.profiles(ks, page)
    items = [{"member_id": x, **{f: profiles[x].get(f) for f in PROFILE_FIELDS}} for x in page]
    next_cursor = page[-1] if len(found) > limit else None
    return {"items": items, "next_cursor": next_cursor, "capped": False}


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
