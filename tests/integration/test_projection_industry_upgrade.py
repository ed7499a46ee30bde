"""Industry figures kept in the layout before the histogram (a sorted set of each counted
member's degree) keep answering as they were, and become a histogram the first time an
event touches the industry: the figures then equal those of a model built in the new layout
from the start, on one node and on a Redis Cluster."""

from __future__ import annotations

import random
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.projection import queries
from services.projection.apply import BatchApplier
from services.projection.store import ReadModelStore
from shared import events as ev
from shared.events import Envelope
from shared.scoring import ScoringModel
from shared.settings import ProjectionSettings
from tests.helpers import Infra, random_id
from tests.integration.test_projection_network import network_events
from tests.integration.test_projection_property import Record, deliveries, no_dead_letters

pytestmark = pytest.mark.integration

# After the upgrade: connections among Finance and Health members only (Technology and Media
# stay in the old layout), and one Technology member moving to Finance.
LATER = [
    ev.ConnectionAccepted(member_a="eve", member_b="fay", invitation_id="i-eve-fay"),
    ev.ConnectionAccepted(member_a="gus", member_b="hal", invitation_id="i-gus-hal"),
    ev.ConnectionAccepted(member_a="cat", member_b="hal", invitation_id="i-cat-hal"),
]
MOVE = ev.MemberProfileUpdated(member_id="kim", industry="Finance")


def records_of(envelopes: list[Envelope], after: list[Record] | None = None) -> list[Record]:
    """Envelopes as one partition per topic delivers them, after `after`'s offsets."""
    offsets: dict[str, int] = {}
    for r in after or []:
        offsets[r.topic] = max(offsets.get(r.topic, 0), r.offset + 1)
    out = []
    for e in envelopes:
        offset = offsets.get(e.topic, 0)
        out.append(Record(e.topic, 0, offset, e.to_bytes(), e.key.encode()))
        offsets[e.topic] = offset + 1
    return out


async def to_layout_before_histogram(model: ReadModelStore) -> None:
    """Rewrite the current version's industry figures as the earlier code kept them: each
    counted member's degree in the industry's sorted set, no histogram (nor, on a cluster,
    the degrees beside the versions, which that layout did not have)."""
    ks = await model.current()
    redis = model.redis
    degrees: dict[str, dict[str, int]] = {}
    for m in [str(x) for x in await redis.zrange(ks.members, 0, -1)]:
        counted = await redis.hget(ks.member("m", m), "ci")
        if counted:
            degrees.setdefault(str(counted), {})[m] = int(await redis.scard(ks.member("c", m)))
    for name, scores in degrees.items():
        await redis.zadd(ks.industry_before_histogram(name), scores)  # type: ignore[arg-type]
        await redis.delete(ks.industry(name))
        await redis.delete(ks.industry_degrees(name))


async def figures_and_layout(model: ReadModelStore) -> tuple[list[dict[str, Any]], dict[str, str]]:
    ks = await model.current()
    names = sorted(str(n) for n in await model.redis.smembers(ks.inds))
    layout = {}
    for name in names:
        legacy = await model.redis.exists(ks.industry_before_histogram(name))
        histogram = await model.redis.exists(ks.industry(name))
        layout[name] = "sorted set" if legacy and not histogram else "histogram"
    return await queries.industries.industries(model), layout


@pytest.mark.parametrize("where", ["one node", "cluster"])
async def test_industries_in_the_sorted_set_layout_answer_and_become_histograms(
    where: str, infra: Infra, request: pytest.FixtureRequest
) -> None:
    wrap = lambda e: Envelope.wrap(e, producer="test")  # noqa: E731
    first = deliveries(network_events(), random.Random(5))
    later = records_of([wrap(e) for e in [*LATER, MOVE]], after=first)
    url = request.getfixturevalue("redis_cluster_url") if where == "cluster" else infra.redis_url

    async def model_of() -> ReadModelStore:
        client: Any = (
            RedisCluster.from_url(url, decode_responses=True)
            if where == "cluster"
            else Redis.from_url(url, decode_responses=True)
        )
        settings = ProjectionSettings(namespace=f"u{random_id(8)}.")
        return ReadModelStore(client, settings, ScoringModel())

    fresh, upgraded = await model_of(), await model_of()
    try:
        await BatchApplier(fresh, no_dead_letters).process([*first, *later])
        applier = BatchApplier(upgraded, no_dead_letters)
        await applier.process(first)
        built, _ = await figures_and_layout(upgraded)
        await to_layout_before_histogram(upgraded)
        before, before_layout = await figures_and_layout(upgraded)
        await applier.process(later)
        after, after_layout = await figures_and_layout(upgraded)
        expected, _ = await figures_and_layout(fresh)
    finally:
        for model in (fresh, upgraded):
            await model.redis.aclose()

    # The old layout answers what the histogram did.
    assert before == built
    assert set(before_layout.values()) == {"sorted set"}
    # Touched industries became histograms, with the figures of a model built anew.
    assert after == expected
    assert after != before
    assert after_layout == {
        "Finance": "histogram",
        "Health": "histogram",
        "Media": "sorted set",
        "Technology": "histogram",  # kim left it
    }
