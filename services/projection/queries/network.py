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
    first = await rm.connections(ks, m)
    second, capped = await second_degree(rm, ks, m, NETWORK_SCAN_CAP)
    candidates = set(second)
    if degree == 3:
        candidates, cut = await third_degree(rm, ks, m, first, set(second), NETWORK_SCAN_CAP)
        capped = capped or cut
    candidates -= await rm.exclusions(ks, m)
    page, next_cursor = await filtered_page(rm, ks, sorted(candidates), filters, cursor, limit)
    return {"items": page, "next_cursor": next_cursor, "capped": capped}


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
