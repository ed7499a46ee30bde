"""Invitation rules, one by one, decided without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.invitation import domain as d
from services.invitation.domain import Rules, Slice
from shared import events as ev
from shared.errors import Conflict, Forbidden, Invalid, NotFound, RateLimited

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)
RULES = Rules()


def run(state: Slice, command: d.Command, at: datetime = NOW, rules: Rules = RULES):
    events = d.decide(state, command, rules, at)
    return d.fold(state, events, at), events


def sent(sender: str = "ann", recipient: str = "bob", at: datetime = NOW) -> Slice:
    state, _ = run(Slice(), d.SendInvitation("i1", sender, recipient, "hi"), at)
    return state


def test_send_emits_invitation_sent_and_marks_pair_pending() -> None:
    state, events = run(Slice(), d.SendInvitation("i1", "ann", "bob", "hello"))
    assert events == [
        ev.InvitationSent(invitation_id="i1", sender="ann", recipient="bob", message="hello")
    ]
    assert state.pair.pending == "i1"
    assert state.invitation.status == "pending"  # type: ignore[union-attr]


def test_message_limit_is_configurable() -> None:
    d.decide(Slice(), d.SendInvitation("i1", "ann", "bob", "x" * 300), RULES, NOW)
    with pytest.raises(Invalid) as info:
        d.decide(Slice(), d.SendInvitation("i1", "ann", "bob", "x" * 301), RULES, NOW)
    assert info.value.code == "message_too_long"
    d.decide(
        Slice(), d.SendInvitation("i1", "ann", "bob", "x" * 301), Rules(message_max_chars=400), NOW
    )


def test_no_self_invite() -> None:
    with pytest.raises(Invalid):
        d.decide(Slice(), d.SendInvitation("i1", "ann", "ann"), RULES, NOW)


def test_unknown_recipient() -> None:
    with pytest.raises(NotFound):
        d.decide(Slice(recipient_known=False), d.SendInvitation("i1", "ann", "zed"), RULES, NOW)


def test_already_connected() -> None:
    state, _ = run(sent(), d.Accept("i1", "bob"))
    with pytest.raises(Conflict) as info:
        d.decide(state, d.SendInvitation("i2", "ann", "bob"), RULES, NOW)
    assert info.value.code == "already_connected"


def test_pending_in_same_direction_conflicts() -> None:
    with pytest.raises(Conflict) as info:
        d.decide(sent(), d.SendInvitation("i2", "ann", "bob"), RULES, NOW)
    assert info.value.code == "already_pending"


def test_inviting_back_accepts_the_pending_invitation() -> None:
    state, events = run(sent("ann", "bob"), d.SendInvitation("i2", "bob", "ann"))
    assert events == [ev.InvitationAccepted(invitation_id="i1", sender="ann", recipient="bob")]
    assert state.invitation.status == "accepted"  # type: ignore[union-attr]


def test_reinvite_within_cooldown_after_withdrawal_names_the_date() -> None:
    state, _ = run(sent(), d.Withdraw("i1", "ann"))
    with pytest.raises(Conflict) as info:
        d.decide(state, d.SendInvitation("i2", "ann", "bob"), RULES, NOW + timedelta(days=20))
    assert info.value.code == "reinvite_cooldown"
    assert "2026-12-18" in info.value.message
    d.decide(state, d.SendInvitation("i2", "ann", "bob"), RULES, NOW + timedelta(days=21))
    # The cooldown binds the one who withdrew, not the other member.
    d.decide(state, d.SendInvitation("i2", "bob", "ann"), RULES, NOW + timedelta(days=1))


def test_weekly_limit_is_rolling_with_retry_after() -> None:
    rules = Rules(weekly_limit=3)
    state = Slice()
    for i, day in enumerate((0, 2, 4)):
        state = d.fold(
            state,
            d.decide(
                Slice(sender=state.sender),
                d.SendInvitation(f"i{i}", "ann", f"m{i}"),
                rules,
                NOW + timedelta(days=day),
            ),
            NOW + timedelta(days=day),
        )
    with pytest.raises(RateLimited) as info:
        d.decide(
            Slice(sender=state.sender),
            d.SendInvitation("ix", "ann", "m9"),
            rules,
            NOW + timedelta(days=5),
        )
    assert info.value.headers["Retry-After"] == str(2 * 86400 + 1)
    # Seven days after the first, a slot opens again.
    d.decide(
        Slice(sender=state.sender),
        d.SendInvitation("ix", "ann", "m9"),
        rules,
        NOW + timedelta(days=7, seconds=1),
    )


def test_blocked_either_way_gives_the_same_answer() -> None:
    for blocker in ("ann", "bob"):
        state = d.evolve(
            Slice(),
            ev.MemberBlocked(blocker=blocker, blocked="bob" if blocker == "ann" else "ann"),
            NOW,
        )
        with pytest.raises(Forbidden) as info:
            d.decide(state, d.SendInvitation("i1", "ann", "bob"), RULES, NOW)
        assert info.value.code == "cannot_invite"
        assert "block" not in info.value.message


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (d.Accept("i1", "ann"), Forbidden),
        (d.Decline("i1", "ann"), Forbidden),
        (d.Report("i1", "ann"), Forbidden),
        (d.Withdraw("i1", "bob"), Forbidden),
        (d.Accept("i1", "eve"), NotFound),
    ],
)
def test_only_the_right_party_answers(command: d.Command, error: type[Exception]) -> None:
    with pytest.raises(error):
        d.decide(sent(), command, RULES, NOW)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (d.Accept("i1", "bob"), ev.InvitationAccepted),
        (d.Decline("i1", "bob"), ev.InvitationDeclined),
        (d.Withdraw("i1", "ann"), ev.InvitationWithdrawn),
    ],
)
def test_finished_invitation_answers_409(command: d.Command, expected: type) -> None:
    state, events = run(sent(), command)
    assert [type(e) for e in events] == [expected]
    assert state.pair.pending is None
    with pytest.raises(Conflict) as info:
        d.decide(state, d.Accept("i1", "bob"), RULES, NOW)
    assert info.value.code == "invitation_finished"


def test_reports_restrict_the_sender_past_the_threshold() -> None:
    rules = Rules(report_threshold=2)
    state = Slice()
    for i in range(2):
        fresh = Slice(sender=state.sender)
        fresh, _ = run(fresh, d.SendInvitation(f"i{i}", "spam", f"m{i}"), rules=rules)
        state, events = run(fresh, d.Report(f"i{i}", f"m{i}"), rules=rules)
        assert events == [
            ev.InvitationDeclined(
                invitation_id=f"i{i}", sender="spam", recipient=f"m{i}", reported=True
            )
        ]
    with pytest.raises(Forbidden) as info:
        d.decide(Slice(sender=state.sender), d.SendInvitation("i9", "spam", "x"), rules, NOW)
    assert info.value.code == "sender_restricted"


def test_expiry_after_180_days_only_for_pending() -> None:
    state = sent()
    assert d.decide(state, d.Expire("i1"), RULES, NOW + timedelta(days=179)) == []
    state, events = run(state, d.Expire("i1"), NOW + timedelta(days=180))
    assert events == [ev.InvitationExpired(invitation_id="i1", sender="ann", recipient="bob")]
    assert d.decide(state, d.Expire("i1"), RULES, NOW + timedelta(days=200)) == []


def test_connection_rejected_folds_back_and_frees_the_pair() -> None:
    state, _ = run(sent(), d.Accept("i1", "bob"))
    state = d.evolve(
        state,
        ev.ConnectionRejected(
            invitation_id="i1", sender="ann", recipient="bob", reason="cap_reached"
        ),
        NOW,
    )
    assert (state.invitation.status, state.invitation.reason) == ("rejected", "cap_reached")  # type: ignore[union-attr]
    assert not state.pair.connected
    d.decide(state, d.SendInvitation("i2", "ann", "bob"), RULES, NOW)


def test_removed_connection_allows_inviting_again() -> None:
    state = d.evolve(Slice(), ev.ConnectionAccepted(member_a="ann", member_b="bob"), NOW)
    with pytest.raises(Conflict):
        d.decide(state, d.SendInvitation("i1", "ann", "bob"), RULES, NOW)
    state = d.evolve(
        state, ev.ConnectionRemoved(member_a="ann", member_b="bob", removed_by="bob"), NOW
    )
    d.decide(state, d.SendInvitation("i1", "ann", "bob"), RULES, NOW)


def test_block_cancels_the_pending_invitation() -> None:
    blocked = ev.MemberBlocked(blocker="bob", blocked="ann")
    state = d.evolve(sent(), blocked, NOW)
    [cancel] = d.react(state, blocked)
    state, events = run(state, cancel)
    assert events == [
        ev.InvitationWithdrawn(invitation_id="i1", sender="ann", recipient="bob", reason="blocked")
    ]
    assert state.invitation.status == "cancelled"  # type: ignore[union-attr]
    assert "ann" not in state.pair.withdrawn_at  # a cancellation is not a withdrawal
