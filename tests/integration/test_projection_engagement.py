"""Engagement-aware views and external producers, through the real broker and redis-server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.projection.main import create_app
from shared import events as ev
from shared.events import Envelope
from shared.topics import ENGAGEMENTS, TopicNames, dlq
from tests.helpers import Infra, auth, publish_envelopes, read_topic, running_app

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("service_env")]

NOW = datetime.now(UTC)


def at(days_ago: float, event: ev.Event) -> Envelope:
    return Envelope.wrap(event, producer="external-crm", occurred_at=NOW - timedelta(days=days_ago))


def connect(a: str, b: str, days_ago: float) -> Envelope:
    return at(days_ago, ev.ConnectionAccepted(member_a=min(a, b), member_b=max(a, b)))


async def test_engaged_stale_reach_out_and_congratulate(infra: Infra, namespace: str) -> None:
    events = [
        connect("ann", "bob", 700),
        connect("ann", "cat", 700),
        connect("ann", "dan", 10),
        connect("ann", "eve", 200),
        connect("ann", "fay", 400),
        at(10, ev.EngagementRecorded(actor="ann", target="bob", kind="message")),
        *(
            at(120, ev.EngagementRecorded(actor="cat", target="ann", kind="recommend"))
            for _ in range(3)
        ),
        at(3, ev.MilestoneAnnounced(member_id="dan", kind="promotion", detail="CTO")),
        at(5, ev.MilestoneAnnounced(member_id="bob", kind="new_job", detail="Acme")),
        at(2, ev.EngagementRecorded(actor="ann", target="bob", kind="congratulate")),
        at(20, ev.MilestoneAnnounced(member_id="fay", kind="work_anniversary")),
    ]
    async with running_app(create_app()) as client:
        await publish_envelopes(infra.kafka_bootstrap, namespace, events)
        params = {"after": str(events[-1].event_id), "wait_ms": 15000}
        await client.get("/members/ann/summary", params=params, headers=auth("ann"))
        for e in events:  # every topic, not just the last one's partition
            await client.get(
                "/members/ann/summary", params={"after": str(e.event_id)}, headers=auth("ann")
            )
        view = (await client.get("/members/ann/engagement", headers=auth("ann"))).json()
        summary = (await client.get("/members/ann/summary", headers=auth("ann"))).json()

    names = {k: [i["member_id"] for i in v] for k, v in view.items()}
    assert names["engaged"] == ["cat", "bob"]  # cat by score (3 recommendations), bob by recency
    assert names["top"] == ["cat", "bob"]
    assert names["stale"] == ["fay"]  # connected 400 days, never a word; eve only 200 days
    assert names["reach_out"] == ["cat"]  # engaged, then silent for 120 days
    assert [(p["member_id"], p["milestone"]) for p in view["congratulate"]] == [
        ("dan", "promotion")
    ]
    assert summary["engaged_connections"] == 2


async def test_invalid_external_engagement_goes_to_the_dlq_and_the_next_is_applied(
    infra: Infra, namespace: str
) -> None:
    topic = TopicNames(namespace)(ENGAGEMENTS)
    good = at(0, ev.EngagementRecorded(actor="ann", target="bob", kind="like"))
    bad = json.loads(good.to_bytes())
    bad["payload"]["kind"] = "poke"
    bad["event_id"] = "00000000-0000-4000-8000-000000000001"
    from aiokafka import AIOKafkaProducer

    async with running_app(create_app()) as client:
        producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
        await producer.start()
        await producer.send_and_wait(topic, json.dumps(bad).encode(), key=b"ann")
        await producer.stop()
        await publish_envelopes(infra.kafka_bootstrap, namespace, [connect("ann", "bob", 1), good])
        applied = await client.get(
            "/members/ann/engagement",
            params={"after": str(good.event_id), "wait_ms": 15000},
            headers=auth("ann"),
        )
        status = (await client.get("/projection/status", headers=auth())).json()
        dead = await read_topic(infra.kafka_bootstrap, dlq(topic), expect=1)

    assert applied.status_code == 200
    assert [i["member_id"] for i in applied.json()["engaged"]] == ["bob"]
    reason = dict(dead[0].headers)["dlq_reason"].decode()
    assert reason.startswith("invalid: payload") or "kind" in reason
    assert status["dlq"] == {topic: 1}


async def test_an_event_that_cannot_be_applied_goes_to_the_dlq_and_the_next_is_applied(
    infra: Infra, namespace: str
) -> None:
    topic = TopicNames(namespace)(ENGAGEMENTS)
    # Valid by the schema, but its time lies far past anything plausible (its score would
    # overflow the scoring model).
    poison = Envelope.wrap(
        ev.EngagementRecorded(actor="ann", target="bob", kind="like"),
        producer="test",
        occurred_at=datetime(2400, 1, 1, tzinfo=UTC),
    )
    good = at(0, ev.EngagementRecorded(actor="ann", target="bob", kind="comment"))
    async with running_app(create_app()) as client:
        await publish_envelopes(
            infra.kafka_bootstrap, namespace, [connect("ann", "bob", 1), poison, good]
        )
        applied = await client.get(
            "/members/ann/engagement",
            params={"after": str(good.event_id), "wait_ms": 15000},
            headers=auth("ann"),
        )
        dead = await read_topic(infra.kafka_bootstrap, dlq(topic), expect=1)

    assert applied.status_code == 200
    assert [i["member_id"] for i in applied.json()["engaged"]] == ["bob"]
    headers = dict(dead[0].headers)
    assert headers["dlq_reason"].decode().startswith("implausible_time")
    assert headers["type"] == b"EngagementRecorded"


async def test_after_times_out_with_409_for_an_unknown_event() -> None:
    async with running_app(create_app()) as client:
        response = await client.get(
            "/members/ann/summary",
            params={"after": "00000000-0000-4000-8000-0000000000ff", "wait_ms": 100},
            headers=auth("ann"),
        )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_yet_applied"


async def test_after_names_several_events_and_answers_once_all_are_applied(
    infra: Infra, namespace: str
) -> None:
    """A client's writes since its last read, on any partitions: one `?after=` waits for
    them all, and refuses while any is missing."""
    events = [connect("ann", other, 1) for other in ("bob", "cat", "dan", "eve")]
    missing = "00000000-0000-4000-8000-0000000000fe"
    ids = ",".join(str(e.event_id) for e in events)
    async with running_app(create_app()) as client:
        await publish_envelopes(infra.kafka_bootstrap, namespace, events)
        applied = await client.get(
            "/members/ann/summary", params={"after": ids, "wait_ms": 15000}, headers=auth("ann")
        )
        one_missing = await client.get(
            "/members/ann/summary",
            params={"after": f"{ids},{missing}", "wait_ms": 100},
            headers=auth("ann"),
        )
        too_many = await client.get(
            "/members/ann/summary", params={"after": ",".join([missing] * 33)}, headers=auth("ann")
        )
    # Every connection is there, whichever partition each went to.
    assert applied.status_code == 200 and applied.json()["connections"] == 4
    assert one_missing.status_code == 409
    assert one_missing.json()["error"]["code"] == "not_yet_applied"
    assert too_many.status_code == 422


@pytest.mark.parametrize(
    "path",
    [
        "/members/bob/connections",
        "/members/bob/summary",
        "/members/bob/degree/cat",
        "/members/bob/mutual/cat",
        "/members/bob/suggestions",
        "/members/bob/network",
        "/members/bob/invitations",
        "/members/bob/engagement",
        "/members/bob/degrees?ids=cat",
        "/members/bob/paths/cat",
    ],
)
async def test_member_views_are_private(path: str) -> None:
    async with running_app(create_app()) as client:
        as_ann = await client.get(path, headers=auth("ann"))
        no_token = await client.get(path)
        wrong_token = await client.get(path, headers=auth("bob", token="forged"))
        as_bob = await client.get(path, headers=auth("bob"))
    assert as_ann.status_code == 403
    assert no_token.status_code == wrong_token.status_code == 401
    assert as_bob.status_code == 200
