"""The projection's pure parts: event -> ops, industry bookkeeping, filters, ranking,
statistics and engagement classification, on plain objects."""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.projection import domain as d
from shared import events as ev
from shared.events import Envelope
from shared.scoring import ScoringModel

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)
SCORING = ScoringModel()


def ops_of(event: ev.Event) -> list[tuple[str, str, list]]:
    applied = d.to_ops(Envelope.wrap(event, producer="t", occurred_at=NOW), event, SCORING)
    return [(m, op[0], op[1:]) for m, op in applied.ops]


def test_a_connection_touches_both_members_and_a_follow_both_sides() -> None:
    assert ops_of(ev.ConnectionAccepted(member_a="ann", member_b="bob")) == [
        ("ann", "c+", ["bob", str(int(NOW.timestamp()))]),
        ("bob", "c+", ["ann", str(int(NOW.timestamp()))]),
    ]
    assert ops_of(ev.FollowStarted(follower="ann", followee="bob")) == [
        ("ann", "fg+", ["bob"]),
        ("bob", "fw+", ["ann"]),
    ]


def test_an_invitation_is_pending_for_both_until_any_end() -> None:
    ids = {"invitation_id": "i1", "sender": "ann", "recipient": "bob"}
    assert ops_of(ev.InvitationSent(**ids)) == [
        ("bob", "ir+", ["i1", "ann"]),
        ("ann", "is+", ["i1", "bob"]),
    ]
    for end in (ev.InvitationAccepted, ev.InvitationExpired, ev.InvitationWithdrawn):
        assert ops_of(end(**ids)) == [("bob", "ir-", ["i1"]), ("ann", "is-", ["i1"])]
    # A decline, or the recipient's block, stays among what the sender sent (they are not
    # told) until it expires or they withdraw it.
    blocked = ev.InvitationWithdrawn(**ids, reason="blocked", blocker="bob")
    for private in (ev.InvitationDeclined(**ids), blocked):
        assert ops_of(private) == [("bob", "ir-", ["i1"])]
    by_sender = ev.InvitationWithdrawn(**ids, reason="blocked", blocker="ann")
    assert ops_of(by_sender) == [("bob", "ir-", ["i1"]), ("ann", "is-", ["i1"])]


def test_a_profile_carries_only_the_fields_it_has() -> None:
    event = ev.MemberRegistered(member_id="ann", name="Ann", industry="Tech ", title="CTO")
    profile = {"name": "Ann", "industry": "Tech ", "title": "CTO", "ki": "tech", "kt": "cto"}
    assert ops_of(event) == [("ann", "reg", [profile])]


def test_engagement_scores_both_sides_and_marks_congratulations() -> None:
    [(actor, _, a_args), (target, _, t_args)] = ops_of(
        ev.EngagementRecorded(actor="ann", target="bob", kind="congratulate")
    )
    assert (actor, target) == ("ann", "bob")
    assert a_args[0] == "bob" and t_args[0] == "ann"
    assert a_args[1] == t_args[1] == SCORING.contribution("congratulate", NOW)
    assert (a_args[2], t_args[2]) == (1, 0)


def test_events_without_read_model_effect_have_no_ops() -> None:
    assert ops_of(ev.InvitationWithdrawn(invitation_id="i", sender="a", recipient="b")) != []
    assert (
        ops_of(
            ev.ConnectionRejected(invitation_id="i", sender="a", recipient="b", reason="blocked")
        )
        == []
    )


def test_industry_moves_leave_the_old_industry_and_join_the_new() -> None:
    moves, recount = d.industry_moves(
        {
            "ann": ("Tech", "Finance", 3, 7),
            "bob": ("Tech", "Tech", 5, 2),
            "cy": ("", "Tech", 0, 1),
        }
    )
    assert moves == {
        "Tech": [["ann", -1, 7], ["bob", 5, 2], ["cy", 0, 1]],
        "Finance": [["ann", 3, 7]],
    }
    assert recount == {"ann": ("Finance", 7), "cy": ("Tech", 1)}
    # Deactivated: counted nowhere any more.
    moves, recount = d.industry_moves({"ann": ("Tech", "", 3, 9)})
    assert (moves, recount) == ({"Tech": [["ann", -1, 9]]}, {"ann": ("", 9)})


