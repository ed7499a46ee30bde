"""The connection service on the real broker and redis-server."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from services.connection import domain
from services.connection.domain import Member
from services.connection.main import create_app
from services.connection.store import ConnectionStore
from services.engagement.main import create_app as engagement_app
from shared import events as ev
from shared.commands import AggregateWrite
from shared.events import Envelope, decode
from shared.topics import CONNECTIONS, INVITATIONS, MEMBERS, TopicNames
from tests.conftest import WriteSide
from tests.helpers import Infra, auth, live_and_replayed, read_topic, running_app, wait_until

# Every test on one Redis node and on the 3-node cluster in slot groups (tests/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("service_env", "write_side")]


async def register(client: httpx.AsyncClient, member: str, industry: str = "Technology") -> dict:
    response = await client.post(
        "/members", json={"name": member.title(), "industry": industry}, headers=auth(member)
    )
    assert response.status_code == 201, response.text
    return response.json()


async def publish(infra: Infra, topic: str, envelope: Envelope) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topic,
            envelope.to_bytes(),
            key=envelope.key.encode(),
            headers=[("type", envelope.type.encode())],
        )
    finally:
        await producer.stop()


def events_of(records: list) -> list[ev.Event]:
    return [decode(r.value)[1] for r in records]


async def test_members_register_read_update_with_normalised_industry(
    infra: Infra, namespace: str
) -> None:
    async with running_app(create_app()) as client:
        created = await register(client, "ada", industry="  Financial   Services ")
        bo = await client.post(
            "/members", json={"name": "Bo", "industry": "financial services"}, headers=auth("bo")
        )
        again = await client.post(
            "/members", json={"name": "A", "industry": "x"}, headers=auth("ada")
        )
        as_other = await client.post(
            "/members", json={"member_id": "zed", "name": "Z", "industry": "x"}, headers=auth("ada")
        )
        got = await client.get("/members/bo", headers=auth("ada"))
        patched = await client.patch(
            "/members/ada", json={"industry": "HEALTHCARE", "title": "CTO"}, headers=auth("ada")
        )
        not_mine = await client.patch("/members/bo", json={"title": "x"}, headers=auth("ada"))
        unknown = await client.get("/members/nobody", headers=auth("ada"))

    assert created["member_id"] == "ada" and created["event_id"]
    assert bo.status_code == 201
    assert got.json()["industry"] == "Financial Services"  # grouped with the first spelling
    assert again.status_code == 409 and again.json()["error"]["code"] == "member_exists"
    assert as_other.status_code == 403
    assert patched.status_code == 200
    assert not_mine.status_code == 403
    assert unknown.status_code == 404
    records = await read_topic(infra.kafka_bootstrap, TopicNames(namespace)(MEMBERS), expect=3)
    ada_events = [e for e in events_of(records) if e.partition_key == "ada"]
    assert ada_events[-1] == ev.MemberProfileUpdated(
        member_id="ada", industry="HEALTHCARE", title="CTO", previous_industry="Financial Services"
    )
    assert all(dict(r.headers)["type"] == decode(r.value)[0].type.encode() for r in records)


async def test_accepted_invitation_becomes_one_connection_with_follows(
    infra: Infra, namespace: str
) -> None:
    topics = TopicNames(namespace)
    accepted = Envelope.wrap(
        ev.InvitationAccepted(invitation_id="inv1", sender="ann", recipient="bob"),
        producer="invitation",
        correlation_id="corr-1",
    )
    async with running_app(create_app()) as client:
        await register(client, "ann")
        await register(client, "bob")
        await publish(infra, topics(INVITATIONS), accepted)
        await publish(infra, topics(INVITATIONS), accepted)  # re-delivery
        records = await read_topic(infra.kafka_bootstrap, topics(CONNECTIONS), expect=1)
        removal = await client.delete("/connections/bob", headers=auth("ann"))
        records = await read_topic(infra.kafka_bootstrap, topics(CONNECTIONS), expect=4)
        metrics = (await client.get("/metrics")).text

    # The consumer reports its lag per partition it read: all caught up.
    lag = re.findall(
        rf'rapport_consumer_lag{{consumer="connection\.[a-z_]+",partition="\d+",'
        rf'topic="{re.escape(topics(INVITATIONS))}"}} (\S+)',
        metrics,
    )
    assert lag == ["0.0"], metrics
    envelope, first = decode(records[0].value)
    assert first == ev.ConnectionAccepted(member_a="ann", member_b="bob", invitation_id="inv1")
    assert envelope.causation_id == str(accepted.event_id)
    assert envelope.correlation_id == "corr-1"
    # The accept's follows come with ConnectionAccepted; the removal ends them explicitly.
    assert [type(e).__name__ for e in events_of(records)] == [
        "ConnectionAccepted",
        "ConnectionRemoved",
        "FollowStopped",
        "FollowStopped",
    ]
    assert removal.json()["event_ids"] == [str(decode(r.value)[0].event_id) for r in records[1:]]


async def test_rejection_when_blocked_reaches_the_topic(infra: Infra, namespace: str) -> None:
    topics = TopicNames(namespace)
    async with running_app(create_app()) as client:
        await register(client, "ann")
        await register(client, "bob")
        blocked = await client.post("/blocks/ann", headers=auth("bob"))
        follow = await client.put("/follows/bob", headers=auth("ann"))
        await publish(
            infra,
            topics(INVITATIONS),
            Envelope.wrap(
                ev.InvitationAccepted(invitation_id="i7", sender="ann", recipient="bob"),
                producer="x",
            ),
        )
        records = await read_topic(infra.kafka_bootstrap, topics(CONNECTIONS), expect=2)

    assert blocked.status_code == 200
    assert follow.status_code == 404 and follow.json()["error"]["code"] == "member_not_found"
    assert events_of(records) == [
        ev.MemberBlocked(blocker="bob", blocked="ann"),
        ev.ConnectionRejected(invitation_id="i7", sender="ann", recipient="bob", reason="blocked"),
    ]


async def test_cap_holds_under_100_concurrent_accepts() -> None:
    app = create_app()
    async with running_app(app):
        store = app.state.wired
        hub = Member(member_id="hub", name="Hub", industry="Technology", connections=29_950)
        await store.store.commit(
            [AggregateWrite.of(store.key("member", "hub"), 0, hub.model_dump(mode="json"))],
            [],
            group=store.groups.of("hub"),
        )
        others = [f"m{i}" for i in range(100)]
        for m in others:
            await store.run(domain.RegisterMember(member_id=m, name=m, industry="Technology"))
        outcomes = await asyncio.gather(
            *(
                store.accept(
                    ev.InvitationAccepted(invitation_id=f"i-{m}", sender=m, recipient="hub"),
                    cap=30_000,
                )
                for m in others
            )
        )
        final = await store.member("hub")

    accepted = [o for o in outcomes if o.first(ev.ConnectionAccepted)]
    rejected = [o for o in outcomes if o.first(ev.ConnectionRejected)]
    assert (len(accepted), len(rejected), final.connections) == (50, 50, 30_000)
    assert (len(accepted), len(rejected)) == (50, 50)
    assert all(
        json.loads(o.first(ev.ConnectionRejected).to_bytes())["payload"]["reason"] == "cap_reached"
        for o in rejected
    )
    assert len(await store.connections("hub")) == 50


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/members", {"name": "X"}),
        ("post", "/members", {"name": "X", "industry": "T", "surprise": 1}),
        ("post", "/members", {"name": 5, "industry": "T"}),
        ("post", "/members", {"member_id": "bad id!", "name": "X", "industry": "T"}),
        ("post", "/members", {"name": "X", "industry": "T" * 101}),
        ("patch", "/members/ann", {"name": ""}),
        ("put", "/follows/bad%20id", None),
        ("put", "/lists/" + "x" * 65 + "/members/bob", None),
    ],
)
# Validation at the edge, before any store: the same on every layout (one run is enough).
@pytest.mark.parametrize("write_side", ["one node"], indirect=True)
async def test_bad_input_is_a_4xx_and_writes_nothing(
    method: str, path: str, body: dict | None, state_client: Redis, namespace: str
) -> None:
    # Every key but the registry of running instances, which each process's heartbeat
    # writes on a timer, input or not (its first beat can land between the two reads).
    heartbeats = f"{namespace}rapport:instances"

    async def state_keys() -> list[str]:
        keys = state_client.scan_iter(match=f"{namespace}*", count=1000)
        return sorted([k async for k in keys if k != heartbeats])

    async with running_app(create_app()) as client:
        await register(client, "ann")
        before = await state_keys()
        response = await client.request(method, path, json=body, headers=auth("ann"))
        after = await state_keys()
    assert response.status_code == 422, response.text
    assert set(response.json()["error"]) == {"code", "message"}
    assert after == before


async def test_lists_follows_and_deactivation_through_http(infra: Infra, namespace: str) -> None:
    topics = TopicNames(namespace)
    async with running_app(create_app()) as client:
        for m in ("ann", "bob", "cat"):
            await register(client, m)
        store = client._transport.app.state.wired  # type: ignore[attr-defined]
        for i, other in enumerate(("bob", "cat")):
            accepted = ev.InvitationAccepted(invitation_id=f"i{i}", sender="ann", recipient=other)
            await store.accept(accepted, cap=30_000)
        not_connected = await client.put("/lists/close/members/cat", headers=auth("bob"))
        listed = await client.put("/lists/close/members/bob", headers=auth("ann"))
        again = await client.put("/lists/close/members/bob", headers=auth("ann"))
        unfollow = await client.delete("/follows/ann", headers=auth("bob"))
        follow_stranger = await client.put("/follows/cat", headers=auth("bob"))
        not_mine = await client.delete("/members/ann", headers=auth("bob"))
        gone = await client.delete("/members/ann", headers=auth("ann"))
        profile = await client.get("/members/ann", headers=auth("bob"))
        remove_again = await client.delete("/connections/ann", headers=auth("bob"))
        records = await read_topic(infra.kafka_bootstrap, topics(MEMBERS), expect=4)

    assert not_connected.status_code == 404
    assert listed.status_code == 200 and listed.json()["event_id"]
    assert again.status_code == 200 and again.json()["event_id"] is None  # already listed
    assert unfollow.status_code == 200 and follow_stranger.status_code == 200
    assert not_mine.status_code == 403
    assert gone.status_code == 200
    assert profile.status_code == 404
    assert remove_again.status_code == 404
    assert await store.connections("bob") == [] and await store.connections("cat") == []
    assert (await store.member("bob")).connections == 0
    assert any(isinstance(e, ev.MemberDeactivated) for e in events_of(records))


@pytest.mark.parametrize("write_side", ["cluster"], indirect=True)
async def test_the_connection_service_runs_on_a_redis_cluster_in_slot_groups(
    infra: Infra, namespace: str, write_side: WriteSide, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Members and pairs in their own slot groups on a real three-node cluster: accepts
    through the consumer hold places on both members (the cap stays exact), removals, blocks
    and a deactivation reach both members' sides; the engagement service on the same cluster
    reads the directory the connection service keeps there."""
    monkeypatch.setenv("RAPPORT_CONNECTION_CONNECTION_CAP", "4")
    topics = TopicNames(namespace)
    others = [f"m{i}" for i in range(8)]
    app = create_app()
    async with running_app(app) as conn, running_app(engagement_app()) as eng:
        store = app.state.wired
        assert len({store.groups.of(m) for m in ["hub", *others]}) >= 4
        for m in ["hub", *others]:
            await register(conn, m)
        # Eight accepted invitations to the hub at once, through the consumer: four places.
        for m in others:
            accepted = ev.InvitationAccepted(invitation_id=f"i-{m}", sender=m, recipient="hub")
            await publish(infra, topics(INVITATIONS), Envelope.wrap(accepted, producer="test"))
        decided = await read_topic(
            infra.kafka_bootstrap, topics(CONNECTIONS), expect=4 + 4, timeout=30
        )
        # Each member's side follows its pair's commit at once (the relay may be quicker).
        await wait_until(lambda: _has_connections(store, "hub", 4))
        connected = await store.connections("hub")
        listed = await conn.put(f"/lists/close/members/{connected[0]}", headers=auth("hub"))
        liked = await eng.post(
            "/engagements", json={"target": "hub", "kind": "like"}, headers=auth(connected[0])
        )
        blocked = await conn.post(f"/blocks/{connected[0]}", headers=auth("hub"))
        blocked_likes = await eng.post(
            "/engagements", json={"target": "hub", "kind": "like"}, headers=auth(connected[0])
        )
        removed = await conn.delete(f"/connections/{connected[1]}", headers=auth("hub"))
        gone = await conn.delete(f"/members/{connected[2]}", headers=auth(connected[2]))
        gone_likes = await eng.post(
            "/engagements", json={"target": "hub", "kind": "like"}, headers=auth(connected[2])
        )
        hub = await store.member("hub")
        unlisted = await conn.delete(f"/lists/close/members/{connected[0]}", headers=auth("hub"))
        counts = {m: (await store.member(m)).connections for m in connected}  # type: ignore[union-attr]
        runtime = app.state.runtime
        backlog = await runtime.state.backlog()
        relays = len(runtime.state.streams)
        live, replayed = await live_and_replayed(
            "connection", infra, namespace, write_side.redis_url
        )

    decisions = events_of(decided)
    outcomes = sorted(type(e).__name__ for e in decisions)
    assert outcomes == ["ConnectionAccepted"] * 4 + ["ConnectionRejected"] * 4
    assert {e.reason for e in decisions if isinstance(e, ev.ConnectionRejected)} == {"cap_reached"}
    assert len(connected) == 4
    assert listed.status_code == 200 and liked.status_code == 201
    assert blocked.status_code == 200 and blocked_likes.status_code == 404
    assert removed.status_code == 200 and gone.status_code == 200
    assert gone_likes.status_code == 403
    # The hub kept one of four: the block, the removal and the deactivation each took one.
    assert hub is not None and hub.connections == 1 and hub.places == {}
    assert counts == {connected[0]: 0, connected[1]: 0, connected[2]: 0, connected[3]: 1}
    # The block took the blocked member out of the hub's list, too.
    assert unlisted.status_code == 404 and unlisted.json()["error"]["code"] == "not_listed"
    assert (backlog, relays) == (0, 8 + 1)
    # What the sagas left in every group is what the log's events make of it (`rapport replay`).
    assert replayed == live


async def _has_connections(store: ConnectionStore, member: str, n: int) -> bool:
    return len(await store.connections(member)) == n
