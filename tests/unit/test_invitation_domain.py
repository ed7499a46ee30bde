"""Invitation rules, one by one, decided without I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.invitation import domain as d
from services.invitation.domain import Rules
from services.invitation.main import rules_from
from shared import events as ev
from shared.domain import REFUSED_MESSAGE, Conflict, Forbidden, Invalid, NotFound, RateLimited
from shared.settings import InvitationSettings

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)
RULES = rules_from(InvitationSettings())


def Slice(**fields: Any) -> d.Slice:
    return d.Slice(rules=RULES, now=NOW, **fields)


def decide(state: d.Slice, command: d.Command, rules: Rules = RULES, at: datetime = NOW):
    return d.decide(replace(state, rules=rules, now=at), command)


def evolve(state: d.Slice, event: ev.Event, at: datetime = NOW) -> d.Slice:
    return d.evolve(replace(state, now=at), event)


def fold(state: d.Slice, events: list[ev.Event], at: datetime = NOW) -> d.Slice:
    return d.fold(replace(state, now=at), events)


def run(state: d.Slice, command: d.Command, at: datetime = NOW, rules: Rules = RULES):
    state = replace(state, rules=rules, now=at)
    events = d.decide(state, command)
    return d.fold(state, events), events


def sent(sender: str = "ann", recipient: str = "bob", at: datetime = NOW) -> d.Slice:
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
    decide(Slice(), d.SendInvitation("i1", "ann", "bob", "x" * 300), RULES, NOW)
    with pytest.raises(Invalid) as info:
        decide(Slice(), d.SendInvitation("i1", "ann", "bob", "x" * 301), RULES, NOW)
    assert info.value.code == "message_too_long"
    decide(
        Slice(),
        d.SendInvitation("i1", "ann", "bob", "x" * 301),
        replace(RULES, message_max_chars=400),
        NOW,
    )


def test_no_self_invite() -> None:
    with pytest.raises(Invalid):
        decide(Slice(), d.SendInvitation("i1", "ann", "ann"), RULES, NOW)


def test_unknown_recipient() -> None:
    with pytest.raises(NotFound):
        decide(Slice(recipient_known=False), d.SendInvitation("i1", "ann", "zed"), RULES, NOW)


def test_already_connected() -> None:
    state, _ = run(sent(), d.Accept("i1", "bob"))
    with pytest.raises(Conflict) as info:
        decide(state, d.SendInvitation("i2", "ann", "bob"), RULES, NOW)
    assert info.value.code == "already_connected"


def test_pending_in_same_direction_conflicts() -> None:
    with pytest.raises(Conflict) as info:
        decide(sent(), d.SendInvitation("i2", "ann", "bob"), RULES, NOW)
    assert info.value.code == "already_pending"


def test_inviting_back_accepts_the_pending_invitation() -> None:
    state, events = run(sent("ann", "bob"), d.SendInvitation("i2", "bob", "ann"))
    assert events == [ev.InvitationAccepted(invitation_id="i1", sender="ann", recipient="bob")]
    assert state.invitation.status == "accepted"  # type: ignore[union-attr]


def test_reinvite_within_cooldown_after_withdrawal_names_the_date() -> None:
    state, _ = run(sent(), d.Withdraw("i1", "ann"))
    with pytest.raises(Conflict) as info:
        decide(state, d.SendInvitation("i2", "ann", "bob"), RULES, NOW + timedelta(days=20))
    assert info.value.code == "reinvite_cooldown"
    assert "2026-12-18" in info.value.message
    decide(state, d.SendInvitation("i2", "ann", "bob"), RULES, NOW + timedelta(days=21))
    # The cooldown binds the one who withdrew, not the other member.
    decide(state, d.SendInvitation("i2", "bob", "ann"), RULES, NOW + timedelta(days=1))


def test_weekly_limit_is_rolling_with_retry_after() -> None:
    rules = replace(RULES, weekly_limit=3)
    state = Slice()
    for i, day in enumerate((0, 2, 4)):
        state = fold(
            state,
            decide(
                Slice(sender=state.sender),
                d.SendInvitation(f"i{i}", "ann", f"m{i}"),
                rules,
                NOW + timedelta(days=day),
            ),
            NOW + timedelta(days=day),
        )
    with pytest.raises(RateLimited) as info:
        decide(
            Slice(sender=state.sender),
            d.SendInvitation("ix", "ann", "m9"),
            rules,
            NOW + timedelta(days=5),
        )
    assert info.value.retry_after_s == 2 * 86400 + 1
    # Seven days after the first, a slot opens again.
    decide(
        Slice(sender=state.sender),
        d.SendInvitation("ix", "ann", "m9"),
        rules,
        NOW + timedelta(days=7, seconds=1),
    )


def test_blocked_either_way_gives_the_same_answer() -> None:
    for blocker in ("ann", "bob"):
        state = evolve(
            Slice(),
            ev.MemberBlocked(blocker=blocker, blocked="bob" if blocker == "ann" else "ann"),
            NOW,
        )
        with pytest.raises(NotFound) as info:
            decide(state, d.SendInvitation("i1", "ann", "bob"), RULES, NOW)
        with pytest.raises(NotFound) as unknown:
            decide(Slice(recipient_known=False), d.SendInvitation("i1", "ann", "bob"), RULES, NOW)
        # A block answers exactly as a member that does not exist.
        assert (info.value.code, info.value.message) == (unknown.value.code, unknown.value.message)


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
        decide(sent(), command, RULES, NOW)


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
        decide(state, d.Accept("i1", "bob"), RULES, NOW)
    assert info.value.code == "invitation_finished"


def test_reports_restrict_the_sender_past_the_threshold() -> None:
    rules = replace(RULES, report_threshold=2)
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
        decide(Slice(sender=state.sender), d.SendInvitation("i9", "spam", "x"), rules, NOW)
    assert info.value.code == "sender_restricted"


def test_expiry_after_180_days_only_for_pending() -> None:
    state = sent()
    assert decide(state, d.Expire("i1"), RULES, NOW + timedelta(days=179)) == []
    state, events = run(state, d.Expire("i1"), NOW + timedelta(days=180))
    assert events == [ev.InvitationExpired(invitation_id="i1", sender="ann", recipient="bob")]
    assert decide(state, d.Expire("i1"), RULES, NOW + timedelta(days=200)) == []


def test_connection_rejected_folds_back_and_frees_the_pair() -> None:
    state, _ = run(sent(), d.Accept("i1", "bob"))
    state = evolve(
        state,
        ev.ConnectionRejected(
            invitation_id="i1", sender="ann", recipient="bob", reason="cap_reached"
        ),
        NOW,
    )
    assert (state.invitation.status, state.invitation.reason) == ("rejected", "cap_reached")  # type: ignore[union-attr]
    assert not state.pair.connected
    decide(state, d.SendInvitation("i2", "ann", "bob"), RULES, NOW)


def test_removed_connection_allows_inviting_again() -> None:
    state = evolve(Slice(), ev.ConnectionAccepted(member_a="ann", member_b="bob"), NOW)
    with pytest.raises(Conflict):
        decide(state, d.SendInvitation("i1", "ann", "bob"), RULES, NOW)
    state = evolve(
        state, ev.ConnectionRemoved(member_a="ann", member_b="bob", removed_by="bob"), NOW
    )
    decide(state, d.SendInvitation("i1", "ann", "bob"), RULES, NOW)


def test_block_cancels_the_pending_invitation() -> None:
    blocked = ev.MemberBlocked(blocker="bob", blocked="ann")
    state = evolve(sent(), blocked, NOW)
    state, events = run(state, d.React(blocked))
    assert events == [
        ev.InvitationWithdrawn(
            invitation_id="i1", sender="ann", recipient="bob", reason="blocked", blocker="bob"
        )
    ]
    assert state.invitation.status == "cancelled"  # type: ignore[union-attr]
    assert "ann" not in state.pair.withdrawn_at  # a cancellation is not a withdrawal


def _seen(state: d.Slice, member: str) -> tuple[str, datetime]:
    assert state.invitation is not None
    inv = state.invitation.seen_by(member)
    return inv.status, inv.updated_at


LATER = NOW + timedelta(days=3)


def test_a_decline_looks_pending_to_the_sender_until_it_expires() -> None:
    state, _ = run(sent(), d.Decline("i1", "bob"), LATER)
    assert _seen(state, "bob") == ("declined", LATER)
    assert _seen(state, "ann") == ("pending", NOW)  # not even the time of the decline shows
    # Inviting again answers as it would for a pending invitation...
    with pytest.raises(Conflict) as info:
        decide(state, d.SendInvitation("i2", "ann", "bob"), RULES, LATER)
    assert info.value.code == "already_pending"
    # ...and at its expiry the sender sees it expire, like any unanswered invitation.
    expiry = NOW + RULES.expiry
    assert decide(state, d.Expire("i1"), RULES, expiry - timedelta(seconds=1)) == []
    state, events = run(state, d.Expire("i1"), expiry)
    assert [type(e) for e in events] == [ev.InvitationExpired]
    assert _seen(state, "ann") == ("expired", expiry)
    assert _seen(state, "bob") == ("declined", LATER)
    decide(state, d.SendInvitation("i2", "ann", "bob"), RULES, expiry)


def test_the_sender_may_withdraw_a_privately_declined_invitation() -> None:
    state, _ = run(sent(), d.Report("i1", "bob"), LATER)
    state, events = run(state, d.Withdraw("i1", "ann"), LATER)
    assert [type(e) for e in events] == [ev.InvitationWithdrawn]
    assert _seen(state, "ann") == ("withdrawn", LATER)
    with pytest.raises(Conflict) as info:  # the cooldown of a withdrawal applies
        decide(state, d.SendInvitation("i2", "ann", "bob"), RULES, LATER)
    assert info.value.code == "reinvite_cooldown"
    with pytest.raises(Conflict) as finished:
        decide(state, d.Withdraw("i1", "ann"), RULES, LATER)
    assert finished.value.message == "the invitation is already withdrawn"


def test_the_recipient_may_still_invite_back_after_declining() -> None:
    state, _ = run(sent(), d.Decline("i1", "bob"), LATER)
    state, events = run(state, d.SendInvitation("i2", "bob", "ann"), LATER)
    assert [type(e) for e in events] == [ev.InvitationSent]
    # The first sender inviting back accepts it, as with any pending invitation to them.
    _, events = run(state, d.SendInvitation("i3", "ann", "bob"), LATER)
    assert [type(e) for e in events] == [ev.InvitationAccepted]


def test_a_block_shows_each_blocked_party_a_plain_outcome() -> None:
    by_recipient = ev.MemberBlocked(blocker="bob", blocked="ann")
    state, _ = run(evolve(sent(), by_recipient, LATER), d.React(by_recipient), LATER)
    assert _seen(state, "ann") == ("pending", NOW)  # as if bob had ignored it
    by_sender = ev.MemberBlocked(blocker="ann", blocked="bob")
    state, _ = run(evolve(sent(), by_sender, LATER), d.React(by_sender), LATER)
    assert _seen(state, "bob") == ("withdrawn", LATER)  # as if ann had withdrawn it
    with pytest.raises(Conflict) as info:
        decide(state, d.Accept("i1", "bob"), RULES, LATER)
    assert info.value.message == "the invitation is already withdrawn"


def test_an_acting_member_who_is_not_active_is_refused_like_any_refusal() -> None:
    refusals = []
    for command in (d.Accept("i1", "bob"), d.Decline("i1", "bob"), d.Withdraw("i1", "ann")):
        with pytest.raises(Forbidden) as info:
            decide(replace(sent(), actor_known=False), command, RULES, NOW)
        refusals.append((info.value.code, info.value.message))
    with pytest.raises(Forbidden) as wrong_party:
        decide(sent(), d.Accept("i1", "ann"), RULES, NOW)
    refusals.append((wrong_party.value.code, wrong_party.value.message))
    assert set(refusals) == {("not_allowed", REFUSED_MESSAGE)}
