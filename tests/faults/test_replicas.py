"""Projection replicas agree: two replicas share the partitions (the second joins mid-stream,
a rebalance), members change industry and connect at the same time, and a replica that
stalled after reading its batch applies it late, after the partition moved on. The read
model ends equal to one replica rebuilding from zero: no stale degree, nobody counted in two
industries, no old connection re-added after its removal."""

from __future__ import annotations

import json
import time

import pytest
from aiokafka import ConsumerRecord

from services.projection import domain, queries
from services.projection.main import create_app as projection_app
from shared import events as ev
from shared.consumer import admit
from shared.events import Envelope
from shared.topics import CONNECTIONS, MEMBERS, TopicNames
from tests.helpers import (
    Infra,
    auth,
    publish_envelopes,
    read_topic,
    rebuild_digest,
    running_app,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("service_env")]

MEMBERS_ = [f"m{i:02d}" for i in range(24)]
INDUSTRIES = ("Tech", "Finance", "Health")


def wrap(event: ev.Event) -> Envelope:
    return Envelope.wrap(event, producer="test")


def first_half() -> list[Envelope]:
    out = [
        wrap(ev.MemberRegistered(member_id=m, name=m, industry=INDUSTRIES[i % 3]))
        for i, m in enumerate(MEMBERS_)
    ]
    out += [
        wrap(ev.ConnectionAccepted(member_a=a, member_b=b))
        for i, a in enumerate(MEMBERS_)
        for b in MEMBERS_[i + 1 : i + 4]
    ]
    return out


def second_half() -> list[Envelope]:
    """Everyone moves industry while connections are added and removed around them."""
    out: list[Envelope] = []
    for i, m in enumerate(MEMBERS_):
        out.append(
            wrap(
                ev.MemberProfileUpdated(
                    member_id=m,
                    industry=INDUSTRIES[(i + 1) % 3],
                    previous_industry=INDUSTRIES[i % 3],
                )
            )
        )
        partner = MEMBERS_[(i + 7) % len(MEMBERS_)]
        if partner != m:
            out.append(
                wrap(ev.ConnectionAccepted(member_a=min(m, partner), member_b=max(m, partner)))
            )
        nxt = MEMBERS_[i + 1] if i + 1 < len(MEMBERS_) else None
        if nxt:
            out.append(wrap(ev.ConnectionRemoved(member_a=m, member_b=nxt, removed_by=m)))
    return out


async def _applied(client, count: int) -> bool:  # type: ignore[no-untyped-def]
    status = (await client.get("/projection/status", headers=auth())).json()
    return bool(status["events_applied"] >= count)


async def test_two_replicas_and_a_stalled_one_end_equal_to_a_rebuild(
    infra: Infra, namespace: str
) -> None:
    topics = TopicNames(namespace)
    early, late = first_half(), second_half()
    first, second = projection_app(), projection_app()
    async with running_app(first) as a:
        await publish_envelopes(infra.kafka_bootstrap, namespace, early)
        await wait_until(lambda: _applied(a, len(early)), timeout=30)
        # The early records, as a replica fetched them before it stalled.
        fetched: list[ConsumerRecord[bytes, bytes]] = []
        for topic in (MEMBERS, CONNECTIONS):
            fetched += await read_topic(infra.kafka_bootstrap, topics(topic), expect=1)
        async with running_app(second) as b:  # joins mid-stream: a rebalance
            await publish_envelopes(infra.kafka_bootstrap, namespace, late)
            await wait_until(lambda: _applied(b, len(early) + len(late)), timeout=30)
            store = first.state.wired.store
            version = await store.version()
            # The stalled replica wakes up and applies what it had fetched, long after the
            # partitions moved on: registrations in the old industries, the connections
            # since removed.
            stale = []
            for r in fetched:
                envelope, event = admit(r)
                source = f"{r.topic}:{r.partition}#0"
                stale.append(domain.to_ops(envelope, event, store.scoring, source, r.offset))
            stale_positions = {f"{r.topic}:{r.partition}": r.offset + 1 for r in fetched}
            # Its "already applied?" check ran before it stalled, when none of them was.
            applier = first.state.wired.applier

            async def checked_before_the_stall(ks, batch):  # type: ignore[no-untyped-def]
                return batch

            applier._not_yet_applied = checked_before_the_stall
            await applier.apply(version, stale, stale_positions)
            live = await queries.status.digest(store)
            figures = (await b.get("/industries", headers=auth())).json()["industries"]
            degree = await b.get(f"/members/{MEMBERS_[0]}/summary", headers=auth(MEMBERS_[0]))
            rebuilt = await rebuild_digest(b, store)

    assert live == rebuilt
    counted = sum(i["members"] for i in figures)
    assert counted == len(MEMBERS_)  # nobody counted in two industries
    assert degree.status_code == 200


