"""Slot groups: every key of one owner in one hash slot, owners spread over the groups."""

from __future__ import annotations

from collections import Counter

from shared.groups import SlotGroups, group_of_key, slot, tag
from shared.outbox import in_group


def test_an_owner_always_lands_in_the_same_group_and_owners_spread_evenly() -> None:
    groups = SlotGroups(16)
    members = [f"member{i}" for i in range(16_000)]
    assert [groups.of(m) for m in members] == [SlotGroups(16).of(m) for m in members]
    spread = Counter(groups.of(m) for m in members)
    assert set(spread) == set(groups.all())
    assert max(spread.values()) < 1.1 * min(spread.values())
    assert SlotGroups(1).all() == ["g0000"] == list({SlotGroups(1).of(m) for m in members})


def test_keys_of_one_group_share_a_hash_slot() -> None:
    group = SlotGroups(1024).of("ann|bob")
    keys = [
        f"rapport:invitation:{tag(group)}:pair:ann|bob",
        in_group("rapport:invitation:outbox", group),
        in_group("rapport:invitation:seen:accepted:e1", group),
    ]
    assert len({slot(k) for k in keys}) == 1
    assert [group_of_key(k) for k in keys] == [group] * 3
    assert keys[1] == f"rapport:invitation:{{{group}}}:outbox"  # still ends in "outbox"
    assert group_of_key("rapport:invitation:outbox") is None
