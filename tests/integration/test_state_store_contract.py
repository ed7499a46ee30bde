"""One contract for every `StateStore`: the Redis one on a real redis-server, and the
in-memory fake the unit tests use. Both run the same cases, so the fake cannot drift.

Also the kit's command loop on each store: decide, evolve, commit, retry on a conflict."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from shared import events as ev
from shared.commands import (
    AggregateWrite,
    CommandLoop,
    CommitResult,
    FollowKey,
    IndexOp,
    InMemoryStateStore,
    Plan,
    Rows,
    StateStore,
)
from shared.domain import Conflict
from shared.events import Envelope
from shared.groups import SlotGroups
from shared.outbox import RedisStateStore
from shared.redis import connect, initialize
from shared.topics import TopicNames


def _follow(i: int) -> Envelope:
    return Envelope.wrap(ev.FollowStarted(follower=f"a{i}", followee="b"), producer="test")


# A tiny write model for the loop: a counter per member that refuses to pass a limit.
class Counter(BaseModel):
    model_config = ConfigDict(frozen=True)
    follows: int = 0


@dataclass(frozen=True)
class CounterSlice:
    now: datetime
    counter: Counter


@dataclass(frozen=True)
class Follow:
    follower: str
    limit: int = 1000


class CounterModel:
    producer = "test"

    def __init__(self, prefix: str, group: str | None = None) -> None:
        self.prefix = prefix
        self.group = group

    async def plan(self, command: Follow | None, observed: ev.Event | None) -> Plan:
        assert command is not None
        return Plan({"counter": (f"{self.prefix}counter:b", Counter)}, group=self.group)

    def slice(self, command: Follow | None, rows: Rows, now: datetime) -> CounterSlice:
        return CounterSlice(now, rows.get("counter") or Counter())

    def aggregates(self, state: CounterSlice) -> Mapping[str, BaseModel | None]:
        return {"counter": state.counter}

    def decide(self, state: CounterSlice, command: Follow) -> list[ev.Event]:
        if state.counter.follows >= command.limit:
            raise Conflict("limit reached", "limit")
        return [ev.FollowStarted(follower=command.follower, followee="b")]

    def evolve(self, state: CounterSlice, event: ev.Event) -> CounterSlice:
        return replace(state, counter=Counter(follows=state.counter.follows + 1))

    def index_ops(self, events: Sequence[ev.Event], now: datetime) -> list[IndexOp]:
        return [
            IndexOp("SADD", f"{self.prefix}followers:b", e.follower)  # type: ignore[attr-defined]
            for e in events
        ]


class StateStoreContract:
    """The cases; a subclass provides `store` (and `prefix` for its keys)."""

    prefix = "c:"
    group: str | None = None  # the slot group every key of the cases is in, if any

    async def commit(self, store: StateStore, *args: Any, **kwargs: Any) -> CommitResult:
        return await store.commit(*args, group=self.group, **kwargs)

    async def test_absent_aggregates_load_as_version_zero(self, store: StateStore) -> None:
        snap = await store.load([f"{self.prefix}nothing"], [(f"{self.prefix}s", "x")])
        assert [(r.version, r.state) for r in snap.rows] == [(0, None)]
        assert snap.checks == [False]

    async def test_commit_writes_states_events_and_indexes_together(
        self, store: StateStore
    ) -> None:
        key, members = f"{self.prefix}agg", f"{self.prefix}members"
        result = await self.commit(
            store,
            [AggregateWrite.of(key, 0, {"n": 1})],
            [_follow(1), _follow(2)],
            index_ops=[IndexOp("SADD", members, "ann"), IndexOp("SADD", members, "bob")],
        )
        assert result == "ok"
        snap = await store.load([key], [(members, "ann"), (members, "zed")])
        assert [(r.version, r.state) for r in snap.rows] == [(1, {"n": 1})]
        assert snap.checks == [True, False]
        assert await store.set_members(members) == {"ann", "bob"}
        assert await store.backlog() == 2

    async def test_a_stale_version_changes_nothing(self, store: StateStore) -> None:
        key, members = f"{self.prefix}agg", f"{self.prefix}members"
        assert await self.commit(store, [AggregateWrite.of(key, 0, {"n": 1})], [_follow(1)]) == "ok"
        stale = await self.commit(
            store,
            [AggregateWrite.of(key, 0, {"n": 99})],
            [_follow(2)],
            index_ops=[IndexOp("SADD", members, "eve")],
        )
        assert stale == "conflict"
        [row0] = (await store.load([key])).rows
        assert (row0.version, row0.state) == (1, {"n": 1})
        assert await store.set_members(members) == set()
        assert await store.backlog() == 1

    async def test_an_unchanged_write_checks_its_version_and_writes_nothing(
        self, store: StateStore
    ) -> None:
        kept, absent = f"{self.prefix}kept", f"{self.prefix}absent"
        assert (
            await self.commit(store, [AggregateWrite.of(kept, 0, {"n": 1})], [_follow(1)]) == "ok"
        )
        checked = [
            AggregateWrite(kept, 1),
            AggregateWrite(absent, 0),
        ]
        assert await self.commit(store, checked, [_follow(2)]) == "ok"
        snap = await store.load([kept, absent])
        # Left as they were: the version does not move, an absent one is not created.
        assert [(r.version, r.state) for r in snap.rows] == [(1, {"n": 1}), (0, None)]
        # Still guarded: a decision that read an older version commits nothing.
        stale = [AggregateWrite(kept, 0), AggregateWrite.of(absent, 0, {"n": 5})]
        assert await self.commit(store, stale, [_follow(3)]) == "conflict"
        assert [(r.version, r.state) for r in (await store.load([absent])).rows] == [(0, None)]
        assert await store.backlog() == 2

    async def test_a_dedupe_key_commits_once(self, store: StateStore) -> None:
        key, mark = f"{self.prefix}agg", f"{self.prefix}seen:e1"
        first = await self.commit(
            store, [AggregateWrite.of(key, 0, 1)], [_follow(1)], dedupe_key=mark
        )
        assert first == "ok"
        again = await self.commit(
            store, [AggregateWrite.of(key, 1, 2)], [_follow(1)], dedupe_key=mark
        )
        assert again == "duplicate"
        [row0] = (await store.load([key])).rows
        assert (row0.version, row0.state) == (1, 1)
        assert await store.backlog() == 1

    async def test_a_followed_aggregate_loads_in_the_same_snapshot(self, store: StateStore) -> None:
        pointer, target = f"{self.prefix}pointer", f"{self.prefix}target:t1"
        await self.commit(
            store,
            [
                AggregateWrite.of(pointer, 0, {"next": "t1", "n": 5}),
                AggregateWrite.of(target, 0, 7),
            ],
            [],
        )
        snap = await store.load(
            [pointer, f"{self.prefix}absent"],
            follows=[
                FollowKey(0, "next", f"{self.prefix}target:"),
                FollowKey(0, "n", f"{self.prefix}target:"),  # not a string: nothing
                FollowKey(1, "next", f"{self.prefix}target:"),  # absent source: nothing
            ],
        )
        assert [(i, r.version, r.state) for i, r in snap.followed] == [
            ("t1", 1, 7),
            (None, 0, None),
            (None, 0, None),
        ]

    async def test_sorted_index_answers_lowest_scores_first_up_to_a_bound(
        self, store: StateStore
    ) -> None:
        due = f"{self.prefix}due"
        ops = [IndexOp("ZADD", due, m, score) for m, score in (("c", 30), ("a", 10), ("b", 20))]
        assert await self.commit(store, [], [], index_ops=ops) == "ok"
        assert await store.lowest(due, 25, 10) == ["a", "b"]
        assert await store.lowest(due, 100, 2) == ["a", "b"]
        await self.commit(store, [], [], index_ops=[IndexOp("ZREM", due, "a")])
        assert await store.lowest(due, 100, 10) == ["b", "c"]

    async def test_removing_from_a_set_and_deleting_an_index(self, store: StateStore) -> None:
        members = f"{self.prefix}members"
        await self.commit(store, [], [], index_ops=[IndexOp("SADD", members, m) for m in "xyz"])
        await self.commit(store, [], [], index_ops=[IndexOp("SREM", members, "y")])
        assert await store.set_members(members) == {"x", "z"}
        await self.commit(store, [], [], index_ops=[IndexOp("DEL", members)])
        assert await store.set_members(members) == set()

    async def test_claim_keeps_the_first_value(self, store: StateStore) -> None:
        names = f"{self.prefix}names"
        assert await store.claim(names, "finance", "Finance") == "Finance"
        assert await store.claim(names, "finance", "FINANCE") == "Finance"

    async def test_the_command_loop_serialises_concurrent_commands(self, store: StateStore) -> None:
        loop = CommandLoop(store, CounterModel(self.prefix, self.group))
        outcomes = await asyncio.gather(*(loop.run(Follow(f"m{i}")) for i in range(20)))
        assert all(len(o.envelopes) == 1 for o in outcomes)
        [row0] = (await store.load([f"{self.prefix}counter:b"])).rows
        assert (row0.version, row0.state) == (20, {"follows": 20})
        assert len(await store.set_members(f"{self.prefix}followers:b")) == 20
        assert await store.backlog() == 20

    async def test_the_command_loop_commits_nothing_when_the_domain_refuses(
        self, store: StateStore
    ) -> None:
        loop = CommandLoop(store, CounterModel(self.prefix, self.group))
        await loop.run(Follow("m1", limit=1))
        with pytest.raises(Conflict):
            await loop.run(Follow("m2", limit=1))
        assert await store.set_members(f"{self.prefix}followers:b") == {"m1"}
        assert await store.backlog() == 1

    async def test_the_command_loop_applies_a_consumed_event_once(self, store: StateStore) -> None:
        loop = CommandLoop(store, CounterModel(self.prefix, self.group))
        mark = f"{self.prefix}seen:e9"
        first = await loop.run(Follow("m1"), dedupe_key=mark, now=datetime.now(UTC))
        again = await loop.run(Follow("m1"), dedupe_key=mark)
        assert (len(first.envelopes), again.duplicate, again.envelopes) == (1, True, [])
        assert await store.backlog() == 1


class TestInMemoryStateStore(StateStoreContract):
    @pytest.fixture
    def store(self) -> StateStore:
        return InMemoryStateStore()


@pytest.mark.integration
class TestRedisStateStore(StateStoreContract):
    @pytest_asyncio.fixture
    async def store(self, redis_client: Redis, namespace: str) -> AsyncIterator[StateStore]:
        self.prefix = f"{namespace}c:"
        yield RedisStateStore(redis_client, f"{namespace}outbox", TopicNames(namespace))


class InSlotGroups(StateStoreContract):
    """The cases with every key in one slot group of eight."""

    def grouped(self, client: Redis, namespace: str, cluster: bool) -> RedisStateStore:
        self.prefix = f"{namespace}{{{self.group}}}:c:"
        topics = TopicNames(namespace)
        return RedisStateStore(
            client, f"{namespace}outbox", topics, groups=SlotGroups(8), cluster=cluster
        )


@pytest.mark.integration
class TestRedisStateStoreInSlotGroups(InSlotGroups):
    """On one node: each group's events in its own outbox stream."""

    group = "g0003"

    @pytest_asyncio.fixture
    async def store(self, redis_client: Redis, namespace: str) -> AsyncIterator[StateStore]:
        yield self.grouped(redis_client, namespace, cluster=False)


@pytest.mark.integration
class TestRedisStateStoreOnACluster(InSlotGroups):
    """On a real three-node Redis Cluster: every commit within one hash slot."""

    group = "g0005"

    @pytest_asyncio.fixture
    async def store(self, redis_cluster_url: str, namespace: str) -> AsyncIterator[StateStore]:
        client = connect(redis_cluster_url, cluster=True)
        await initialize(client)
        yield self.grouped(client, namespace, cluster=True)
        await client.aclose()