async def test_a_late_older_industry_snapshot_changes_nothing(infra: Infra, namespace: str) -> None:
    """Two replicas applied ann's connections (partitions of their own) at once: the one
    holding the newer change count writes ann's figures; the older snapshot, arriving last,
    neither lowers her degree nor counts her where she no longer is."""
    app = projection_app()
    async with running_app(app):
        store = app.state.wired.store
        ks = store.keyspace(await store.version())
        industry, counted = store.script("industry"), store.script("counted")

        async def write(name: str, entries: list) -> None:  # type: ignore[type-arg]
            await industry(keys=ks.industry_keys(name), args=[json.dumps(entries)])

        await store.redis.set(ks.member("iv", "ann"), 6)
        # The newer snapshot lands first: ann moved from Finance to Tech.
        await write("Finance", [["ann", -1, 6]])
        await write("Tech", [["ann", 2, 6]])
        await write("Tech", [["ann", 1, 5]])  # the older one after it
        await write("Finance", [["ann", 1, 4]])  # from before she moved to Tech
        stale = await counted(
            keys=[ks.member("m", "ann"), ks.member("iv", "ann")], args=["Finance", 4]
        )
        current = await counted(
            keys=[ks.member("m", "ann"), ks.member("iv", "ann")], args=["Tech", 6]
        )
        tech = await store.redis.hgetall(ks.industry("Tech"))
        finance = await store.redis.hgetall(ks.industry("Finance"))
        sums = [await store.redis.get(ks.industry_sum(n)) for n in ("Tech", "Finance")]
        counted_in = await store.redis.hget(ks.member("m", "ann"), "ci")

    # Tech counts one member of degree 2, Finance nobody (and no connection).
    assert (tech, finance, sums) == ({"2": "1"}, {}, ["2", None])
    assert (stale, current, counted_in) == (0, 1, "Tech")


async def test_a_late_chunk_the_positions_are_past_changes_nothing_even_once_its_marks_expired(
    infra: Infra, namespace: str
) -> None:
    """A replica that stalled so long that the applied-marks of its chunk expired: the stored
    positions alone keep its old connection from coming back after its removal."""
    topic = TopicNames(namespace)(CONNECTIONS)
    source = f"{topic}:0#0"
    app = projection_app()
    async with running_app(app) as client:
        store, applier = app.state.wired.store, app.state.wired.applier
        version = await store.version()
        ks = store.keyspace(version)

        def at(offset: int, event: ev.Event) -> domain.Applied:
            return domain.to_ops(wrap(event), event, store.scoring, source, offset)

        added = at(0, ev.ConnectionAccepted(member_a="ann", member_b="bob"))
        removed = at(1, ev.ConnectionRemoved(member_a="ann", member_b="bob", removed_by="ann"))
        await applier.apply(version, [added], {f"{topic}:0": 1})
        await applier.apply(version, [removed], {f"{topic}:0": 2})
        await store.redis.hdel(ks.marks(store.mark_period()), added.event_id)  # expired
        await applier.apply(version, [added], {f"{topic}:0": 1})  # the stalled replica
        mutual = await client.get("/members/ann/connections", headers=auth("ann"))
        status = (await client.get("/projection/status", headers=auth())).json()

    assert mutual.json()["items"] == []
    assert status["positions"][f"{topic}:0"] == 2 and status["events_applied"] == 2


