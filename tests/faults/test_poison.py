"""One bad record never stops a partition: every poison kind, in the projection and in every
write-service consumer, goes to the DLQ with its reason while the good record behind it (same
partition) is applied. The state then equals a clean rebuild from the log: the projection's
read models a rebuild, a write service's state a replay."""

from __future__ import annotations

import json

import pytest

from rapport.dlq import DeadLetters
from services.connection.main import create_app as connection_app
from services.invitation.main import create_app as invitation_app
from services.projection import queries
from services.projection.main import create_app as projection_app
from shared import events as ev
from shared.events import Envelope
from shared.topics import CONNECTIONS, INVITATIONS, TopicNames, dlq, pair_key
from tests.helpers import (
    Infra,
    auth,
    live_and_replayed,
    publish_envelopes,
    publish_raw,
    read_topic,
    rebuild_digest,
    running_app,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("service_env")]

Raw = tuple[bytes, bytes, list[tuple[str, bytes]]]  # key, value, headers


def _raw(envelope: Envelope, **changes: object) -> bytes:
    body = json.loads(envelope.to_bytes())
    body.update(changes)
    return json.dumps(body).encode()


def poison_records(
    good: Envelope, wrong_topic_event: ev.Event, self_pair: ev.Event, other_key_event: ev.Event
) -> dict:
    """Each poison kind as it would arrive on `good`'s topic and partition (its key), with
    the reason the DLQ must give. `other_key_event` is of `good`'s topic with another key."""
    key = good.key.encode()
    other_key = Envelope.wrap(other_key_event, producer="x")
    headers = [("type", good.type.encode())]
    return {
        "not_json": ((key, b"{not json", headers), "invalid"),
        "unknown_type": ((key, _raw(good, type="MemberTeleported"), headers), "unknown_type"),
        "future_version": ((key, _raw(good, schema_version=99), headers), "unsupported_version"),
        "far_future": (
            (key, _raw(good, occurred_at="2400-01-01T00:00:00Z"), headers),
            "implausible_time",
        ),
        "far_past": (
            (key, _raw(good, occurred_at="1900-01-01T00:00:00Z"), headers),
            "implausible_time",
        ),
        "near_1mb": ((key, _raw(good, filler="x" * 900_000), headers), "too_large"),
        "wrong_topic": (
            (key, Envelope.wrap(wrong_topic_event, producer="x").to_bytes(), headers),
            "wrong_topic",
        ),
        "key_mismatch": ((key, other_key.to_bytes(), headers), "key_mismatch"),
        "domain": ((key, _self_pair_bytes(self_pair), headers), "invalid"),
    }


def _self_pair_bytes(event: ev.Event) -> bytes:
    """A pair event naming one member twice: schema-valid fields, refused by the rules."""
    envelope = json.loads(Envelope.wrap(event, producer="x").to_bytes())
    for a, b in (("member_a", "member_b"), ("sender", "recipient")):
        if a in envelope["payload"]:
            envelope["payload"][b] = envelope["payload"][a]
            envelope["key"] = pair_key(envelope["payload"][a], envelope["payload"][a])
    return json.dumps(envelope).encode()


async def _dead_letters(infra: Infra, topic: str, expect: int) -> dict[str, list[str]]:
    """DLQ records of `topic`: each consumer's reasons."""
    records = await read_topic(infra.kafka_bootstrap, dlq(topic), expect=expect, timeout=30)
    by_consumer: dict[str, list[str]] = {}
    for r in records:
        headers = dict(r.headers)
        by_consumer.setdefault(headers["dlq_consumer"].decode(), []).append(
            headers["dlq_reason"].decode()
        )
    return by_consumer


def _assert_reasons(reasons: list[str], expected: dict[str, str]) -> None:
    """A dead letter for each poison record, each with the reason it deserves."""
    assert len(set(reasons)) == len(expected), reasons
    for kind, start in expected.items():
        assert any(r.startswith(start) for r in reasons), (kind, start, sorted(reasons))


