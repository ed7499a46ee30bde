"""Connection rules, decided without I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
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


@dataclass
class World:
    """The domain's commands run as the store runs them (one owner each, the sagas in the
    same order), on one slice holding every owner, with the member directory and the
    connections index kept beside it."""

    state: d.Slice
    index: dict[str, set[str]] = field(default_factory=dict)
    published: list[ev.Event] = field(default_factory=list)

    def known(self, member_id: str) -> bool:
        member = self.state.member(member_id)
        return member is not None and member.active

    def do(self, command: d.Command) -> list[d.Change]:
        actor = d.actor_of(command)
        other = getattr(command, "other", None)
        if isinstance(command, d.Reconcile):
            sides = {m: command.other(m) for m in command.members}
        elif isinstance(command, d.ListConnection | d.UnlistConnection):
            sides = {command.owner: command.other}
        else:
            sides = {}
        state = replace(
            self.state,
            actor_known=actor is None or self.known(actor),
            other_known=not isinstance(other, str) or self.known(other),
            indexed=frozenset(m for m, o in sides.items() if o in self.index.get(m, set())),
        )
        changes = d.decide(state, command)
        self.state = replace(d.fold(state, changes), actor_known=True)
        for c in changes:
            if isinstance(c, d.MemberConnected):
                self.index.setdefault(c.member_id, set()).add(c.other)
            elif isinstance(c, d.MemberDisconnected):
                self.index[c.member_id].discard(c.other)
            elif isinstance(c, ev.Event):
                self.published.append(c)
        return changes

    def since(self, start: int) -> list[ev.Event]:
        return self.published[start:]

    def settle(self, a: str, b: str, invitation_id: str | None = None) -> None:
        self.do(d.Reconcile((a, b), (a, b), invitation_id))

    def accept(self, invitation_id: str, s: str, r: str, cap: int = 30_000) -> list[ev.Event]:
        start = len(self.published)
        refusals = []
        self.do(d.HoldPlace((s, r), invitation_id, cap))
        for m in (s, r):
            why = d.place_refusal(self.state.member(m), invitation_id, cap, self.state.now)
            if why:
                refusals.append((m, why))
        self.do(d.AcceptConnection(invitation_id, s, r, tuple(refusals)))
        self.settle(s, r, invitation_id)
        return self.since(start)

    def remove(self, actor: str, other: str) -> list[ev.Event]:
        start = len(self.published)
        self.do(d.RemoveConnection(actor, other))
        self.settle(actor, other)
        return self.since(start)

    def deactivate(self, member_id: str) -> list[ev.Event]:
        start = len(self.published)
        self.do(d.DeactivateMember(member_id))
        for other in sorted(self.index.get(member_id, set())):
            self.do(d.EndConnection(member_id, other))
            self.settle(member_id, other)
        return self.since(start)


def world(*ids: str, connections: int = 0) -> World:
    return World(with_members(*ids, connections=connections))


def connected_world(a: str = "ann", b: str = "bob") -> World:
    w = world(a, b)
    w.accept("inv1", a, b)
    return w


def connected(a: str = "ann", b: str = "bob") -> d.Slice:
    return connected_world(a, b).state


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
    w = world("bob", "ann")
    events = w.accept("i1", "bob", "ann")
    # The follows come with the connection: no FollowStarted beside it.
    assert events == [ev.ConnectionAccepted(member_a="ann", member_b="bob", invitation_id="i1")]
    assert w.state.pair("ann", "bob").connected
    assert w.state.pair("ann", "bob").followers == {"ann", "bob"}
    ann, bob = w.state.member("ann"), w.state.member("bob")
    assert ann and bob and ann.connections == bob.connections == 1
    assert ann.places == bob.places == {}  # the places held for it became the connection
    assert w.index == {"ann": {"bob"}, "bob": {"ann"}}


def test_accept_is_idempotent_per_invitation_and_pair() -> None:
    w = connected_world()
    assert d.decide(w.state, d.AcceptConnection("inv1", "ann", "bob")) == []
    assert d.decide(w.state, d.AcceptConnection("inv2", "bob", "ann")) == []
    # The whole saga again (a redelivered invitation): nothing changes, nothing stays held.
    assert w.accept("inv1", "ann", "bob") == []
    ann = w.state.member("ann")
    assert ann and ann.connections == 1 and ann.places == {}


def _blocked() -> World:
    w = world("ann", "bob")
    w.do(d.Block("bob", "ann"))
    return w


def _deactivated() -> World:
    w = world("ann", "bob")
    w.deactivate("bob")
    return w


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: world("ann"), "unknown_member"),
        (lambda: world("ann", "bob", connections=30_000), "cap_reached"),
        (_blocked, "blocked"),
        (_deactivated, "deactivated"),
    ],
)
def test_accept_is_rejected_with_a_reason(make: Callable[[], World], reason: str) -> None:
    w = make()
    assert w.accept("i9", "ann", "bob") == [
        ev.ConnectionRejected(invitation_id="i9", sender="ann", recipient="bob", reason=reason)
    ]
    # The same invitation is not decided twice, and no place stays held.
    assert w.accept("i9", "ann", "bob") == []
    assert all(m is None or m.places == {} for m in w.state.members.values())


def test_cap_applies_to_either_side() -> None:
    w = world("ann", "bob")
    bob = w.state.member("bob")
    assert bob is not None
    w.state = replace(
        w.state, members={**w.state.members, "bob": bob.model_copy(update={"connections": 5})}
    )
    assert [type(e) for e in w.accept("i1", "ann", "bob", cap=5)] == [ev.ConnectionRejected]


def test_a_place_held_for_an_accept_counts_against_the_cap_until_it_frees_itself() -> None:
    w = world("ann", "bob", "cat")
    w.do(d.HoldPlace(("ann",), "i1", cap=1))  # ann-bob being decided, the saga stopped here
    assert d.place_refusal(w.state.member("ann"), "i2", 1, NOW) == "cap_reached"
    assert [e.reason for e in w.accept("i2", "cat", "ann", cap=1)] == ["cap_reached"]  # type: ignore[attr-defined]
    w.state = replace(w.state, now=NOW + d.PLACE_HOLD + timedelta(seconds=1))
    assert isinstance(w.accept("i3", "cat", "ann", cap=1)[0], ev.ConnectionAccepted)


def test_a_place_is_let_go_by_whichever_reconcile_comes_first() -> None:
    w = world("ann", "bob")
    w.do(d.HoldPlace(("ann", "bob"), "i1", cap=30_000))
    w.do(d.AcceptConnection("i1", "ann", "bob"))
    # The consumer of ConnectionAccepted reconciles before the request does (no invitation
    # named): the connection counts once, not once more as a place still held.
    w.do(d.Reconcile(("ann", "bob"), ("ann",), None, touch=False))
    ann = w.state.member("ann")
    assert ann and ann.connections == 1 and ann.places == {}


def test_reconcile_follows_the_pair_in_any_order_and_any_number_of_times() -> None:
    w = connected_world()
    before = (w.state.members, w.index)
    w.settle("ann", "bob")
    w.settle("bob", "ann")
    assert (w.state.members, w.index) == before
    # A member's side that missed the removal (its process stopped) catches up.
    w.do(d.RemoveConnection("ann", "bob"))
    assert w.index["ann"] == {"bob"}
    w.settle("ann", "bob")
    ann = w.state.member("ann")
    assert ann and ann.connections == 0 and w.index["ann"] == set()


def test_remove_connection_unfollows_and_unlists_both_sides() -> None:
    w = connected_world()
    w.do(d.ListConnection("ann", "close", "bob"))
    assert w.remove("bob", "ann") == [
        ev.ConnectionRemoved(member_a="ann", member_b="bob", removed_by="bob"),
        ev.FollowStopped(follower="ann", followee="bob"),
        ev.FollowStopped(follower="bob", followee="ann"),
        ev.ConnectionUnlisted(owner="ann", list_name="close", member_id="bob"),
    ]
    assert not w.state.pair("ann", "bob").connected
    ann = w.state.member("ann")
    assert ann and ann.connections == 0
    with pytest.raises(NotFound):
        d.decide(w.state, d.RemoveConnection("ann", "bob"))


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
        d.decide(replace(state, other_known=False), d.Follow("ann", "zed"))
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
        d.decide(replace(state, other_known=False), d.Follow("ann", "ghost"))


def test_lists_only_hold_connections() -> None:
    with pytest.raises(NotFound):
        d.decide(with_members("ann", "bob"), d.ListConnection("ann", "close", "bob"))
    owns_bob = replace(connected(), indexed=frozenset({"ann"}))
    state, events = run(owns_bob, d.ListConnection("ann", "close", "bob"))
    assert events == [ev.ConnectionListed(owner="ann", list_name="close", member_id="bob")]
    with pytest.raises(NotFound):
        d.decide(state, d.UnlistConnection("ann", "other", "bob"))


def test_deactivation_takes_the_member_out_then_ends_every_connection() -> None:
    w = world("ann", "bob", "cat")
    w.accept("i1", "ann", "bob")
    w.accept("i2", "ann", "cat")
    events = w.deactivate("ann")
    assert events[0] == ev.MemberDeactivated(member_id="ann")
    removed = [e for e in events if isinstance(e, ev.ConnectionRemoved)]
    assert [(e.member_a, e.member_b, e.reason) for e in removed] == [
        ("ann", "bob", "deactivated"),
        ("ann", "cat", "deactivated"),
    ]
    bob = w.state.member("bob")
    assert bob and bob.connections == 0 and w.index["ann"] == set()
    with pytest.raises(NotFound):
        d.decide(w.state, d.UpdateProfile("ann", {"name": "x"}))
    assert d.decide(w.state, d.EndConnection("ann", "bob")) == []  # a retry ends nothing


@pytest.mark.parametrize(
    "command",
    [d.RemoveConnection("ann", "ann"), d.Block("ann", "ann"), d.Follow("ann", "ann")],
)
def test_self_reference_is_invalid(command: d.Command) -> None:
    with pytest.raises(Invalid):
        d.decide(connected(), command)