@given(st.lists(st.integers(0, 6000), max_size=60))
def test_figures_from_the_degree_histogram_equal_those_of_every_degree(degrees: list[int]) -> None:
    figures = d.DegreeFigures.of(Counter(degrees))
    assert figures.members == len(degrees)
    assert figures.median == (float(statistics.median(degrees)) if degrees else 0.0)
    assert figures.distribution == {
        label: sum(1 for x in degrees if d.bucket_of(x) == label) for _, _, label in d.SIZE_BUCKETS
    }


def test_an_emptied_degree_counts_nobody() -> None:
    figures = d.DegreeFigures.of({3: 0, 5: 2})
    assert (figures.members, figures.median, figures.distribution["1-9"]) == (2, 5.0, 2)


def test_average_median_and_buckets() -> None:
    assert d.average(7, 2) == 3.5
    assert d.average(0, 0) == 0.0
    assert d.median([1.0, 3.0, 10.0]) == 3.0
    assert d.median([]) == 0.0
    assert [d.bucket_of(n) for n in (0, 9, 10, 499, 500, 5000)] == [
        "0",
        "1-9",
        "10-49",
        "250-499",
        "500-999",
        "5000+",
    ]
    assert d.connections_display(500) == "500" and d.connections_display(501) == "500+"


def test_filters_match_whole_values_and_titles_by_containment() -> None:
    profile = {"industry": "Financial  Services", "location": "Paris", "title": "Staff Engineer"}
    assert d.Filters(industry="financial services", title="engineer").match(profile)
    assert not d.Filters(location="Lyon").match(profile)
    assert not d.Filters(title="manager").match(profile)
    assert d.Filters().match(profile) and not d.Filters().active()


def test_suggestions_rank_by_mutuals_boosted_by_shared_profile() -> None:
    me = {"industry": "Tech", "employer": "Acme", "location": "Oslo"}
    profiles = {
        "x": {"industry": "Tech", "employer": "Acme"},  # 2 mutuals x 1.25 x 1.5
        "y": {"industry": "Media"},  # 3 mutuals x 1
        "z": {"industry": "tech"},  # 2 mutuals x 1.25
    }
    ranked = d.rank_suggestions(me, Counter({"x": 2, "y": 3, "z": 2}), profiles, 3)
    assert [(c, n, s, r) for c, n, s, r in ranked] == [
        ("x", 2, 3.75, ["industry", "employer"]),
        ("y", 3, 3.0, []),
        ("z", 2, 2.5, ["industry"]),
    ]
    assert d.MAX_BOOST == 1.25 * 1.5 * 1.25


def test_classify_tells_engaged_stale_and_reach_out_apart() -> None:
    long_ago = NOW - timedelta(days=800)
    hot = d.PairEngagement("hot", SCORING.contribution("message", NOW), NOW, long_ago)
    silent = d.PairEngagement("silent", 0.0, None, long_ago)
    faded = d.PairEngagement(
        "faded", 10 * SCORING.contribution("recommend", NOW - timedelta(days=120)),
        NOW - timedelta(days=120), long_ago,
    )  # fmt: skip
    views = d.classify([hot, silent, faded], SCORING, NOW)
    assert [i["member_id"] for i in views["engaged"]] == ["faded", "hot"]
    assert [i["member_id"] for i in views["stale"]] == ["silent"]
    assert [i["member_id"] for i in views["reach_out"]] == ["faded"]
    assert [i["member_id"] for i in views["top"]] == ["faded", "hot"]
