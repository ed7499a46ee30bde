r"""The projection on a small hand-checked network, through the real broker and redis-server.

        kim (Tech, Acme)          eve (Finance)
         |                         |
   ann — bob ——————————— dan ——————+
    | \  |  \                      |
    |  \ |   ivy (Health)         gus (Health)
    |   fay — lee (blocked ann)
    |  / |
   cat — +
    |
   jon (invited ann: pending)          hal (Health, no connections)

Edges: ann-bob ann-cat ann-fay bob-fay cat-fay bob-dan dan-eve dan-gus bob-ivy cat-ivy
fay-ivy bob-kim cat-jon fay-lee.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest
from redis.asyncio import Redis

from services.projection import queries
from services.projection.main import create_app
from shared import events as ev
from shared.events import Envelope
from tests.helpers import (
    ADMIN_TOKEN,
    OPS_TOKEN,
    Infra,
    auth,
    publish_envelopes,
    running_app,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("service_env")]

PEOPLE = {
    "ann": ("Technology", "Acme", "Berlin"),
    "bob": ("Technology", "Initech", "Paris"),
    "cat": ("Finance", "Bank", "Berlin"),
    "dan": ("technology ", "Hooli", "Rome"),
    "eve": ("Finance", "Bank", "Rome"),
    "fay": ("Finance", "Bank", "Paris"),
    "gus": ("Health", "Clinic", "Oslo"),
    "hal": ("Health", "Clinic", "Oslo"),
    "ivy": ("Health", "Clinic", "Oslo"),
    "jon": ("Media", "Paper", "Oslo"),
    "kim": ("Technology", "Acme", "Lima"),
    "lee": ("Media", "Paper", "Lima"),
}
EDGES = [
    ("ann", "bob"),
    ("ann", "cat"),
    ("ann", "fay"),
    ("bob", "fay"),
    ("cat", "fay"),
    ("bob", "dan"),
    ("dan", "eve"),
    ("dan", "gus"),
    ("bob", "ivy"),
    ("cat", "ivy"),
    ("fay", "ivy"),
    ("bob", "kim"),
    ("cat", "jon"),
    ("fay", "lee"),
]


def network_events() -> list[Envelope]:
    wrap = lambda e: Envelope.wrap(e, producer="test")  # noqa: E731
    members = [
        wrap(ev.MemberRegistered(member_id=m, name=m.title(), industry=i, employer=e, location=loc))
        for m, (i, e, loc) in PEOPLE.items()
    ]
    # Industry spelled "technology " by dan's registration is grouped by the connection
    # service in production; here we publish the canonical name it would have produced.
    members = [
        wrap(
            ev.MemberRegistered(
                member_id="dan",
                name="Dan",
                industry="Technology",
                employer="Hooli",
                location="Rome",
            )
        )
        if e.key == "dan"
        else e
        for e in members
    ]
    connections = [
        wrap(
            ev.ConnectionAccepted(
                member_a=min(a, b), member_b=max(a, b), invitation_id=f"i-{a}-{b}"
            )
        )
        for a, b in EDGES
    ]
    others = [
        wrap(ev.InvitationSent(invitation_id="inv-jon", sender="jon", recipient="ann")),
        wrap(ev.MemberBlocked(blocker="lee", blocked="ann")),
        wrap(ev.FollowStarted(follower="gus", followee="ann")),
    ]
    # Connections first, members last: the projection must not depend on topic order.
    return [*connections, *others, *members]


async def get(client: httpx.AsyncClient, path: str, member: str = "ann", **params: object) -> dict:
    response = await client.get(path, params=params, headers=auth(member))
    assert response.status_code == 200, response.text
    return response.json()


async def test_hand_checked_network(infra: Infra, namespace: str) -> None:
    events = network_events()
    last = events[-1]
    async with running_app(create_app()) as client:
        await publish_envelopes(infra.kafka_bootstrap, namespace, events)
        await publish_envelopes(
            infra.kafka_bootstrap, namespace, random.Random(7).sample(events, 5)
        )  # duplicates
        await get(client, "/members/ann/summary", after=str(last.event_id), wait_ms=15000)
        await wait_until(lambda: _applied(client, len(events)), timeout=20)

        degrees = {
            other: (await get(client, f"/members/ann/degree/{other}"))
            for other in ("bob", "dan", "eve", "gus", "hal", "fay", "nobody")
        }
        mutual_fay = await get(client, "/members/ann/mutual/fay")
        suggestions = await get(client, "/members/ann/suggestions", limit=10)
        cached = await get(client, "/members/ann/suggestions", limit=10)
        industries = {i["industry"]: i for i in (await get(client, "/industries"))["industries"]}
        summary = await get(client, "/members/ann/summary")
        received = await get(client, "/members/ann/invitations", direction="received")
        finance = await get(client, "/members/ann/connections", industry="finance")
        network2 = await get(client, "/members/ann/network", degree=2, industry="Technology")
        network3 = await get(client, "/members/ann/network", degree=3)
        other_view = await client.get("/members/bob/summary", headers=auth("ann"))

    assert {k: v["degree"] for k, v in degrees.items()} == {
        "bob": 1,
        "dan": 2,
        "eve": 3,
        "gus": 3,
        "hal": None,
        "fay": 1,
        "nobody": None,
    }
    assert degrees["dan"]["mutual_connections"] == 1 and degrees["dan"]["mutual_sample"] == ["bob"]
    assert degrees["fay"]["mutual_sample"] == ["bob", "cat"]
    assert mutual_fay["items"] == ["bob", "cat"] and mutual_fay["total"] == 2
    # ivy: 3 mutual; kim: 1 mutual + same industry and employer; dan: 1 mutual + industry.
    # jon (pending invitation) and lee (blocked ann) never show up.
    assert [s["member_id"] for s in suggestions["items"]] == ["ivy", "kim", "dan"]
    assert [s["mutual_connections"] for s in suggestions["items"]] == [3, 1, 1]
    assert suggestions["cached"] is False and cached["cached"] is True
    assert cached["items"] == suggestions["items"]
    assert {
        name: (i["members"], i["average_connections"], i["median_connections"])
        for name, i in industries.items()
    } == {
        "Technology": (4, 3.0, 3.0),
        "Finance": (3, 3.33, 4.0),
        "Health": (3, 1.33, 1.0),
        "Media": (2, 1.0, 1.0),
    }
    assert industries["Health"]["distribution"] == {
        "0": 1,
        "1-9": 2,
        "10-49": 0,
        "50-99": 0,
        "100-249": 0,
        "250-499": 0,
        "500-999": 0,
        "1000-4999": 0,
        "5000+": 0,
    }
    assert summary == {
        "connections": 3,
        "connections_display": "3",
        # Her three connections follow her and she them (ConnectionAccepted), and gus.
        "followers": 4,
        "following": 3,
        "pending_received": 1,
        "pending_sent": 0,
        "engaged_connections": 0,
    }
    assert [i["from"] for i in received["items"]] == ["jon"]
    assert [i["member_id"] for i in finance["items"]] == ["cat", "fay"]
    assert [i["member_id"] for i in network2["items"]] == ["dan", "kim"]
    assert [i["member_id"] for i in network3["items"]] == ["eve", "gus"]
    assert other_view.status_code == 403


async def _applied(client: httpx.AsyncClient, expected: int) -> bool:
    status = (await client.get("/projection/status", headers=auth())).json()
    return status["events_applied"] == expected and status["total_lag"] == 0


async def test_rebuild_equals_the_live_model_and_queries_keep_answering(
    infra: Infra, namespace: str
) -> None:
    events = network_events()
    app = create_app()
    async with running_app(app) as client:
        model = app.state.wired.store
        await publish_envelopes(infra.kafka_bootstrap, namespace, events)
        await wait_until(lambda: _applied(client, len(events)), timeout=20)
        live_digest = await queries.status.digest(model)
        live_version = await model.version()

        started = await client.post("/projection/rebuild", headers=auth(token=ADMIN_TOKEN))
        during = await client.get("/members/ann/degree/dan", headers=auth("ann"))
        await wait_until(lambda: _rebuild_done(client), timeout=30)
        rebuilt_version = await model.version()
        rebuilt_digest = await queries.status.digest(model, rebuilt_version)
        after = await get(client, "/members/ann/degree/dan")
        # New events still flow into the flipped version.
        late = Envelope.wrap(ev.ConnectionAccepted(member_a="ann", member_b="hal"), producer="test")
        await publish_envelopes(infra.kafka_bootstrap, namespace, [late])
        hal = await get(client, "/members/ann/degree/hal", after=str(late.event_id), wait_ms=10000)

    assert started.status_code == 202
    assert during.status_code == 200 and during.json()["degree"] == 2
    assert rebuilt_version == live_version + 1
    assert rebuilt_digest == live_digest
    assert after["degree"] == 2
    assert hal["degree"] == 1


async def _rebuild_done(client: httpx.AsyncClient) -> bool:
    status = (await client.get("/projection/status", headers=auth())).json()
    return status["rebuild"]["state"] == "done"


async def _all_pages(client: httpx.AsyncClient, path: str, member: str, **params: object) -> list:
    """Follow `next_cursor` with limit=3 to the end; every page's items, in order."""
    items: list = []
    cursor = None
    for _ in range(50):
        page = await get(
            client, path, member, limit=3, **({"cursor": cursor} if cursor else {}), **params
        )
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items
    raise AssertionError(f"{path} did not end")


