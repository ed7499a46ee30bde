from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import events as ev
from shared.events import EVENT_TYPES, Envelope, InvalidEvent, decode
from shared.topics import CONNECTIONS, ENGAGEMENTS, INVITATIONS, MEMBERS, pair_key
from tests.strategies import event_strategy


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_event_type_round_trips_through_the_wire(
    event_type: str, data: st.DataObject
) -> None:
    event = data.draw(event_strategy(EVENT_TYPES[event_type]))
    envelope = Envelope.wrap(event, producer="test", correlation_id="c1", causation_id="c0")

    decoded_envelope, decoded_event = decode(envelope.to_bytes())

    assert decoded_event == event
    assert decoded_envelope == envelope
    assert decoded_envelope.type == event_type
    assert decoded_envelope.key == event.partition_key
    assert decoded_envelope.occurred_at.tzinfo is not None


def test_catalog_matches_design_topics() -> None:
    by_topic: dict[str, set[str]] = {}
    for name, cls in EVENT_TYPES.items():
        by_topic.setdefault(cls.topic, set()).add(name)
    assert by_topic[MEMBERS] == {"MemberRegistered", "MemberProfileUpdated", "MemberDeactivated"}
    assert by_topic[INVITATIONS] == {
        "InvitationSent",
        "InvitationAccepted",
        "InvitationDeclined",
        "InvitationWithdrawn",
        "InvitationExpired",
    }
    assert by_topic[CONNECTIONS] == {
        "ConnectionAccepted",
        "ConnectionRemoved",
        "ConnectionRejected",
        "MemberBlocked",
        "MemberUnblocked",
        "FollowStarted",
        "FollowStopped",
        "ConnectionListed",
        "ConnectionUnlisted",
    }
    assert by_topic[ENGAGEMENTS] == {"EngagementRecorded", "MilestoneAnnounced"}


def test_pair_events_share_a_key_in_both_directions() -> None:
    one = ev.InvitationSent(invitation_id="i1", sender="bob", recipient="alice")
    other = ev.FollowStarted(follower="alice", followee="bob")
    assert one.partition_key == other.partition_key == pair_key("bob", "alice") == "alice|bob"
    assert ev.EngagementRecorded(actor="zed", target="amy", kind="like").partition_key == "zed"


def test_events_are_frozen_and_validated() -> None:
    event = ev.MemberDeactivated(member_id="m1")
    with pytest.raises(ValueError):
        event.member_id = "m2"  # type: ignore[misc]
    with pytest.raises(ValueError):
        ev.MemberDeactivated(member_id="not valid!")


def test_a_field_added_by_a_newer_producer_is_ignored_and_kept() -> None:
    # A rolling deploy: the producer is one version ahead and sends optional fields this
    # consumer does not know yet, in the payload and in the envelope.
    body = json.loads(_raw())
    body["payload"]["reason_text"] = "moving on"
    body["trace_parent"] = "00-abc-01"
    envelope, event = decode(json.dumps(body).encode())
    assert event == ev.MemberDeactivated(member_id="m1")
    again = json.loads(envelope.to_bytes())  # what a re-send (a DLQ replay) carries
    assert again["payload"]["reason_text"] == "moving on"
    assert again["trace_parent"] == "00-abc-01"


def _raw(**overrides: object) -> bytes:
    envelope = Envelope.wrap(ev.MemberDeactivated(member_id="m1"), producer="test")
    body = json.loads(envelope.to_bytes())
    body.update(overrides)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("raw", "reason_start"),
    [
        (b"not json", "invalid"),
        (_raw(type="MemberTeleported"), "unknown_type"),
        (_raw(payload={"member_id": "bad id"}), "invalid"),
        (_raw(schema_version=7), "unsupported_version"),
        (_raw(key="someone-else"), "invalid"),
        (_raw(occurred_at="2026-01-01T00:00:00"), "invalid"),
    ],
)
def test_undecodable_events_carry_a_reason(raw: bytes, reason_start: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode(raw)
    assert info.value.reason.startswith(reason_start)


def test_upcaster_migrates_old_payloads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend MilestoneAnnounced v2 renamed `note` (v1) to `detail`.
    monkeypatch.setattr(ev.MilestoneAnnounced, "schema_version", 2)
    monkeypatch.setitem(
        ev.UPCASTERS,
        ("MilestoneAnnounced", 1),
        lambda p: {**{k: v for k, v in p.items() if k != "note"}, "detail": p.get("note")},
    )
    old = Envelope(
        type="MilestoneAnnounced",
        schema_version=1,
        producer="legacy",
        key="m1",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        payload={"member_id": "m1", "kind": "promotion", "note": "VP"},
    )
    _, event = decode(old.to_bytes())
    assert event == ev.MilestoneAnnounced(member_id="m1", kind="promotion", detail="VP")
