"""The demo network's shape: calibrated industry averages, power-law degrees, valid edges."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rapport.demo import INDUSTRY_AVERAGES, build_network
from services.projection.queries.status import Throughput


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.sampled_from([0.005, 0.01, 0.02, 0.03]),
    members=st.integers(600, 1500),
)
def test_industry_averages_land_within_ten_percent_of_the_scaled_targets(
    seed: int, scale: float, members: int
) -> None:
    network = build_network(members, scale, seed)
    for industry, average in network.industry_averages().items():
        target = INDUSTRY_AVERAGES[industry] * scale
        assert abs(average / target - 1) <= 0.10, (industry, average, target)


def test_degrees_are_heavy_tailed_and_edges_are_simple() -> None:
    network = build_network(1000, 0.03, seed=1)
    degrees = sorted(network.degrees().values())
    assert min(degrees) >= 1
    assert statistics.median(degrees) < statistics.mean(degrees)  # right-skewed
    assert degrees[-1] > 5 * statistics.median(degrees)  # hubs exist
    pairs = [tuple(sorted(e)) for e in network.edges]
    assert len(pairs) == len(set(pairs))  # no duplicate connections
    assert all(a != b for a, b in network.edges)  # nobody connects to themselves
    ids = [m.member_id for m in network.members]
    assert len(ids) == len(set(ids))


def test_nobody_sends_more_invitations_than_the_weekly_limit() -> None:
    # Hubs here have 200+ connections; who invites whom keeps every sender at 20 or fewer.
    network = build_network(1500, 0.05, seed=2, invite_limit=20)
    sent: dict[str, int] = {}
    for sender, _ in network.edges:
        sent[sender] = sent.get(sender, 0) + 1
    assert max(sent.values()) <= 20


def test_an_impossible_network_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="RAPPORT_INVITATION_WEEKLY_LIMIT"):
        build_network(1000, 0.03, seed=1, invite_limit=5)
    with pytest.raises(ValueError, match="too few members"):
        build_network(60, 0.5)


def test_same_seed_same_network() -> None:
    assert build_network(300, 0.01, 5, tag="x").edges == build_network(300, 0.01, 5, tag="x").edges


def test_throughput_is_the_growth_of_end_offsets_over_the_window() -> None:
    meter = Throughput(window_s=10)
    assert meter.observe({"t.a:0": 100, "t.a:1": 50, "t.b:0": 0}, now=0.0) == {
        "t.a": 0.0,
        "t.b": 0.0,
    }
    assert meter.observe({"t.a:0": 150, "t.a:1": 100, "t.b:0": 20}, now=2.0) == {
        "t.a": 50.0,
        "t.b": 10.0,
    }
    # Old samples fall out of the window: the rate follows the recent pace.
    meter.observe({"t.a:0": 150, "t.a:1": 100, "t.b:0": 20}, now=13.0)
    assert meter.observe({"t.a:0": 150, "t.a:1": 100, "t.b:0": 20}, now=24.0) == {
        "t.a": 0.0,
        "t.b": 0.0,
    }
