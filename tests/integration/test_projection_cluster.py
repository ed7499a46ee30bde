"""The read models on a real Redis Cluster: same answers, same content, as on one node.

Every multi-key operation of the projection stays inside one member's (or one industry's,
or the batch bookkeeping's) hash tag, or is merged client-side; a cluster refuses anything
else with CROSSSLOT, so these tests fail if a cross-slot operation creeps in."""

from __future__ import annotations

import random

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.projection import queries
from services.projection.apply import BatchApplier
from services.projection.domain import Filters
from services.projection.main import create_app
from services.projection.store import ReadModelStore
from shared import events as ev
from shared.events import Envelope
from shared.scoring import ScoringModel
from shared.settings import ProjectionSettings
from tests.helpers import Infra, auth, publish_envelopes, random_id, running_app
from tests.integration.test_projection_network import network_events
from tests.integration.test_projection_property import Record, deliveries, no_dead_letters

pytestmark = pytest.mark.integration


OTHERS = ("bob", "dan", "eve", "hal", "lee", "jon", "ann", "nobody")


async def answers(model: ReadModelStore) -> dict:
    """The same query list on either path: every graph query, every read model."""
    ks = await model.current()
    return {
        "degrees": [await queries.degree.degree(model, ks, "ann", x) for x in OTHERS],
        "badges": await queries.degree.badges(model, ks, "ann", list(OTHERS)),
        "badges again": await queries.degree.badges(model, ks, "ann", list(OTHERS)),
        "mutual": [await queries.degree.mutual(model, ks, "ann", x) for x in OTHERS],
        "paths": [await queries.paths.paths(model, ks, "ann", x, 3) for x in OTHERS],
        "network 2": await queries.network.network(model, ks, "ann", 2, Filters(), None, 50),
        "network 2 paged": await queries.network.network(model, ks, "ann", 2, Filters(), "cat", 2),
        "network 2 filtered": await queries.network.network(
            model, ks, "ann", 2, Filters(industry=" technology"), None, 50
        ),
        "suggestions": (await queries.suggestions.suggestions(model, "ann", 10))["items"],
        "industries": await queries.industries.industries(model),
        "network": await queries.network.network(model, ks, "ann", 3, Filters(), None, 50),
        "connections": await queries.network.connection_page(
            model, "fay", Filters(industry="finance"), None, None, 50
        ),
        "pending": await queries.members.pending(model, "ann", "received"),
        "digest": await queries.status.digest(model),
    }


async def test_cluster_and_single_node_models_are_identical(
    infra: Infra, redis_cluster_url: str
) -> None:
    records = deliveries(network_events(), random.Random(3))
    results = []
    for client in (
        RedisCluster.from_url(redis_cluster_url, decode_responses=True),
        Redis.from_url(infra.redis_url, decode_responses=True),
    ):
        settings = ProjectionSettings(namespace=f"k{random_id(8)}.")
        model = ReadModelStore(client, settings, ScoringModel())
        applier = BatchApplier(model, no_dead_letters)
        for start in range(0, len(records), 5):
            await applier.process(records[start : start + 5])
        await applier.process(records[:10])  # re-delivery
        results.append(await answers(model))
        await client.aclose()
    on_cluster, on_node = results
    assert on_cluster == on_node
    assert [d.degree for d in on_cluster["degrees"]] == [1, 2, 3, None, None, 2, 0, None]
    assert on_cluster["badges"] == [1, 2, 3, None, None, 2, 0, None]


async def test_projection_service_runs_on_the_cluster(
    infra: Infra,
    namespace: str,
    service_env: dict,
    redis_cluster_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_cluster_url)
    monkeypatch.setenv("RAPPORT_PROJECTION_REDIS_CLUSTER", "1")
    events = network_events()
    async with running_app(create_app()) as client:
        await publish_envelopes(infra.kafka_bootstrap, namespace, events)
        ready = await client.get("/readyz")
        for e in events:
            r = await client.get(
                "/members/ann/summary",
                params={"after": str(e.event_id), "wait_ms": 15000},
                headers=auth("ann"),
            )
            assert r.status_code == 200
        degree = (await client.get("/members/ann/degree/eve", headers=auth("ann"))).json()
        badges = await client.get(
            "/members/ann/degrees", params={"ids": "bob,dan,eve,lee"}, headers=auth("ann")
        )
        paths = (await client.get("/members/ann/paths/eve", headers=auth("ann"))).json()
        industries = (await client.get("/industries", headers=auth())).json()["industries"]
    assert ready.status_code == 200
    assert degree["degree"] == 3
    assert badges.json()["degrees"] == {"bob": 1, "dan": 2, "eve": 3, "lee": None}
    assert paths["paths"][0]["members"] == ["ann", "bob", "dan", "eve"]
    assert {i["industry"]: i["average_connections"] for i in industries}["Technology"] == 3.0


@pytest.mark.timeout(60)
async def test_a_full_batch_of_many_members_applies_on_the_cluster(redis_cluster_url: str) -> None:
    """A batch touching far more members than the cluster client has connections per node
    (one call per member and step) is applied, not refused and retried for ever."""
    pairs = [(f"a{i:03d}", f"b{i:03d}") for i in range(300)]
    envelopes = [
        Envelope.wrap(ev.ConnectionAccepted(member_a=a, member_b=b), producer="test")
        for a, b in pairs
    ]
    records = [
        Record(e.topic, 0, offset, e.to_bytes(), e.key.encode())
        for offset, e in enumerate(envelopes)
    ]
    client = RedisCluster.from_url(redis_cluster_url, decode_responses=True, max_connections=64)
    settings = ProjectionSettings(namespace=f"k{random_id(8)}.")
    model = ReadModelStore(client, settings, ScoringModel())
    await BatchApplier(model, no_dead_letters).process(records)
    ks = await model.current()
    degrees = await queries.degree.badges(model, ks, "a000", ["b000", "a001"])
    status = await queries.status.status(model)
    await client.aclose()
    assert degrees == [1, None]
    assert status["events_applied"] == len(pairs)