async def test_the_projection_sets_each_poison_aside_and_applies_what_follows(
    infra: Infra, namespace: str
) -> None:
    topics = TopicNames(namespace)
    good = Envelope.wrap(ev.ConnectionAccepted(member_a="ann", member_b="bob"), producer="t")
    poison = poison_records(
        good,
        wrong_topic_event=ev.MemberRegistered(member_id="ann", name="A", industry="X"),
        self_pair=ev.ConnectionAccepted(member_a="ann", member_b="bob"),
        other_key_event=ev.ConnectionAccepted(member_a="ann", member_b="cy"),
    )
    # The wrong-topic record is a members event arriving on the connections topic.
    register = [
        Envelope.wrap(ev.MemberRegistered(member_id=m, name=m, industry="Tech"), producer="t")
        for m in ("ann", "bob")
    ]
    app = projection_app()
    async with running_app(app) as client:
        await publish_envelopes(infra.kafka_bootstrap, namespace, register)
        await publish_raw(
            infra.kafka_bootstrap,
            topics(CONNECTIONS),
            [record for record, _ in poison.values()]
            + [(good.key.encode(), good.to_bytes(), [("type", b"ConnectionAccepted")])],
        )
        degree = await client.get(
            "/members/ann/degree/bob",
            params={"after": str(good.event_id), "wait_ms": 20000},
            headers=auth("ann"),
        )
        dead = await _dead_letters(infra, topics(CONNECTIONS), expect=len(poison))
        status = (await client.get("/projection/status", headers=auth())).json()
        store = app.state.wired.store
        live = await queries.status.digest(store)
        rebuilt = await rebuild_digest(client, store)

    assert degree.status_code == 200 and degree.json()["degree"] == 1
    assert set(dead) == {"projection"}
    _assert_reasons(dead["projection"], {kind: start for kind, (_, start) in poison.items()})
    assert status["dlq"] == {topics(CONNECTIONS): len(poison)}
    assert rebuilt == live  # nothing lost, nothing double-counted


# bob's half of the connection cannot be written: his connection times (a hash, checked one
# by one) or his connections (a set, checked with the chunk's other sets in one call).
@pytest.mark.parametrize(("broken", "intact"), [("ca", "c"), ("c", "ca")])
async def test_an_event_redis_refuses_is_set_aside_whole_and_replays_once_mended(
    infra: Infra, namespace: str, broken: str, intact: str
) -> None:
    """Redis keeps what a script wrote before a command failed; the projection checks every
    key of a chunk first, so a refused connection leaves neither side of it. Once the key is
    mended, replaying the DLQ applies it, and the read models equal a clean rebuild."""
    topics = TopicNames(namespace)
    register = [
        Envelope.wrap(ev.MemberRegistered(member_id=m, name=m, industry="Tech"), producer="t")
        for m in ("ann", "bob", "cy")
    ]
    refused = Envelope.wrap(ev.ConnectionAccepted(member_a="ann", member_b="bob"), producer="t")
    after = Envelope.wrap(ev.ConnectionAccepted(member_a="ann", member_b="cy"), producer="t")
    app = projection_app()
    async with running_app(app) as client:
        await publish_envelopes(infra.kafka_bootstrap, namespace, register)
        registered = await client.get(
            "/members/ann/connections",
            params={"after": ",".join(str(e.event_id) for e in register), "wait_ms": 20000},
            headers=auth("ann"),
        )
        assert registered.status_code == 200  # bob's profile is in before his key breaks
        store = app.state.wired.store
        ks = await store.current()
        await store.redis.set(ks.member(broken, "bob"), "not a set or a hash")
        await publish_envelopes(infra.kafka_bootstrap, namespace, [refused, after])
        applied = await client.get(
            "/members/ann/degree/cy",
            params={"after": str(after.event_id), "wait_ms": 20000},
            headers=auth("ann"),
        )
        dead = await read_topic(infra.kafka_bootstrap, dlq(topics(CONNECTIONS)), expect=1)
        ann_before = (await client.get("/members/ann/connections", headers=auth("ann"))).json()
        bob_before = await store.redis.exists(ks.member(intact, "bob"))

        await store.redis.delete(ks.member(broken, "bob"))  # the operator mends the key
        replayed = await DeadLetters(infra.kafka_bootstrap, namespace).replay(CONNECTIONS)
        degree = await client.get(
            "/members/ann/degree/bob",
            params={"after": str(refused.event_id), "wait_ms": 20000},
            headers=auth("ann"),
        )
        ann_after = await client.get("/members/ann/summary", headers=auth("ann"))
        live = await queries.status.digest(store)
        rebuilt = await rebuild_digest(client, store)

    assert applied.json()["degree"] == 1  # the partition went on
    reason = dict(dead[0].headers)["dlq_reason"].decode()
    assert reason.startswith("apply_failed") and "WRONGTYPE" in reason, reason
    assert [c["member_id"] for c in ann_before["items"]] == ["cy"]  # no half: ann lacks bob
    assert bob_before == 0  # nor bob's other key
    assert replayed == (1, 0)
    assert degree.json()["degree"] == 1
    assert ann_after.json()["connections"] == 2
    assert rebuilt == live


