"""A rolling upgrade: a newer producer already sends events with a field this version does
not know (in the payload and in the envelope). The projection and the connection service,
not yet upgraded, apply them; nothing is dead-lettered."""

from __future__ import annotations

import json

import pytest

from services.connection.main import create_app as connection_app
from services.projection import queries
from services.projection.main import create_app as projection_app
from shared import events as ev
from shared.events import Envelope
from shared.topics import CONNECTIONS, INVITATIONS, TopicNames
from tests.helpers import Infra, auth, publish_raw, read_topic, rebuild_digest, running_app

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
