"""Connection rules, decided without I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from services.connection import domain as d
from shared import events as ev
from shared.domain import REFUSED_MESSAGE, Conflict, Forbidden, Invalid, NotFound

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def Slice(**fields: Any) -> d.Slice:
    return d.Slice(now=NOW, **fields)


def run(state: d.Slice, command: d.Command) -> tuple[d.Slice, list[ev.Event]]:
    events = d.decide(state, command)
    return d.fold(state, events), events


def with_members(*ids: str, connections: int = 0) -> d.Slice:
    state = Slice()
    for m in ids:
        state, _ = run(state, d.RegisterMember(member_id=m, name=m.title(), industry="Technology"))
    if connections:
        state = Slice(
            members={
                m: member.model_copy(update={"connections": connections})  # type: ignore[union-attr]
                for m, member in state.members.items()
            }
        )
    return state


def connected(a: str = "ann", b: str = "bob") -> d.Slice:
    state, _ = run(with_members(a, b), d.AcceptConnection("inv1", a, b, cap=30_000))
    return state


def test_register_twice_conflicts() -> None:
    state = with_members("ann")
    with pytest.raises(Conflict):
        d.decide(state, d.RegisterMember(member_id="ann", name="Ann", industry="Tech"))


def test_industry_normalises_case_and_spacing() -> None:
    assert ev.grouping_key("  Financial   SERVICES ") == ev.grouping_key("financial services")


def test_profile_update_reports_only_changes_and_previous_industry() -> None:
    state = with_members("ann")
    events = d.decide(state, d.UpdateProfile("ann", {"industry": "Healthcare", "name": "Ann"}))
    assert events == [
        ev.MemberProfileUpdated(
            member_id="ann", industry="Healthcare", previous_industry="Technology"
        )
    ]
    assert d.decide(state, d.UpdateProfile("ann", {"name": "Ann"})) == []


def test_accept_connects_and_both_auto_follow() -> None:
    state, events = run(with_members("bob", "ann"), d.AcceptConnection("i1", "bob", "ann", 30_000))
    assert events == [
        ev.ConnectionAccepted(member_a="ann", member_b="bob", invitation_id="i1"),
        ev.FollowStarted(follower="bob", followee="ann"),
        ev.FollowStarted(follower="ann", followee="bob"),
    ]
    assert state.pair("ann", "bob").connected
    assert state.member("ann").connections == state.member("bob").connections == 1  # type: ignore[union-attr]


def test_accept_is_idempotent_per_invitation_and_pair() -> None:
    state = connected()
    assert d.decide(state, d.AcceptConnection("inv1", "ann", "bob", cap=30_000)) == []
    assert d.decide(state, d.AcceptConnection("inv2", "bob", "ann", cap=30_000)) == []


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (with_members("ann"), "unknown_member"),
        (with_members("ann", "bob", connections=30_000), "cap_reached"),
        (run(with_members("ann", "bob"), d.Block("bob", "ann"))[0], "blocked"),
        (run(with_members("ann", "bob"), d.DeactivateMember("bob", ()))[0], "deactivated"),
    ],
)
def test_accept_is_rejected_with_a_reason(state: d.Slice, reason: str) -> None:
    events = d.decide(state, d.AcceptConnection("i9", "ann", "bob", cap=30_000))
    assert events == [
        ev.ConnectionRejected(invitation_id="i9", sender="ann", recipient="bob", reason=reason)
    ]
    # The same invitation is not decided twice.
    assert d.decide(d.fold(state, events), d.AcceptConnection("i9", "ann", "bob", 30_000)) == []


def test_cap_applies_to_either_side() -> None:
    state = with_members("ann", "bob")
    state = Slice(
        members={**state.members, "bob": state.member("bob").model_copy(update={"connections": 5})}
    )  # type: ignore[union-attr]
    events = d.decide(state, d.AcceptConnection("i1", "ann", "bob", cap=5))
    assert [type(e) for e in events] == [ev.ConnectionRejected]


def test_remove_connection_unfollows_and_unlists_both_sides() -> None:
    state, _ = run(connected(), d.ListConnection("ann", "close", "bob"))
    state, events = run(state, d.RemoveConnection("bob", "ann"))
    assert events == [
        ev.ConnectionRemoved(member_a="ann", member_b="bob", removed_by="bob"),
        ev.FollowStopped(follower="ann", followee="bob"),
        ev.FollowStopped(follower="bob", followee="ann"),
        ev.ConnectionUnlisted(owner="ann", list_name="close", member_id="bob"),
    ]
    assert not state.pair("ann", "bob").connected
    assert state.member("ann").connections == 0  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        d.decide(state, d.RemoveConnection("ann", "bob"))


def test_block_tears_down_then_blocks_and_hides_itself_on_follow() -> None:
    state, events = run(connected(), d.Block("ann", "bob"))
    assert [type(e) for e in events] == [
        ev.ConnectionRemoved,
        ev.FollowStopped,
        ev.FollowStopped,
        ev.MemberBlocked,
    ]
    assert events[0] == ev.ConnectionRemoved(
        member_a="ann", member_b="bob", removed_by="ann", reason="blocked"
    )
    assert d.decide(state, d.Block("ann", "bob")) == []  # already blocked
    with pytest.raises(NotFound) as blocked_side:
        d.decide(state, d.Follow("bob", "ann"))
    with pytest.raises(NotFound) as blocker_side:
        d.decide(state, d.Follow("ann", "bob"))
    with pytest.raises(NotFound) as nobody:
        d.decide(state, d.Follow("ann", "zed"))
    # A block answers, either way, exactly as a member that does not exist.
    answers = {
        (e.value.code, e.value.message.replace(m, "X"))
        for e, m in ((blocked_side, "ann"), (blocker_side, "bob"), (nobody, "zed"))
    }
    assert answers == {("member_not_found", "member X not found")}


def test_an_actor_who_is_not_an_active_member_is_refused_like_any_refusal() -> None:
    state = replace(connected(), actor_known=False)
    for command in (
        d.Follow("ann", "bob"),
        d.RemoveConnection("ann", "bob"),
        d.Block("ann", "bob"),
        d.UpdateProfile("ann", {"name": "A"}),
        d.ListConnection("ann", "friends", "bob"),
    ):
        with pytest.raises(Forbidden) as info:
            d.decide(state, command)
        assert (info.value.code, info.value.message) == ("not_allowed", REFUSED_MESSAGE)


def test_unblock_only_what_you_blocked() -> None:
    state, _ = run(with_members("ann", "bob"), d.Block("ann", "bob"))
    with pytest.raises(NotFound):
        d.decide(state, d.Unblock("bob", "ann"))
    assert d.decide(state, d.Unblock("ann", "bob")) == [
        ev.MemberUnblocked(blocker="ann", blocked="bob")
    ]


def test_follow_without_connection_and_unfollow() -> None:
    state, events = run(with_members("ann", "bob"), d.Follow("ann", "bob"))
    assert events == [ev.FollowStarted(follower="ann", followee="bob")]
    assert d.decide(state, d.Follow("ann", "bob")) == []
    with pytest.raises(NotFound):
        d.decide(state, d.Unfollow("bob", "ann"))
    with pytest.raises(NotFound):
        d.decide(state, d.Follow("ann", "ghost"))


def test_lists_only_hold_connections() -> None:
    with pytest.raises(NotFound):
        d.decide(with_members("ann", "bob"), d.ListConnection("ann", "close", "bob"))
    state, events = run(connected(), d.ListConnection("ann", "close", "bob"))
    assert events == [ev.ConnectionListed(owner="ann", list_name="close", member_id="bob")]
    with pytest.raises(NotFound):
        d.decide(state, d.UnlistConnection("ann", "other", "bob"))


def test_deactivation_removes_every_connection_first() -> None:
    state, _ = run(with_members("ann", "bob", "cat"), d.AcceptConnection("i1", "ann", "bob", 10))
    state, _ = run(state, d.AcceptConnection("i2", "ann", "cat", 10))
    state, events = run(state, d.DeactivateMember("ann", ("bob", "cat")))
    removed = [e for e in events if isinstance(e, ev.ConnectionRemoved)]
    assert [(e.member_a, e.member_b, e.reason) for e in removed] == [
        ("ann", "bob", "deactivated"),
        ("ann", "cat", "deactivated"),
    ]
    assert isinstance(events[-1], ev.MemberDeactivated)
    assert state.member("bob").connections == 0  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        d.decide(state, d.UpdateProfile("ann", {"name": "x"}))


@pytest.mark.parametrize(
    "command",
    [d.RemoveConnection("ann", "ann"), d.Block("ann", "ann"), d.Follow("ann", "ann")],
)
def test_self_reference_is_invalid(command: d.Command) -> None:
    with pytest.raises(Invalid):
        d.decide(connected(), command)