async def test_an_event_published_again_is_applied_once_while_its_mark_lives(
    infra: Infra, namespace: str
) -> None:
    """Marks live in one hash per period of the dedupe TTL: an event the relay published
    again (a new offset) is skipped in the period after its mark's too, and applied again
    only once that mark's hash expired (two periods on)."""
    topic = TopicNames(namespace)(CONNECTIONS)
    app = projection_app()
    async with running_app(app) as client:
        store, applier = app.state.wired.store, app.state.wired.applier
        version = await store.version()
        ks, ttl = store.keyspace(version), store.settings.dedupe_ttl_s
        now = applier.store.mark_period()
        event = ev.FollowStarted(follower="ann", followee="bob")
        envelope = wrap(event)

        async def publish_at(offset: int, period: int) -> int:
            """The event at `offset`, applied in `period`; how many events were new."""
            applier.store.mark_period = lambda: period  # type: ignore[method-assign]
            again = domain.to_ops(envelope, event, store.scoring, f"{topic}:0#0", offset)
            return int(await applier.apply(version, [again], {f"{topic}:0": offset + 1}))

        applied = [await publish_at(0, now), await publish_at(1, now), await publish_at(2, now + 1)]
        expires_in = await store.redis.ttl(ks.marks(now))
        expired = await publish_at(3, now + 3)  # the period's hash is gone by then
        status = (await client.get("/projection/status", headers=auth())).json()

    assert applied == [1, 0, 0] and expired == 1
    assert (now + 2) * ttl - expires_in - 5 <= int(time.time()) <= (now + 2) * ttl - expires_in + 5
    assert status["events_applied"] == 2


async def test_after_reads_the_live_periods_the_decision_awaited_and_an_older_builds_marks(
    infra: Infra, namespace: str
) -> None:
    """`?after=` answers from the marks of the period before, this one and the one after (not
    an older one), waits for an accepted invitation's decision, and reads the key per event
    that a build before the periods wrote, so an upgrade keeps no client waiting."""
    app = projection_app()
    async with running_app(app):
        store = app.state.wired.store
        ks, now, r = await store.current(), store.mark_period(), store.redis
        await r.hset(ks.marks(now - 1), "before", "1")
        await r.hset(ks.marks(now + 1), "ahead", "1")
        await r.hset(ks.marks(now - 2), "past", "1")
        await r.hset(ks.marks(now), "accepted", "w")
        await r.set(f"{ks.prefix}seen{{g}}:old", "1")
        await r.set(f"{ks.prefix}seen{{g}}:old-accepted", "w")
        live = await store.applied(["before", "ahead"])
        past = await store.applied(["before", "past"])
        awaiting = [await store.applied(["accepted"]), await store.applied(["old-accepted"])]
        await r.hset(ks.settled(now - 1), "accepted", "1")
        await r.set(f"{ks.prefix}settled{{g}}:old-accepted", "1")
        decided = await store.applied(["accepted", "old", "old-accepted", "ahead"])

    assert live and not past
    assert awaiting == [False, False] and decided


async def test_a_chunk_that_overtakes_the_one_sent_before_it_does_nothing(
    infra: Infra, namespace: str
) -> None:
    """Two chunks in flight on two connections: the second, run first, must neither apply
    nor move a position; sent again after the first, it applies."""
    topic = TopicNames(namespace)(CONNECTIONS)
    app = projection_app()
    async with running_app(app) as client:
        store, applier = app.state.wired.store, app.state.wired.applier
        version = await store.version()
        first = ev.ConnectionAccepted(member_a="ann", member_b="bob")
        second = ev.ConnectionRemoved(member_a="ann", member_b="bob", removed_by="bob")
        ops = [
            domain.to_ops(wrap(e), e, store.scoring, f"{topic}:0#0", offset)
            for offset, e in enumerate([first, second])
        ]
        end = {f"{topic}:0": 2}
        overtook = await applier.apply(version, ops[1:], end, after="t:1", token="t:2")
        before = (await client.get("/projection/status", headers=auth())).json()
        await applier.apply(version, ops[:1], {f"{topic}:0": 1}, token="t:1")
        again = await applier.apply(version, ops[1:], end, after="t:1", token="t:2")
        connections = await client.get("/members/bob/connections", headers=auth("bob"))

    assert overtook == -1
    assert before["events_applied"] == 0 and before["positions"] == {}
    assert again == 1 and connections.json()["items"] == []
