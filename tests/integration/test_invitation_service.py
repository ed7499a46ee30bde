"""The invitation service with the connection service, on the real broker and redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from services.connection.main import create_app as connection_app
from services.invitation.consumers import expire_due
from services.invitation.main import create_app as invitation_app
from shared import events as ev
from shared.events import Envelope, decode
from shared.topics import CONNECTIONS, INVITATIONS, TopicNames, pair_key
from tests.conftest import WriteSide
from tests.helpers import (
    Infra,
    auth,
    live_and_replayed,
    publish_envelopes,
    read_topic,
    running_app,
    wait_until,
)

# Every test on one Redis node and on the 3-node cluster in slot groups (tests/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("service_env", "write_side")]


class Stack:
    def __init__(self, invitations: httpx.AsyncClient, connections: httpx.AsyncClient, app) -> None:
        self.inv = invitations
        self.conn = connections
        self.store = app.state.wired
        self.runtime = app.state.runtime

    async def members(self, *ids: str) -> None:
        for m in ids:
            r = await self.conn.post(
                "/members", json={"name": m, "industry": "Tech"}, headers=auth(m)
            )
            assert r.status_code == 201, r.text

    async def invite(self, sender: str, to: str, message: str | None = None) -> httpx.Response:
        body = {"to": to} if message is None else {"to": to, "message": message}
        return await self.inv.post("/invitations", json=body, headers=auth(sender))

    async def answer(self, action: str, invitation_id: str, actor: str) -> httpx.Response:
        return await self.inv.post(f"/invitations/{invitation_id}/{action}", headers=auth(actor))

    async def status(self, invitation_id: str, actor: str) -> str:
        r = await self.inv.get(f"/invitations/{invitation_id}", headers=auth(actor))
        return r.json()["status"]


@asynccontextmanager
async def stack() -> AsyncIterator[Stack]:
    inv_app = invitation_app()
    async with running_app(inv_app) as inv, running_app(connection_app()) as conn:
        yield Stack(inv, conn, inv_app)


async def test_scripted_scenario_emits_exactly_the_expected_events(
    infra: Infra, namespace: str
) -> None:
    async with stack() as s:
        await s.members("ann", "bob", "cat")
        first = (await s.invite("ann", "bob", "Hi Bob")).json()
        accepted = await s.answer("accept", first["invitation_id"], "bob")
        # Once the connection service agrees, the pair counts as connected.
        await wait_until(lambda: _status_is(s, first["invitation_id"], "ann", "accepted"))
        again = await s.invite("ann", "bob")
        cat = (await s.invite("cat", "ann")).json()
        withdrawn = await s.answer("withdraw", cat["invitation_id"], "cat")
        cooldown = await s.invite("cat", "ann")
        declined_id = (await s.invite("bob", "cat")).json()["invitation_id"]
        declined = await s.answer("decline", declined_id, "cat")
        seen_by_sender = await s.status(declined_id, "bob")
        records = await read_topic(
            infra.kafka_bootstrap, TopicNames(namespace)(INVITATIONS), expect=6
        )

    assert first["status"] == "pending" and first["event_id"]
    assert accepted.status_code == 200 and accepted.json()["status"] == "accepted"
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_connected"
    assert withdrawn.status_code == 200
    assert cooldown.status_code == 409 and cooldown.json()["error"]["code"] == "reinvite_cooldown"
    assert declined.json()["status"] == "declined"
    assert seen_by_sender == "pending"  # the sender of a declined invitation is not told

    by_pair: dict[str, list[str]] = {}
    for record in records:
        envelope, event = decode(record.value)
        assert envelope.producer == "invitation"
        assert envelope.key == record.key.decode() == event.partition_key
        assert dict(record.headers)["type"] == envelope.type.encode()
        by_pair.setdefault(envelope.key, []).append(envelope.type)
    assert by_pair == {
        pair_key("ann", "bob"): ["InvitationSent", "InvitationAccepted"],
        pair_key("ann", "cat"): ["InvitationSent", "InvitationWithdrawn"],
        pair_key("bob", "cat"): ["InvitationSent", "InvitationDeclined"],
    }
    assert decode(records[0].value)[0].event_id is not None


async def _status_is(s: Stack, invitation_id: str, actor: str, status: str) -> bool:
    return await s.status(invitation_id, actor) == status and bool(
        (await s.invite(actor, "bob" if actor == "ann" else "ann")).status_code == 409
    )


async def test_inviting_back_connects_both(infra: Infra, namespace: str) -> None:
    async with stack() as s:
        await s.members("ann", "bob")
        first = (await s.invite("ann", "bob")).json()
        back = await s.invite("bob", "ann")
        assert back.status_code == 201
        assert back.json()["invitation_id"] == first["invitation_id"]
        assert back.json()["status"] == "accepted"
        connections = await read_topic(
            infra.kafka_bootstrap, TopicNames(namespace)("rapport.connections"), expect=1
        )
    assert isinstance(decode(connections[0].value)[1], ev.ConnectionAccepted)


async def test_fifty_concurrent_invitations_for_one_pair_make_one(
    infra: Infra, namespace: str
) -> None:
    async with stack() as s:
        await s.members("ann", "bob")
        responses = await asyncio.gather(*(s.invite("ann", "bob") for _ in range(50)))
        records = await read_topic(
            infra.kafka_bootstrap, TopicNames(namespace)(INVITATIONS), expect=1
        )
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * 49
    assert [decode(r.value)[0].type for r in records] == ["InvitationSent"]


async def test_a_member_invited_by_many_at_once_keeps_an_exact_pending_list(
    write_side: WriteSide,
) -> None:
    """Thirty members invite one at once: every invitation lands and the pending list holds
    exactly the open ones. On one node, no send waits on another (the list is a set, not an
    aggregate each send rewrites), so none is retried."""
    senders = [f"fan{i}" for i in range(30)]
    labels = {"service": "invitation", "command": "SendInvitation"}
    async with stack() as s:
        await s.members("star", *senders)
        before = REGISTRY.get_sample_value("rapport_command_conflicts_total", labels) or 0
        sent = await asyncio.gather(*(s.invite(m, "star") for m in senders))
        retried = (
            REGISTRY.get_sample_value("rapport_command_conflicts_total", labels) or 0
        ) - before
        ids = [r.json()["invitation_id"] for r in sent if r.status_code == 201]
        assert len(ids) == len(senders), [r.text for r in sent if r.status_code != 201]
        assert await s.store.pending_of("star") == sorted(ids)
        answers = await asyncio.gather(
            *(s.answer("accept", i, "star") for i in ids[:10]),
            *(s.answer("decline", i, "star") for i in ids[10:15]),
        )
        assert {r.status_code for r in answers} == {200}
        # Accepted ones leave both lists; a declined one stays until it expires, since its
        # sender still sees it pending.
        assert await s.store.pending_of("star") == sorted(ids[10:])
        assert await s.store.pending_of(senders[0]) == []
        assert await s.store.pending_of(senders[10]) == [ids[10]]
    if not write_side.cluster:
        assert retried == 0


async def test_concurrent_accept_and_withdraw_have_one_outcome() -> None:
    others = [f"b{i}" for i in range(10)]
    async with stack() as s:
        await s.members("ann", *others)
        for other in others:
            inv = (await s.invite("ann", other)).json()["invitation_id"]
            accept, withdraw = await asyncio.gather(
                s.answer("accept", inv, other), s.answer("withdraw", inv, "ann")
            )
            assert sorted([accept.status_code, withdraw.status_code]) == [200, 409]
            final = await s.status(inv, "ann")
            assert final == ("accepted" if accept.status_code == 200 else "withdrawn")


async def test_rejection_from_the_connection_service_changes_the_invitation(
    monkeypatch: pytest.MonkeyPatch, infra: Infra, namespace: str
) -> None:
    monkeypatch.setenv("RAPPORT_CONNECTION_CONNECTION_CAP", "1")
    async with stack() as s:
        await s.members("ann", "bob", "cat")
        first = (await s.invite("ann", "bob")).json()["invitation_id"]
        await s.answer("accept", first, "bob")
        # The connection service has made ann's one connection. (The invitation service
        # counts an accepted pair as connected at once, and the connection service keeps
        # order per pair only: without this wait, cat's acceptance may take the place.)
        made = await read_topic(infra.kafka_bootstrap, TopicNames(namespace)(CONNECTIONS), expect=1)
        assert isinstance(decode(made[0].value)[1], ev.ConnectionAccepted)
        second = (await s.invite("cat", "ann")).json()["invitation_id"]
        await s.answer("accept", second, "ann")
        await wait_until(lambda: _status(s, second, "cat", "rejected"))
        # The rejected pair is free again: cat may invite ann anew.
        retry = await s.invite("cat", "ann")
    assert retry.status_code == 201


async def _status(s: Stack, invitation_id: str, actor: str, status: str) -> bool:
    return await s.status(invitation_id, actor) == status


async def test_block_cancels_pending_and_never_says_so() -> None:
    async with stack() as s:
        await s.members("ann", "bob")
        pending = (await s.invite("ann", "bob")).json()["invitation_id"]
        before = (await s.inv.get(f"/invitations/{pending}", headers=auth("ann"))).json()
        assert (await s.conn.post("/blocks/ann", headers=auth("bob"))).status_code == 200
        await wait_until(lambda: _status(s, pending, "bob", "cancelled"))  # the blocker knows
        seen_by_ann = (await s.inv.get(f"/invitations/{pending}", headers=auth("ann"))).json()
        blocked_invite = await s.invite("ann", "bob")
        blocker_invite = await s.invite("bob", "ann")
        nobody = await s.invite("ann", "zed")
    # The blocked sender sees exactly what they saw before: an unanswered invitation.
    assert seen_by_ann == before and seen_by_ann["status"] == "pending"
    # Either way, inviting answers as for a member that does not exist.
    answers = {
        (r.status_code, r.text.replace(name, "X"))
        for r, name in ((blocked_invite, "bob"), (blocker_invite, "ann"), (nobody, "zed"))
    }
    assert answers == {(404, nobody.text.replace("zed", "X"))}


async def test_visibility_rate_limit_and_report_restriction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAPPORT_INVITATION_WEEKLY_LIMIT", "3")
    monkeypatch.setenv("RAPPORT_INVITATION_REPORT_THRESHOLD", "2")
    async with stack() as s:
        await s.members("ann", "m1", "m2", "m3", "m4", "eve")
        ids = [(await s.invite("ann", m)).json()["invitation_id"] for m in ("m1", "m2", "m3")]
        limited = await s.invite("ann", "m4")
        stranger = await s.inv.get(f"/invitations/{ids[0]}", headers=auth("eve"))
        unknown = await s.inv.get("/invitations/nope", headers=auth("eve"))
        await s.answer("report", ids[0], "m1")
        await s.answer("report", ids[1], "m2")
        restricted = await s.invite("ann", "eve")
        unknown_member = await s.invite("eve", "ghost")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 6 * 86400
    assert stranger.status_code == unknown.status_code == 404
    assert stranger.json() == unknown.json()
    assert (
        restricted.status_code == 403 and restricted.json()["error"]["code"] == "sender_restricted"
    )
    assert unknown_member.status_code == 404


async def test_expiry_sweep_on_two_replicas_expires_once(infra: Infra, namespace: str) -> None:
    async with stack() as s:
        await s.members("ann", "bob")
        inv = (await s.invite("ann", "bob")).json()["invitation_id"]
        later = datetime.now(UTC) + timedelta(days=181)
        counts = await asyncio.gather(expire_due(s.store, later), expire_due(s.store, later))
        status = await s.status(inv, "bob")
        records = await read_topic(
            infra.kafka_bootstrap, TopicNames(namespace)(INVITATIONS), expect=2
        )
    assert sorted(counts) == [0, 1]
    assert status == "expired"
    assert [decode(r.value)[0].type for r in records] == ["InvitationSent", "InvitationExpired"]


@pytest.mark.parametrize(
    "body",
    [
        {"to": "bob", "message": "x" * 301},
        {"to": "ann"},
        {"to": "bad id"},
        {"to": 5},
        {"to": "bob", "extra": True},
        {},
        [],
    ],
)
# Validation at the edge, before any store: the same on every layout (one run is enough).
@pytest.mark.parametrize("write_side", ["one node"], indirect=True)
async def test_bad_invitations_are_4xx_and_write_nothing(
    body: object, state_client: Redis, namespace: str
) -> None:
    pattern = f"{namespace}rapport:invitation:*"
    async with stack() as s:
        await s.members("ann", "bob")
        before = {k async for k in state_client.scan_iter(match=pattern, count=1000)}
        response = await s.inv.post("/invitations", json=body, headers=auth("ann"))
        after = {k async for k in state_client.scan_iter(match=pattern, count=1000)}
    assert response.status_code == 422, response.text
    assert set(response.json()["error"]) == {"code", "message"}
    assert after == before


@pytest.mark.parametrize("write_side", ["cluster"], indirect=True)
async def test_both_services_run_on_a_redis_cluster_in_slot_groups(
    infra: Infra, namespace: str, write_side: WriteSide, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pairs, senders and members in their own slot groups on a real three-node cluster:
    the weekly limit holds exactly under concurrent sends (places held in the sender's
    window), one invitation per pair, accepts become connections, pending lists follow."""
    monkeypatch.setenv("RAPPORT_INVITATION_WEEKLY_LIMIT", "3")
    others = [f"p{i}" for i in range(6)]
    async with stack() as s:
        store = s.store
        assert len({store.groups.of(pair_key("ann", o)) for o in others}) >= 3
        await s.members("ann", "bob", "cat", *others)
        sends = await asyncio.gather(*(s.invite("ann", o) for o in others))
        pair_race = await asyncio.gather(*(s.invite("bob", "cat") for _ in range(50)))
        to = {r.json()["invitation_id"]: r.json()["recipient"] for r in sends if r.is_success}
        sent = list(to)
        accepted = await s.answer("accept", sent[0], to[sent[0]])
        reported = await s.answer("report", sent[1], to[sent[1]])
        await wait_until(lambda: _status(s, sent[0], "ann", "accepted"))
        made = await read_topic(infra.kafka_bootstrap, TopicNames(namespace)(CONNECTIONS), expect=1)
        pending_ann = await store.pending_of("ann")
        pending_first = await store.pending_of(to[sent[0]])
        sender = (
            await store.store.load([store.key(store.groups.of("ann"), "sender", "ann")])
        ).rows[0]
        runtime = s.runtime
        backlog = await runtime.state.backlog()
        relays = len(runtime.state.streams)
        live, replayed = await live_and_replayed(
            "invitation", infra, namespace, write_side.redis_url
        )

    # The weekly limit (3) holds exactly, on whichever node each pair and the sender live.
    assert sorted(r.status_code for r in sends) == [201] * 3 + [429] * 3
    # One invitation for the pair. With only 3 places in bob's window, a concurrent send
    # may find them all held by the others' sends and answer 429 rather than 409.
    race = sorted(r.status_code for r in pair_race)
    assert race[0] == 201 and set(race[1:]) <= {409, 429} and race.count(201) == 1
    assert accepted.status_code == 200 and reported.status_code == 200
    assert isinstance(decode(made[0].value)[1], ev.ConnectionAccepted)
    # The accepted one left both pending lists; the reported one stays pending to ann.
    assert pending_ann == sorted(sent[1:]) and pending_first == []
    assert sender.state["reports"] == 1 and sender.state["held"] == {}
    assert len(sender.state["recent"]) == 3
    assert all(i.startswith(store.groups.of(pair_key("ann", to[i])) + "-") for i in sent)
    assert (backlog, relays) == (0, 8 + 1)
    assert replayed == live  # what the sagas left is what the log's events make of it


async def test_a_connection_made_elsewhere_is_folded_into_the_pair(
    infra: Infra, namespace: str
) -> None:
    # The connection service's answer to an accepted invitation is not folded (the accept
    # made the pair connected already); a connection another producer made, with no
    # invitation, is: the pair then refuses an invitation as already connected.
    imported = Envelope.wrap(ev.ConnectionAccepted(member_a="ann", member_b="bob"), producer="crm")
    async with stack() as s:
        await s.members("ann", "bob")
        await publish_envelopes(infra.kafka_bootstrap, namespace, [imported])
        await wait_until(lambda: _pair_connected(s, "ann", "bob"))
        refused = await s.invite("ann", "bob")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "already_connected"


async def _pair_connected(s: Stack, a: str, b: str) -> bool:
    store, pair = s.store, pair_key(a, b)
    row = (await store.store.load([store.key(store.groups.of(pair), "pair", pair)])).rows[0]
    return bool(row.state and row.state.get("connected"))