async def write_random_network(model: ReadModelStore, seed: int) -> list[str]:
    """A random network in the projection's key layout (as applying the events leaves it):
    members with industries and titles, some inactive; connections with engagement scores
    (so paths rank); blocks either way. Returns the members."""
    rng = random.Random(seed)
    members = [f"m{i:03d}" for i in range(150)]
    ks = await model.current()
    async with model.redis.pipeline(transaction=False) as pipe:
        for i, m in enumerate(members):
            industry = rng.choice(["Technology", "Finance", "Media"])
            profile = {"name": m, "active": "0" if i % 23 == 0 else "1", "industry": industry}
            profile |= {"ki": industry.lower(), "title": rng.choice(["Engineer", "Analyst"])}
            profile["kt"] = profile["title"].lower()
            pipe.hset(ks.member("m", m), mapping=profile)
        pipe.zadd(ks.members, dict.fromkeys(members, 0))
        # A few hubs, many members with a handful of connections.
        for i, m in enumerate(members):
            for _ in range(25 if i < 5 else 3):
                other = rng.choice(members)
                if other != m:
                    pipe.sadd(ks.member("c", m), other)
                    pipe.sadd(ks.member("c", other), m)
                    score = round(rng.random(), 3)
                    pipe.hset(ks.member("es", m), other, score)
                    pipe.hset(ks.member("es", other), m, score)
        for _ in range(10):
            a, b = rng.sample(members, 2)
            pipe.sadd(ks.member("bl", a), b)
            pipe.sadd(ks.member("blby", b), a)
        await pipe.execute()
    return members


async def paged(
    model: ReadModelStore, viewer: str, filters: Filters, degree: int = 2
) -> list[list[str]]:
    """Every page of the viewer's 2nd (or 3rd) degree, three at a time."""
    pages, cursor = [], None
    ks = await model.current()
    while True:
        page = await queries.network.network(model, ks, viewer, degree, filters, cursor, 3)
        pages.append([i["member_id"] for i in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


async def test_a_random_network_answers_the_same_on_one_node_and_on_the_cluster(
    infra: Infra, redis_cluster_url: str
) -> None:
    """Every graph query the cluster answers by scatter and gather (degree, mutual, badges,
    paths, 2nd and 3rd-degree pages, suggestions within each bound), over a network spread across
    the three nodes, against the one node's server-side answers."""
    results = []
    for client in (
        RedisCluster.from_url(redis_cluster_url, decode_responses=True),
        Redis.from_url(infra.redis_url, decode_responses=True),
    ):
        # Bounds this small network reaches: sums cut short, networks sampled, pools
        # counted exactly.
        settings = ProjectionSettings(
            namespace=f"k{random_id(8)}.",
            suggestions_reach=20,
            suggestions_sample=6,
            suggestions_sampled_reach=40,
            suggestions_background_sample=8,
        )
        model = ReadModelStore(client, settings, ScoringModel())
        members = await write_random_network(model, seed=5)
        ks = await model.current()
        rng = random.Random(9)
        viewers = [*members[:5], *rng.sample(members, 10)]
        answers: dict[str, list] = {"degree": [], "mutual": [], "paths": [], "badges": []}
        answers["pages"], answers["suggestions"] = [], []
        for v in viewers:
            for bound in queries.suggestions.Bound:
                ranked = await queries.suggestions.rank(model, ks, v, 10, bound)
                answers["suggestions"].append(ranked)
            others = rng.sample(members, 8)
            for x in others:
                answers["degree"].append(await queries.degree.degree(model, ks, v, x))
                answers["mutual"].append(await queries.degree.mutual(model, ks, v, x))
                answers["paths"].append(await queries.paths.paths(model, ks, v, x, 3))
            answers["badges"].append(await queries.degree.badges(model, ks, v, members))
            answers["pages"].append(await paged(model, v, Filters()))
            answers["pages"].append(await paged(model, v, Filters(industry="finance")))
            answers["pages"].append(await paged(model, v, Filters(title="engineer")))
            answers["pages"].append(await paged(model, v, Filters(industry="media"), 3))
        results.append(answers)
        await client.aclose()
    on_cluster, on_node = results
    for kind in on_node:
        assert on_cluster[kind] == on_node[kind], kind
    # The network is rich enough to reach every answer: each degree, paths of two and three
    # steps, and pages that go on.
    assert {d.degree for d in on_node["degree"]} == {None, 1, 2, 3}
    assert {len(p[0].members) for p in on_node["paths"] if p} == {2, 3, 4}
    assert max(len(pages) for pages in on_node["pages"]) > 3
    # ... and the bounds cut: some lists within a bound differ from the exact one.
    lists = on_node["suggestions"]
    by_viewer = [lists[i : i + 3] for i in range(0, len(lists), 3)]  # request, background, exact
    assert any(request != exact for request, _, exact in by_viewer)
    assert any(background != exact for _, background, exact in by_viewer)