async def test_the_connection_service_sets_each_poison_aside_and_connects_what_follows(
    infra: Infra, namespace: str
) -> None:
    topics = TopicNames(namespace)
    async with running_app(connection_app()) as conn:
        for m in ("ann", "bob"):
            registered = await conn.post(
                "/members", json={"name": m, "industry": "Tech"}, headers=auth(m)
            )
            assert registered.status_code == 201
        good = Envelope.wrap(
            ev.InvitationAccepted(invitation_id="i1", sender="ann", recipient="bob"),
            producer="invitation",
        )
        poison = poison_records(
            good,
            wrong_topic_event=ev.ConnectionAccepted(member_a="ann", member_b="bob"),
            self_pair=ev.InvitationAccepted(invitation_id="i2", sender="ann", recipient="bob"),
            other_key_event=ev.InvitationAccepted(invitation_id="i3", sender="ann", recipient="cy"),
        )
        await publish_raw(
            infra.kafka_bootstrap,
            topics(INVITATIONS),
            [record for record, _ in poison.values()]
            + [(good.key.encode(), good.to_bytes(), [("type", b"InvitationAccepted")])],
        )
        decided = await read_topic(infra.kafka_bootstrap, topics(CONNECTIONS), expect=1)
        dead = await _dead_letters(infra, topics(INVITATIONS), expect=len(poison))
        live, replayed = await live_and_replayed("connection", infra, namespace)

    assert "ConnectionAccepted" in {dict(r.headers)["type"].decode() for r in decided}
    assert set(dead) == {"connection.invitations"}
    _assert_reasons(
        dead["connection.invitations"], {kind: start for kind, (_, start) in poison.items()}
    )
    assert replayed == live  # the state is what the log's valid events make


async def test_the_invitation_service_sets_each_poison_aside_and_folds_what_follows(
    infra: Infra, namespace: str
) -> None:
    topics = TopicNames(namespace)
    async with running_app(connection_app()) as conn, running_app(invitation_app()) as inv:
        for m in ("ann", "bob"):
            registered = await conn.post(
                "/members", json={"name": m, "industry": "Tech"}, headers=auth(m)
            )
            assert registered.status_code == 201
        good = Envelope.wrap(ev.ConnectionAccepted(member_a="ann", member_b="bob"), producer="x")
        poison = poison_records(
            good,
            wrong_topic_event=ev.MemberDeactivated(member_id="ann"),
            self_pair=ev.ConnectionAccepted(member_a="ann", member_b="bob"),
            other_key_event=ev.ConnectionAccepted(member_a="ann", member_b="cy"),
        )
        await publish_raw(
            infra.kafka_bootstrap,
            topics(CONNECTIONS),
            [record for record, _ in poison.values()]
            + [(good.key.encode(), good.to_bytes(), [("type", b"ConnectionAccepted")])],
        )

        async def connected() -> bool:
            again = await inv.post("/invitations", json={"to": "bob"}, headers=auth("ann"))
            return again.status_code == 409 and again.json()["error"]["code"] == (
                "already_connected"
            )

        await wait_until(connected, timeout=20)
        # With one slot group the connection service does not read its own pair events
        # (its sagas commit at once), so only the invitation service sets them aside.
        dead = await _dead_letters(infra, topics(CONNECTIONS), expect=len(poison))
        live, replayed = await live_and_replayed("invitation", infra, namespace)

    assert set(dead) == {"invitation.decisions"}
    for reasons in dead.values():
        _assert_reasons(reasons, {kind: start for kind, (_, start) in poison.items()})
    assert replayed == live
