"""Random event histories, delivered shuffled across topics and with duplicates, give the same
read model as a reference built in plain Python (real redis-server, the projection's applier)."""

from __future__ import annotations

import itertools
import random
import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from services.projection import domain, queries
from services.projection.apply import BatchApplier
from services.projection.queries.paths import rounded
from services.projection.store import ReadModelStore
from shared import events as ev
from shared.events import Envelope
from shared.scoring import ScoringModel
from shared.settings import ProjectionSettings
from tests.helpers import Infra, random_id

pytestmark = pytest.mark.integration

MEMBERS = [f"m{i}" for i in range(8)]
# Not canonical: the projection groups industries by the name events carry, and compares
# them case- and spacing-insensitively only where a rule says so (suggestion boosts).
INDUSTRIES = ["Technology", "Finance", "Health", "technology", "Finance "]
ACTIONS = [
    *("register", "connect", "connect", "remove", "industry", "deactivate", "block", "unblock"),
    *("follow", "unfollow", "engage"),
]
SCORING = ScoringModel()


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes
    headers: tuple = ()


class Reference:
    """What the read model must say, computed the obvious way."""

    def __init__(self) -> None:
        self.industry: dict[str, str] = {}
        self.active: set[str] = set()
        self.connections: dict[str, set[str]] = {m: set() for m in MEMBERS}
        self.blocks: set[tuple[str, str]] = set()  # (blocker, blocked)
        self.follows: set[tuple[str, str]] = set()  # (follower, followee)
        self.scores: Counter[tuple[str, str]] = Counter()  # stored engagement per ordered pair

    def blocked_either(self, a: str, b: str) -> bool:
        return (a, b) in self.blocks or (b, a) in self.blocks

    def degree(self, a: str, b: str) -> int | None:
        """Breadth-first, up to 3; a block either way reads as none."""
        if a == b:
            return 0
        if self.blocked_either(a, b):
            return None
        seen, frontier = {a}, {a}
        for depth in (1, 2, 3):
            frontier = {y for x in frontier for y in self.connections[x]} - seen
            if b in frontier:
                return depth
            seen |= frontier
        return None

    def suggestions(self, a: str, limit: int) -> list[tuple[str, int, float, list[str]]]:
        """People `a` may know, ranked by the domain's rule over every candidate."""
        counts = Counter(y for x in self.connections[a] for y in self.connections[x])
        for x in (a, *self.connections[a], *(m for m in MEMBERS if self.blocked_either(a, m))):
            counts.pop(x, None)
        pool = Counter({c: n for c, n in counts.items() if c in self.active})
        profiles = {m: {"industry": self.industry.get(m)} for m in pool}
        me = {"industry": self.industry.get(a)}
        return domain.rank_suggestions(me, pool, profiles, limit)

    def paths(self, a: str, b: str, limit: int) -> list[list[str]]:
        """Shortest paths (up to 3 steps) avoiding members blocked by or blocking either end,
        the most engaged first (stored scores summed along the path), then by members."""
        if a == b or self.blocked_either(a, b):
            return []
        if b in self.connections[a]:
            return [[a, b]]
        avoid = {x for pair in self.blocks for x in pair if {a, b} & set(pair)} - {a, b}
        found = [[a, x, b] for x in self.connections[a] & self.connections[b] if x not in avoid]
        if not found:
            found = [
                [a, x, y, b]
                for x in self.connections[a] - avoid
                for y in (self.connections[x] & self.connections[b]) - avoid - {a}
            ]

        def score(path: list[str]) -> float:
            return rounded(sum(self.scores[(x, y)] for x, y in itertools.pairwise(path)))

        return sorted(found, key=lambda p: (-score(p), ">".join(p)))[:limit]

    def industries(self) -> dict[str, tuple[int, int, float]]:
        groups: dict[str, list[int]] = {}
        for m in self.active:
            groups.setdefault(self.industry[m], []).append(len(self.connections[m]))
        return {name: (len(d), sum(d), float(statistics.median(d))) for name, d in groups.items()}


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Envelope], Reference]:
    ref = Reference()
    out: list[ev.Event] = []
    pending_scores: list[tuple[str, str, str, int]] = []
    for _ in range(draw(st.integers(5, 60))):
        action = draw(st.sampled_from(ACTIONS))
        m = draw(st.sampled_from(MEMBERS))
        other = draw(st.sampled_from(MEMBERS))
        registered = m in ref.industry
        if action == "register" and not registered:
            ind = draw(st.sampled_from(INDUSTRIES))
            out.append(ev.MemberRegistered(member_id=m, name=m, industry=ind))
            ref.industry[m] = ind
            ref.active.add(m)
        elif action == "connect" and m != other and other not in ref.connections[m]:
            # Connections may name members not registered yet: order-independence.
            out.append(ev.ConnectionAccepted(member_a=min(m, other), member_b=max(m, other)))
            ref.connections[m].add(other)
            ref.connections[other].add(m)
            ref.follows |= {(m, other), (other, m)}  # a connection: each follows the other
        elif action == "remove" and other in ref.connections[m]:
            out.append(
                ev.ConnectionRemoved(member_a=min(m, other), member_b=max(m, other), removed_by=m)
            )
            ref.connections[m].discard(other)
            ref.connections[other].discard(m)
        elif action == "industry" and m in ref.active:
            ind = draw(st.sampled_from(INDUSTRIES))
            out.append(ev.MemberProfileUpdated(member_id=m, industry=ind))
            ref.industry[m] = ind
        elif action == "block" and m != other and (m, other) not in ref.blocks:
            # As the connection service does: a block ends the connection first.
            if other in ref.connections[m]:
                out.append(
                    ev.ConnectionRemoved(
                        member_a=min(m, other),
                        member_b=max(m, other),
                        removed_by=m,
                        reason="blocked",
                    )
                )
                ref.connections[m].discard(other)
                ref.connections[other].discard(m)
            out.append(ev.MemberBlocked(blocker=m, blocked=other))
            ref.blocks.add((m, other))
        elif action == "follow" and m != other and (m, other) not in ref.follows:
            out.append(ev.FollowStarted(follower=m, followee=other))
            ref.follows.add((m, other))
        elif action == "unfollow" and (m, other) in ref.follows:
            out.append(ev.FollowStopped(follower=m, followee=other))
            ref.follows.discard((m, other))
        elif action == "engage" and m != other:
            kind = draw(st.sampled_from(["like", "comment", "recommend"]))
            event = ev.EngagementRecorded(actor=m, target=other, kind=kind)
            out.append(event)
            pending_scores.append((m, other, kind, len(out) - 1))
        elif action == "unblock" and (m, other) in ref.blocks:
            out.append(ev.MemberUnblocked(blocker=m, blocked=other))
            ref.blocks.discard((m, other))
        elif action == "deactivate" and m in ref.active:
            for o in sorted(ref.connections[m]):
                out.append(
                    ev.ConnectionRemoved(
                        member_a=min(m, o), member_b=max(m, o), removed_by=m, reason="deactivated"
                    )
                )
                ref.connections[o].discard(m)
            ref.connections[m].clear()
            out.append(ev.MemberDeactivated(member_id=m))
            ref.active.discard(m)
    envelopes = [Envelope.wrap(e, producer="test") for e in out]
    for actor, target, kind, index in pending_scores:
        value = SCORING.contribution(kind, envelopes[index].occurred_at)
        ref.scores[(actor, target)] += value
        ref.scores[(target, actor)] += value
    return envelopes, ref


