"""The engagement service with the connection service, on the real broker and redis-server."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from redis.asyncio import Redis

from services.connection.main import create_app as connection_app
from services.engagement.main import create_app as engagement_app
from shared import events as ev
from shared.directory import Directory
from shared.events import Envelope, decode
from shared.outbox import RedisStateStore
from shared.redis import connect, initialize
from shared.settings import EngagementSettings
from shared.topics import ENGAGEMENTS, TopicNames
from tests.conftest import WriteSide
from tests.helpers import Infra, auth, read_topic, running_app

# Every test on one Redis node and on the 3-node cluster in slot groups (tests/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("service_env", "write_side")]


async def test_engagements_and_milestones_with_rules_and_limits(
    infra: Infra, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAPPORT_ENGAGEMENT_PER_ACTOR_PER_MINUTE", "3")
    monkeypatch.setenv("RAPPORT_ENGAGEMENT_PER_TARGET_PER_DAY", "2")
    app = engagement_app()
    async with running_app(app) as eng, running_app(connection_app()) as conn:
        # No waiting: a member or block answered 2xx holds at once in every service.
        for m in ("ann", "bob", "cat", "dan"):
            await conn.post("/members", json={"name": m, "industry": "Tech"}, headers=auth(m))
        await conn.post("/blocks/ann", headers=auth("dan"))

        liked = await eng.post(
            "/engagements", json={"target": "bob", "kind": "like", "ref": "p1"}, headers=auth("ann")
        )
        commented = await eng.post(
            "/engagements", json={"target": "bob", "kind": "comment"}, headers=auth("ann")
        )
        per_target = await eng.post(
            "/engagements", json={"target": "bob", "kind": "share"}, headers=auth("ann")
        )
        blocked = await eng.post(
            "/engagements", json={"target": "dan", "kind": "like"}, headers=auth("ann")
        )
        to_blocker = await eng.post(
            "/engagements", json={"target": "ann", "kind": "like"}, headers=auth("dan")
        )
        self_like = await eng.post(
            "/engagements", json={"target": "ann", "kind": "like"}, headers=auth("ann")
        )
        unknown = await eng.post(
            "/engagements", json={"target": "zed", "kind": "like"}, headers=auth("ann")
        )
        bad_kind = await eng.post(
            "/engagements", json={"target": "bob", "kind": "poke"}, headers=auth("ann")
        )
        third = await eng.post(
            "/engagements", json={"target": "cat", "kind": "message"}, headers=auth("ann")
        )
        per_minute = await eng.post(
            "/engagements", json={"target": "cat", "kind": "like"}, headers=auth("ann")
        )
        milestone = await eng.post(
            "/milestones", json={"kind": "promotion", "detail": "CTO"}, headers=auth("bob")
        )
        records = await read_topic(
            infra.kafka_bootstrap, TopicNames(namespace)(ENGAGEMENTS), expect=4
        )

    assert liked.status_code == commented.status_code == third.status_code == 201
    assert per_target.status_code == 429 and int(per_target.headers["retry-after"]) >= 1
    # A block either way answers exactly as a member that does not exist.
    assert blocked.status_code == to_blocker.status_code == unknown.status_code == 404
    assert blocked.text.replace("dan", "X") == to_blocker.text.replace("ann", "X")
    assert blocked.text.replace("dan", "X") == unknown.text.replace("zed", "X")
    assert self_like.status_code == 422 and bad_kind.status_code == 422
    assert unknown.status_code == 404
    # Three recorded in this minute (refusals do not count), so the fourth must wait.
    assert per_minute.status_code == 429
    assert milestone.status_code == 201
    events = [decode(r.value)[1] for r in records]
    assert ev.EngagementRecorded(actor="ann", target="bob", kind="like", ref="p1") in events
    assert ev.MilestoneAnnounced(member_id="bob", kind="promotion", detail="CTO") in events
    assert liked.json()["event_id"] in {str(decode(r.value)[0].event_id) for r in records}


@pytest.mark.parametrize("write_side", ["cluster"], indirect=True)
async def test_the_engagement_service_runs_on_a_redis_cluster_in_slot_groups(
    infra: Infra, namespace: str, write_side: WriteSide, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every actor's counters and events commit within the actor's slot group on a real
    three-node cluster; each group's outbox is relayed under its own lease, in order."""
    monkeypatch.setenv("RAPPORT_ENGAGEMENT_PER_TARGET_PER_DAY", "2")
    settings = EngagementSettings()
    actors = [f"actor{i}" for i in range(12)]
    assert len({settings.groups.of(a) for a in actors}) >= 4  # the actors span several groups
    # The member directory, as the connection service keeps it.
    directory = Directory.of(settings)
    cluster = connect(write_side.redis_url, cluster=True)
    await initialize(cluster)
    for m in (*actors, "star", "shy"):
        await cluster.sadd(*directory.is_active(m))
    await cluster.sadd(*directory.blocks_from("shy", "actor0"))
    await cluster.aclose()

    async def engage(client: httpx.AsyncClient, actor: str) -> list[int]:
        codes = []
        for n in range(3):  # one actor's engagements one after another: their order holds
            r = await client.post(
                "/engagements",
                json={"target": "star", "kind": "like", "ref": f"{actor}-{n}"},
                headers=auth(actor),
            )
            codes.append(r.status_code)
        return codes

    app = engagement_app()
    async with running_app(app) as eng:
        codes = await asyncio.gather(*(engage(eng, a) for a in actors))
        blocked = await eng.post(
            "/engagements", json={"target": "shy", "kind": "like"}, headers=auth("actor0")
        )
        records = await read_topic(
            infra.kafka_bootstrap, TopicNames(namespace)(ENGAGEMENTS), expect=2 * len(actors)
        )
        runtime = app.state.runtime
        backlog = await runtime.state.backlog()
        relays = len(runtime.state.streams)

    # The per-target limit (2 a day) holds per actor, on whichever node the actor lives.
    assert codes == [[201, 201, 429]] * len(actors)
    assert blocked.status_code == 404
    assert (backlog, relays) == (0, 8 + 1)  # a relay per group, and the pre-groups stream
    refs: dict[str, list[str]] = {}
    for r in records:
        event = decode(r.value)[1]
        assert isinstance(event, ev.EngagementRecorded)
        refs.setdefault(event.actor, []).append(str(event.ref))
    assert refs == {a: [f"{a}-0", f"{a}-1"] for a in actors}


@pytest.mark.parametrize("write_side", ["one node"], indirect=True)
async def test_events_left_in_the_outbox_of_before_the_slot_groups_are_published(
    infra: Infra, namespace: str, redis_client: Redis
) -> None:
    """An upgrade from the one outbox stream to one per group: what a stopped process left
    unpublished in the old stream still reaches the log."""
    settings = EngagementSettings()
    left = Envelope.wrap(
        ev.EngagementRecorded(actor="ann", target="bob", kind="like", ref="before"),
        producer="engagement",
    )
    old = RedisStateStore(redis_client, settings.key("engagement", "outbox"), settings.topics)
    assert await old.commit([], [left]) == "ok"
    async with running_app(engagement_app()):
        records = await read_topic(infra.kafka_bootstrap, settings.topics(ENGAGEMENTS), expect=1)
        backlog = await redis_client.xlen(settings.key("engagement", "outbox"))
    assert [decode(r.value)[0].event_id for r in records] == [left.event_id]
    assert backlog == 0