async def test_badges_paths_and_paging(
    infra: Infra, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAPPORT_PROJECTION_SUGGESTIONS_REFRESH_S", "0.1")
    events = network_events()
    # cat engages with ivy: of ann's three ways to ivy, the one through cat ranks first.
    boost = Envelope.wrap(
        ev.EngagementRecorded(actor="cat", target="ivy", kind="recommend"), producer="test"
    )
    events.append(boost)
    async with running_app(create_app()) as client:
        await publish_envelopes(infra.kafka_bootstrap, namespace, events)
        await wait_until(lambda: _applied(client, len(events)), timeout=20)

        badges = await get(
            client, "/members/ann/degrees", ids="bob,dan,eve,hal,lee,jon,ann,nobody,bob"
        )
        again = await get(client, "/members/ann/degrees", ids="gus,kim")
        to_eve = await get(client, "/members/ann/paths/eve")
        to_ivy = await get(client, "/members/ann/paths/ivy", limit=2)
        to_lee = await get(client, "/members/ann/paths/lee")
        to_bob = await get(client, "/members/ann/paths/bob")
        too_many = await client.get(
            "/members/ann/degrees",
            params={"ids": ",".join(f"m{i}" for i in range(101))},
            headers=auth("ann"),
        )
        other_view = await client.get(
            "/members/bob/degrees", params={"ids": "ann"}, headers=auth("ann")
        )
        network = await _all_pages(client, "/members/ann/network", "ann", degree=2)
        connections = await _all_pages(client, "/members/bob/connections", "bob")
        mutual = await _all_pages(client, "/members/fay/mutual/ivy", "fay")
        # ann asked, so the background refresh builds her network; the next asks read it.
        await wait_until(lambda: _cache_built(client), timeout=10)
        cached_badges = await get(
            client, "/members/ann/degrees", ids="bob,dan,eve,hal,lee,jon,ann,nobody"
        )
        cached_network = await _all_pages(client, "/members/ann/network", "ann", degree=2)
        status = await get(client, "/projection/status")

    assert badges["degrees"] == {
        "bob": 1, "dan": 2, "eve": 3, "hal": None, "lee": None, "jon": 2, "ann": 0, "nobody": None,
    }  # fmt: skip
    assert again["degrees"] == {"gus": 3, "kim": 2}
    assert to_eve == {
        "degree": 3,
        "paths": [{"members": ["ann", "bob", "dan", "eve"], "score": 0.0}],
    }
    assert to_ivy["degree"] == 2
    assert [p["members"] for p in to_ivy["paths"]] == [["ann", "cat", "ivy"], ["ann", "bob", "ivy"]]
    assert to_ivy["paths"][0]["score"] > 0
    assert to_lee == {"degree": None, "paths": []}  # lee blocked ann: no way, and no hint why
    assert to_bob["paths"] == [{"members": ["ann", "bob"], "score": 0.0}]
    assert too_many.status_code == 422
    assert other_view.status_code == 403
    # Paged by 3: exactly the reference, in member order, no duplicate and no gap.
    assert [i["member_id"] for i in network] == ["dan", "ivy", "kim"]  # jon: pending; lee: block
    assert [i["member_id"] for i in connections] == ["ann", "dan", "fay", "ivy", "kim"]
    assert mutual == ["bob", "cat"]
    assert cached_badges["degrees"] == {k: v for k, v in badges["degrees"].items()}
    assert cached_network == network
    cache = status["viewer_cache"]
    assert cache["misses"] >= 1 and cache["hits"] >= 2 and cache["bytes"] > 0


async def test_a_cached_network_gives_way_to_a_change_of_the_viewer_or_a_first_degree_connection(
    infra: Infra, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ann's cached network is read no longer once a connection of hers (ann-cat removed) or
    of a 1st-degree connection (bob-hal added) changed: the next badges say so."""
    monkeypatch.setenv("RAPPORT_PROJECTION_SUGGESTIONS_REFRESH_S", "0.1")
    events = network_events()
    wrap = lambda e: Envelope.wrap(e, producer="test")  # noqa: E731
    changes = [
        wrap(ev.ConnectionAccepted(member_a="bob", member_b="hal", invitation_id="i-bob-hal")),
        wrap(ev.ConnectionRemoved(member_a="ann", member_b="cat", removed_by="ann")),
    ]
    async with running_app(create_app()) as client:
        await publish_envelopes(infra.kafka_bootstrap, namespace, events)
        await wait_until(lambda: _applied(client, len(events)), timeout=20)
        await get(client, "/members/ann/degrees", ids="hal")  # ann asks: her network is built
        await wait_until(lambda: _cache_built(client), timeout=10)
        before = await get(client, "/members/ann/degrees", ids="hal,cat,jon")
        hits = (await get(client, "/projection/status"))["viewer_cache"]["hits"]
        await publish_envelopes(infra.kafka_bootstrap, namespace, changes)
        after = await get(
            client,
            "/members/ann/degrees",
            ids="hal,cat,jon",
            after=str(changes[-1].event_id),
            wait_ms=20000,
        )

    assert hits >= 1  # `before` was read from the cache
    assert before["degrees"] == {"hal": None, "cat": 1, "jon": 2}
    # hal through bob; cat and jon now through fay only.
    assert after["degrees"] == {"hal": 2, "cat": 2, "jon": 3}


async def test_graph_queries_answer_after_redis_lost_their_functions(
    infra: Infra, namespace: str
) -> None:
    """graph.lua is a function library, loaded on first use; a Redis that lost it (restarted
    without persistence, FUNCTION FLUSH) gets it again from the next query, which answers."""
    events = network_events()
    redis = Redis.from_url(infra.redis_url, decode_responses=True)
    async with running_app(create_app()) as client:
        await publish_envelopes(infra.kafka_bootstrap, namespace, events)
        await wait_until(lambda: _applied(client, len(events)), timeout=20)
        before = await get(client, "/members/ann/degree/eve")
        await redis.function_flush()
        after = await get(client, "/members/ann/degree/eve")
        # FUNCTION LIST answers a flat [field, value, ...] list per library.
        loaded = [
            dict(zip(lib[::2], lib[1::2], strict=True))["library_name"]
            for lib in await redis.function_list()
        ]
    await redis.aclose()
    assert before["degree"] == after["degree"] == 3
    assert any(name.startswith("rapport_graph_") for name in loaded)


async def _cache_built(client: httpx.AsyncClient) -> bool:
    return (await get(client, "/projection/status"))["viewer_cache"]["builds"] >= 1


async def test_one_rebuild_at_a_time_across_replicas_and_readers_never_flip_back(
    infra: Infra, namespace: str
) -> None:
    events = network_events()
    first, second = create_app(), create_app()  # two replicas on one Redis
    async with running_app(first) as a, running_app(second) as b:
        await publish_envelopes(infra.kafka_bootstrap, namespace, events)
        await wait_until(lambda: _applied(a, len(events)), timeout=20)
        admin = auth(token=ADMIN_TOKEN)
        member_token = await a.post("/projection/rebuild", headers=auth("ann"))
        started = await a.post("/projection/rebuild", headers=admin)
        refused = await b.post("/projection/rebuild", headers=admin)
        await wait_until(lambda: _rebuild_done(a), timeout=30)
        store = first.state.wired.store
        version = await store.version()
        # An older rebuild that stalled past its lease and took the lock back cannot flip
        # readers to its older version.
        lock = store.rebuild_lock_key
        await store.redis.set(lock, "stalled-owner")
        flip = store.script("flip")
        flipped = await flip(keys=[store.current_key, lock], args=[version - 1, "stalled-owner"])
        lost = await flip(keys=[store.current_key, lock], args=[version + 5, "someone-else"])
        await store.redis.delete(lock)
        still = await store.version()

    assert member_token.status_code == 403
    assert started.status_code == 202
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "rebuild_running"
    assert (flipped, lost, still) == (0, -1, version)


async def test_a_member_looking_up_too_many_members_gets_429_counted_and_shown(
    infra: Infra, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAPPORT_PROJECTION_READ_QUOTA_PER_MINUTE", "5")
    events = network_events()
    async with running_app(create_app()) as client:
        await publish_envelopes(infra.kafka_bootstrap, namespace, events)
        await wait_until(lambda: _applied(client, len(events)), timeout=20)
        # 3 lookups a call against 5 a minute: of three calls, two share a minute window
        # whenever it turns, so one of them is over.
        badges = "/members/ann/degrees?ids=bob,cat,dan"
        calls = [await client.get(badges, headers=auth("ann")) for _ in range(3)]
        over = next(r for r in calls if r.status_code != 200)
        search = await client.get("/members/ann/network?limit=50", headers=auth("ann"))
        other_member = await client.get("/members/bob/degrees?ids=ann", headers=auth("bob"))
        shown = (await client.get("/dashboard/data", headers=auth(token=OPS_TOKEN))).json()
        metrics = (await client.get("/metrics")).text

    assert calls[0].status_code == 200
    assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
    assert over.json()["error"]["code"] == "rate_limited"
    assert search.status_code == 429  # a search counts its limit
    assert other_member.status_code == 200  # per member
    refused = sum(r.status_code == 429 for r in calls)
    assert shown["quota_refused"] == {"badges": refused, "network": 1}
    assert 'rapport_read_quota_refused_total{endpoint="badges"}' in metrics


async def test_every_read_during_a_rebuild_is_right_through_the_flip_and_the_drop(
    infra: Infra, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reader below asks as fast as it can for as long as the rebuild takes: on a fast
    # machine that passes the scraping guard's 3,000 lookups a minute, which is not what
    # this test is about.
    monkeypatch.setenv("RAPPORT_PROJECTION_READ_QUOTA_PER_MINUTE", "1000000")
    events = network_events()
    app = create_app()
    async with running_app(app) as client:
        store = app.state.wired.store
        await publish_envelopes(infra.kafka_bootstrap, namespace, events)
        await wait_until(lambda: _applied(client, len(events)), timeout=20)
        expected_connections = await _all_pages(client, "/members/ann/connections", "ann")
        old = await store.version()
        answers: list[tuple[int | None, list]] = []
        refused = 0  # reads answered 503 `unavailable`: a dependency stalled past its timeout
        stop = asyncio.Event()

        async def read(path: str, **params: object) -> dict | None:
            response = await client.get(path, params=params, headers=auth("ann"))
            if response.status_code == 503 and response.json()["error"]["code"] == "unavailable":
                return None  # "retry shortly": the contract's answer to a stall, not a wrong one
            assert response.status_code == 200, response.text
            return response.json()

        async def reader() -> None:
            nonlocal refused
            while not stop.is_set():
                degree = await read("/members/ann/degree/dan")
                page = await read("/members/ann/connections", limit=50)
                if degree is None or page is None:
                    refused += 1
                    continue
                answers.append((degree["degree"], page["items"]))

        reading = asyncio.create_task(reader())
        started = await client.post("/projection/rebuild", headers=auth(token=ADMIN_TOKEN))
        await wait_until(lambda: _rebuild_done(client), timeout=30)
        # Keep reading until the old version's keys are gone too.
        await wait_until(lambda: _version_dropped(store, old), timeout=30)
        stop.set()
        await reading

    assert started.status_code == 202
    assert len(answers) > 10
    wrong = [a for a in answers if a != (2, expected_connections)]
    assert not wrong, wrong[:3]
    # Once, on a loaded 2-core VM, a Redis call of this test's reads and the relay's, in
    # the same seconds, outlasted the request client's 1 s timeout: a stall of the host, and
    # the 503 is the documented answer to it. A rebuild that kept reads from being answered
    # would show as many refusals.
    assert refused * 10 <= len(answers), (refused, len(answers))


async def _version_dropped(store, version: int) -> bool:  # type: ignore[no-untyped-def]
    prefix = store.keyspace(version).prefix
    async for _ in store.redis.scan_iter(match=prefix + "*", count=1000):
        return False
    return True


async def test_a_rebuild_start_that_failed_after_taking_the_lock_frees_it(
    infra: Infra, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start whose lease call reached a stalled Redis, which ran it when it came back, while
    the request had given up: the lock must not stay taken for its whole lease."""
    app = create_app()
    async with running_app(app) as client:
        rebuilder = app.state.wired.rebuilder
        start = rebuilder._start

        async def lock_taken_then_timed_out() -> dict:
            await rebuilder._hold()
            raise TimeoutError  # what the request's deadline raises

        monkeypatch.setattr(rebuilder, "_start", lock_taken_then_timed_out)
        failed = await client.post("/projection/rebuild", headers=auth(token=ADMIN_TOKEN))
        monkeypatch.setattr(rebuilder, "_start", start)

        async def started() -> bool:
            again = await client.post("/projection/rebuild", headers=auth(token=ADMIN_TOKEN))
            return again.status_code == 202

        # Well within the lock's 30 s lease.
        await wait_until(started, timeout=5)
        await wait_until(lambda: _rebuild_done(client), timeout=30)

    assert failed.status_code == 503 and failed.headers["retry-after"]


async def test_a_rebuild_whose_process_stopped_is_reported_abandoned_and_dropped(
    infra: Infra, namespace: str
) -> None:
    app = create_app()
    async with running_app(app) as client:
        store = app.state.wired.store
        rebuilder = app.state.wired.rebuilder
        # What a replica that died mid-rebuild leaves behind: state running, no lock holder
        # (its lease lapsed), a partial version.
        version = await store.version() + 7
        await store.redis.hset(
            store.rebuild_key, mapping={"state": "running", "version": version, "applied": 3}
        )
        await store.redis.set(store.keyspace(version).prefix + "stats{g}", "partial")
        await rebuilder.reap()
        status = (await client.get("/projection/status", headers=auth())).json()
        dropped = await _version_dropped(store, version)
        again = await client.post("/projection/rebuild", headers=auth(token=ADMIN_TOKEN))
        await wait_until(lambda: _rebuild_done(client), timeout=30)

    assert status["rebuild"]["state"] == "abandoned"
    assert "start the rebuild again" in status["rebuild"]["error"]
    assert dropped
    assert again.status_code == 202
