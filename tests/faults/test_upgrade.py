"""A rolling upgrade: a newer producer already sends events with a field this version does
not know (in the payload and in the envelope). The projection and the connection service,
not yet upgraded, apply them; nothing is dead-lettered."""

from __future__ import annotations

import json

import pytest

from services.connection.main import create_app as connection_app
from services.projection import queries
from services.projection.main import create_app as projection_app
from services.projection.store import READ_MODEL_FORMAT
from shared import events as ev
from shared.events import Envelope
from shared.topics import CONNECTIONS, INVITATIONS, TopicNames
from tests.helpers import (
    Infra,
    auth,
    publish_envelopes,
    publish_raw,
    read_topic,
    rebuild_digest,
    running_app,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("service_env")]


def from_a_newer_producer(event: ev.Event) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    envelope = Envelope.wrap(event, producer="crm-v2")
    body = json.loads(envelope.to_bytes())
    body["payload"]["source_campaign"] = "autumn"  # an optional field added in v2
    body["trace_parent"] = "00-4bf92f3577b34da6-00f067aa0ba902b7-01"
    return envelope.key.encode(), json.dumps(body).encode(), [("type", envelope.type.encode())]


async def test_events_with_fields_added_by_a_newer_producer_are_applied(
    infra: Infra, namespace: str
) -> None:
    topics = TopicNames(namespace)
    app = projection_app()
    async with running_app(app) as projection, running_app(connection_app()) as conn:
        for m in ("ann", "bob", "cat"):
            registered = await conn.post(
                "/members", json={"name": m, "industry": "Tech"}, headers=auth(m)
            )
            assert registered.status_code == 201
        newer_connection = ev.ConnectionAccepted(member_a="ann", member_b="bob")
        key, value, headers = from_a_newer_producer(newer_connection)
        await publish_raw(infra.kafka_bootstrap, topics(CONNECTIONS), [(key, value, headers)])
        accepted = ev.InvitationAccepted(invitation_id="i9", sender="ann", recipient="cat")
        await publish_raw(
            infra.kafka_bootstrap, topics(INVITATIONS), [from_a_newer_producer(accepted)]
        )
        event_id = json.loads(value)["event_id"]
        degree = await projection.get(
            "/members/ann/degree/bob",
            params={"after": event_id, "wait_ms": 20000},
            headers=auth("ann"),
        )
        decided = await read_topic(infra.kafka_bootstrap, topics(CONNECTIONS), expect=2)
        status = (await projection.get("/projection/status", headers=auth())).json()
        store = app.state.wired.store
        live = await queries.status.digest(store)
        rebuilt = await rebuild_digest(projection, store)

    assert degree.json()["degree"] == 1
    # The connection service, on the older version, turned the accepted invitation into a
    # connection too.
    assert any(
        json.loads(r.value)["type"] == "ConnectionAccepted"
        and json.loads(r.value)["payload"].get("invitation_id") == "i9"
        for r in decided
    )
    assert status["dlq"] == {}  # nothing set aside
    assert rebuilt == live


async def test_read_models_of_an_older_format_are_rebuilt_in_this_one(
    infra: Infra, namespace: str
) -> None:
    """A build before the formats kept every follow as a set entry of its own; this one keeps a
    connection's in `c` alone. Upgraded onto such read models, it rebuilds them by itself,
    and the counts a member sees come out right again."""
    history = [
        Envelope.wrap(ev.ConnectionAccepted(member_a="ann", member_b="bob"), producer="test"),
        Envelope.wrap(ev.ConnectionAccepted(member_a="ann", member_b="cat"), producer="test"),
        Envelope.wrap(ev.FollowStopped(follower="ann", followee="bob"), producer="test"),
        Envelope.wrap(ev.FollowStarted(follower="ann", followee="dan"), producer="test"),
    ]
    app = projection_app()
    async with running_app(app) as projection:
        await publish_envelopes(infra.kafka_bootstrap, namespace, history)
        params = {"after": str(history[-1].event_id), "wait_ms": 20000}
        fresh = await projection.get("/members/ann/summary", params=params, headers=auth("ann"))
        wired = app.state.wired
        store, rebuilder = wired.store, wired.rebuilder
        before = await store.version()
        ks = store.keyspace(before)
        assert await store.redis.get(ks.format) == str(READ_MODEL_FORMAT)
        # As the older build left the same history: follows as sets, no format recorded.
        await store.redis.delete(ks.format, *(ks.member(k, "ann") for k in ("fgn", "fwn")))
        await store.redis.sadd(ks.member("fg", "ann"), "cat", "dan")
        await store.redis.sadd(ks.member("fw", "ann"), "bob", "cat")
        stale = await projection.get("/members/ann/summary", headers=auth("ann"))

        # What every replica runs every 10 s (its first run, at start-up, found the format
        # current); it may have run already here.
        started = await rebuilder.upgrade()
        state = await store.redis.hget(store.rebuild_key, "state")
        assert started or state in ("running", "done")
        assert not await rebuilder.upgrade()  # one rebuild

        async def rebuilt() -> bool:
            status = (await projection.get("/projection/status", headers=auth())).json()
            return bool(status["rebuild"]["state"] == "done")

        await wait_until(rebuilt, timeout=30)
        after = await projection.get("/members/ann/summary", headers=auth("ann"))
        version = await store.version()
        recorded = await store.redis.get(store.keyspace(version).format)

    counts = ("connections", "followers", "following")
    assert {k: fresh.json()[k] for k in counts} == {
        "connections": 2,
        "followers": 2,
        "following": 2,
    }
    # Read as this build's format, the older one's sets count ann as following bob again.
    assert stale.json()["following"] == 3
    assert version > before and recorded == str(READ_MODEL_FORMAT)
    assert {k: after.json()[k] for k in counts} == {k: fresh.json()[k] for k in counts}
