from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from shared.scoring import ScoringModel

NOW = datetime(2026, 11, 27, tzinfo=UTC)
MODEL = ScoringModel()


def test_a_score_halves_every_half_life() -> None:
    stored = MODEL.contribution("message", NOW)
    assert MODEL.current(stored, NOW) == pytest.approx(5.0)
    assert MODEL.current(stored, NOW + timedelta(days=90)) == pytest.approx(2.5)
    assert MODEL.current(stored, NOW + timedelta(days=180)) == pytest.approx(1.25)


def test_contributions_add_up_in_any_order() -> None:
    events = [
        ("like", NOW - timedelta(days=400)),
        ("recommend", NOW - timedelta(days=3)),
        ("comment", NOW),
    ]
    totals = {
        sum(MODEL.contribution(kind, at) for kind, at in order)
        for order in itertools.permutations(events)
    }
    assert max(totals) == pytest.approx(min(totals), rel=1e-12)


def test_engaged_by_recency_or_by_score() -> None:
    recent = MODEL.contribution("like", NOW - timedelta(days=10))
    assert MODEL.is_engaged(recent, NOW - timedelta(days=10), NOW)
    old_but_strong = sum(
        MODEL.contribution("recommend", NOW - timedelta(days=100)) for _ in range(3)
    )
    assert MODEL.is_engaged(old_but_strong, NOW - timedelta(days=100), NOW)
    old_weak = MODEL.contribution("like", NOW - timedelta(days=100))
    assert not MODEL.is_engaged(old_weak, NOW - timedelta(days=100), NOW)
    assert not MODEL.is_engaged(0.0, None, NOW)


def test_stale_needs_a_year_connected_and_a_year_silent() -> None:
    year_ago = NOW - timedelta(days=365)
    assert MODEL.is_stale(year_ago, None, NOW)
    assert not MODEL.is_stale(NOW - timedelta(days=364), None, NOW)
    assert not MODEL.is_stale(NOW - timedelta(days=900), NOW - timedelta(days=30), NOW)
    assert MODEL.is_stale(NOW - timedelta(days=900), NOW - timedelta(days=400), NOW)


def test_weights_and_half_life_are_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPPORT_SCORING_LIKE", "2.5")
    monkeypatch.setenv("RAPPORT_SCORING_HALF_LIFE_DAYS", "30")
    model = ScoringModel()
    stored = model.contribution("like", NOW)
    assert model.current(stored, NOW + timedelta(days=30)) == pytest.approx(1.25)


def test_reach_out_after_an_engaged_relationship_went_quiet() -> None:
    last = NOW - timedelta(days=120)
    strong = sum(MODEL.contribution("message", last) for _ in range(2))
    assert MODEL.needs_reach_out(strong, last, NOW)
    assert not MODEL.needs_reach_out(strong, NOW - timedelta(days=10), NOW)
    assert not MODEL.needs_reach_out(MODEL.contribution("like", last), last, NOW)
