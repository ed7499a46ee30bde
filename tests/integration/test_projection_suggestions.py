"""People you may know, bounded: what a member sees when their network is too large to count
whole on every cold request, against the exact list; and the background work (lists and the
viewer's network cache) done in short slices, on a real redis-server.

The read models are written directly in the projection's key layout (as applying the events
would leave them) so that each test can shape a network with hubs in it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from services.projection import queries
from services.projection import store as store_module
from services.projection.store import Keyspace, ReadModelStore
from shared.scoring import ScoringModel
from shared.settings import ProjectionSettings
from tests.helpers import Infra

pytestmark = pytest.mark.integration


async def write_network(rm: ReadModelStore, ks: Keyspace, edges: list[tuple[str, str]]) -> None:
    members = {m for edge in edges for m in edge}
    async with rm.redis.pipeline(transaction=False) as pipe:
        for m in members:
            pipe.hset(ks.member("m", m), mapping={"name": m, "active": "1", "ki": "tech"})
        for a, b in edges:
            pipe.sadd(ks.member("c", a), b)
            pipe.sadd(ks.member("c", b), a)
        await pipe.execute()


@contextlib.asynccontextmanager
async def hub_store(infra: Infra, namespace: str, **settings: Any) -> AsyncIterator[ReadModelStore]:
    """Read models holding `hub_network()`, with these settings."""
    redis = Redis.from_url(infra.redis_url, decode_responses=True)
    try:
        rm = ReadModelStore(
            redis, ProjectionSettings(namespace=namespace, **settings), ScoringModel()
        )
        await write_network(rm, rm.keyspace(1), hub_network())
        yield rm
    finally:
        await redis.aclose()


@pytest.fixture
async def store(infra: Infra, namespace: str) -> AsyncIterator[ReadModelStore]:
    # Room for the four small sets (22 entries in all), not for a hub's (41 each).
    async with hub_store(infra, namespace, suggestions_reach=30) as rm:
        yield rm


def hub_network() -> list[tuple[str, str]]:
    """ann knows four small networks (sam0..sam3) and two hubs. Each small one also knows
    kim, and one hub does too; everyone else the hubs know shares only that hub with ann."""
    edges = [("ann", f"sam{i}") for i in range(4)] + [("ann", "hub0"), ("ann", "hub1")]
    edges += [(f"sam{i}", "kim") for i in range(4)] + [("hub0", "kim")]
    edges += [(f"sam{i}", f"own{i}-{j}") for i in range(4) for j in range(3)]
    edges += [(f"hub{h}", f"far{h}-{j}") for h in range(2) for j in range(39)]
    edges += [("sam0", "lea"), ("sam1", "lea"), ("hub1", "lea")]
    return edges


async def test_a_bounded_list_leaves_the_hubs_sets_out_but_counts_what_it_shows_exactly(
    store: ReadModelStore,
) -> None:
    ks = store.keyspace(1)

    bounded = await queries.suggestions.rank(store, ks, "ann", 3)
    exact = await queries.suggestions.rank(store, ks, "ann", 3, queries.suggestions.Bound.EXACT)

    # kim shares five connections with ann (four small networks and hub0), lea three: the
    # counts are exact although the hubs' sets were left out of the estimate.
    assert [(m, n) for m, n, *_ in bounded[:2]] == [("kim", 5), ("lea", 3)]
    assert bounded[:2] == exact[:2]
    # With the bound lifted, every hub's member with one mutual connection is a candidate;
    # bounded, only those the small sets brought.
    assert exact[2][:2] == ("far0-0", 1)
    assert bounded[2][:2] == ("own0-0", 1)


async def test_without_a_bound_the_list_is_exact(infra: Infra, namespace: str) -> None:
    async with hub_store(infra, namespace, suggestions_reach=0) as rm:
        ks = rm.keyspace(1)
        assert await queries.suggestions.rank(rm, ks, "ann", 10) == await queries.suggestions.rank(
            rm, ks, "ann", 10, queries.suggestions.Bound.EXACT
        )


async def test_a_large_network_starts_from_its_most_recent_connections_in_slices_and_counts_exactly(
    infra: Infra, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with hub_store(infra, namespace, suggestions_sample=4) as rm:
        ks = rm.keyspace(1)
        # ann connected to the hubs long ago, to the four small networks lately.
        since = {"hub0": 100, "hub1": 200, **{f"sam{i}": 1000 + i for i in range(4)}}
        await rm.redis.hset(ks.member("ca", "ann"), mapping=since)
        monkeypatch.setattr(store_module, "SLICE_ENTRIES", 5)  # sums and counts, many calls

        sampled = await queries.suggestions.rank(rm, ks, "ann", 3)
        exact = await queries.suggestions.rank(rm, ks, "ann", 3, queries.suggestions.Bound.EXACT)
        leftovers = [key async for key in rm.redis.scan_iter(match=f"{namespace}*sgbg*")]

    # ann has six connections, more than the sample of four: the estimate sums the four
    # small networks' sets only, yet what the list shows is counted exactly (kim: five
    # mutual connections, hub0 among them; lea three, with hub1).
    assert [(m, n) for m, n, *_ in sampled[:2]] == [("kim", 5), ("lea", 3)]
    assert sampled[:2] == exact[:2]
    # The hubs' other members were never summed: the rest come from the small networks.
    assert exact[2][:2] == ("far0-0", 1)
    assert sampled[2][:2] == ("own0-0", 1)
    assert leftovers == []  # the partial sums of the slices are gone


async def test_the_background_refresh_sums_the_sets_in_slices_and_counts_every_one(
    store: ReadModelStore, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = store.keyspace(1)
    Bound = queries.suggestions.Bound
    monkeypatch.setattr(store_module, "SLICE_ENTRIES", 30)

    # Three slices of at most 30 entries: the four small sets, then each hub's.
    refreshed = await queries.suggestions.rank(store, ks, "ann", 10, Bound.BACKGROUND)

    assert refreshed == await queries.suggestions.rank(store, ks, "ann", 10, Bound.EXACT)
    assert [key async for key in store.redis.scan_iter(match=f"{namespace}*sgbg*")] == []


async def test_a_viewers_network_built_in_slices_is_their_whole_second_degree(
    store: ReadModelStore, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = store.keyspace(1)
    edges = hub_network()
    monkeypatch.setattr(store_module, "SLICE_ENTRIES", 30)  # three slices, as above
    friends = {b for a, b in edges if a == "ann"}
    second = {b for a, b in edges if a in friends} | {a for a, b in edges if b in friends}

    assert await store.warm(ks, "ann")

    cached = await store.redis.zrange(ks.member("n2", "ann"), 0, -1)
    assert cached == sorted(second - friends - {"ann"})
    assert await store.warm(ks, "ann") is False  # valid: nothing changed since
    assert [key async for key in store.redis.scan_iter(match=f"{namespace}*n2b*")] == []
    badges = await queries.degree.badges(store, ks, "ann", ["kim", "far1-3", "sam0", "nobody"])
    assert badges == [2, 2, 1, None]