def deliveries(envelopes: list[Envelope], rng: random.Random) -> list[Record]:
    """Per-topic order kept (as one partition would), topics interleaved at random,
    and some events delivered again later (as after a relay crash)."""
    queues: dict[str, list[Envelope]] = {}
    for e in envelopes:
        queues.setdefault(e.topic, []).append(e)
    for queue in queues.values():
        for dup in rng.sample(queue, k=len(queue) // 4):
            queue.insert(rng.randint(queue.index(dup) + 1, len(queue)), dup)
    records: list[Record] = []
    offsets = dict.fromkeys(queues, 0)
    while any(queues.values()):
        topic = rng.choice([t for t, q in queues.items() if q])
        e = queues[topic].pop(0)
        records.append(Record(topic, 0, offsets[topic], e.to_bytes(), e.key.encode()))
        offsets[topic] += 1
    return records


async def no_dead_letters(topic: str, key: bytes | None, value: bytes, headers: dict) -> None:
    """The property covers valid events only, so the DLQ is never used here."""
    raise AssertionError(f"unexpected dead letter on {topic}: {headers}")


@pytest.mark.timeout(300)
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(history=histories(), seed=st.integers(0, 2**32), batch=st.integers(1, 40))
async def test_read_model_equals_reference(
    history: tuple[list[Envelope], Reference], seed: int, batch: int, infra: Infra
) -> None:
    envelopes, ref = history
    settings_ = ProjectionSettings(redis_url=infra.redis_url, namespace=f"p{random_id(8)}.")
    redis = Redis.from_url(infra.redis_url, decode_responses=True)
    model = ReadModelStore(redis, settings_, ScoringModel())
    applier = BatchApplier(model, no_dead_letters)
    records = deliveries(envelopes, random.Random(seed))
    try:
        for start in range(0, len(records), batch):
            await applier.process(records[start : start + batch])
        # The same batches again, as after a crash before Kafka's commit: nothing changes.
        await applier.process(records[: batch * 2])
        ks = await model.current()
        for m in MEMBERS:
            assert await model.connections(ks, m) == ref.connections[m], m
        got = {
            i["industry"]: (i["members"], i["connections"], i["median_connections"])
            for i in await queries.industries.industries(model)
        }
        assert got == ref.industries()
        for a in MEMBERS:
            expected = [ref.degree(a, b) for b in MEMBERS]
            assert await queries.degree.badges(model, ks, a, MEMBERS) == expected, a
            for b in MEMBERS:
                answer = await queries.degree.degree(model, ks, a, b)
                assert answer.degree == ref.degree(a, b), (a, b)
                paths = await queries.paths.paths(model, ks, a, b, 3)
                assert [p.members for p in paths] == ref.paths(a, b, 3), (a, b)
            ranked = await queries.suggestions.rank(
                model, ks, a, 5, queries.suggestions.Bound.EXACT
            )
            assert ranked == ref.suggestions(a, 5), a
            summary = await queries.members.summary(model, a, datetime.now(UTC))
            followers = sum(1 for f, e in ref.follows if e == a)
            following = sum(1 for f, e in ref.follows if f == a)
            assert (summary["followers"], summary["following"]) == (followers, following), a
            stored = await model.redis.hgetall(ks.member("es", a))
            expected = {b: v for (x, b), v in ref.scores.items() if x == a}
            assert stored.keys() == expected.keys(), a
            for b, v in expected.items():
                assert float(stored[b]) == pytest.approx(v, rel=1e-9), (a, b)
    finally:
        await redis.aclose()
