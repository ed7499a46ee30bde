"""Slot groups: how a write service lays out its keys so that it runs on Redis Cluster.

A command commits its state changes and its outbox entry in one script, and on Redis Cluster
every key of one script must share a hash slot. So every key of a partitioned write service
carries the hash tag of its owner's group, `{g0417}` for group `crc32(owner) % count`: the
owner is what a command is about (the actor of an engagement, a member, a pair). Each group
has its own outbox stream, relayed in order under its own lease (`shared.outbox`), and every
event of one owner is in one group, so per-key order holds.

`count` is fixed when a deployment is created (`RAPPORT_SLOT_GROUPS`): like a topic's
partitions it cannot change without moving the data (`rapport replay` rebuilds a service's
state into a new layout). One node needs one group; a cluster needs at least as many as it
has primaries, and a few times more so that slots spread evenly.
"""

from __future__ import annotations

import enum
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from redis.crc import key_slot

_TAG = re.compile(r"\{([^}]+)\}")


class KeyLayout(enum.Enum):
    """How a service lays out its Redis keys, which decides whether it runs on a cluster."""

    ONE_NODE = "one node"  # keys one script spans may be anywhere: refuses Redis Cluster
    SLOT_GROUPS = "slot groups"  # a write service's keys and outboxes in groups (shared.groups)
    HASH_TAGGED = "hash tagged"  # the service tags its own keys (the projection, per member)


@dataclass(frozen=True)
class SlotGroups:
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= 16384:
            raise ValueError("slot groups: between 1 and 16384 (Redis Cluster's slots)")

    @property
    def single(self) -> bool:
        """One group holds every key: what spans a pair and its members can take one commit."""
        return self.count == 1

    def of(self, owner: str) -> str:
        """The group of `owner`'s keys, e.g. `g0417`."""
        if self.single:
            return "g0000"  # a hot path: every key of every command asks
        return f"g{zlib.crc32(owner.encode()) % self.count:04d}"

    def split(self, owners: Iterable[str]) -> list[tuple[str, ...]]:
        """The owners (each once, in order) by group: one commit per group."""
        by_group: dict[str, list[str]] = {}
        for owner in dict.fromkeys(owners):
            by_group.setdefault(self.of(owner), []).append(owner)
        return [tuple(owners) for owners in by_group.values()]

    def all(self) -> list[str]:
        return [f"g{i:04d}" for i in range(self.count)]


def tag(group: str) -> str:
    """The hash tag that puts a key in `group`'s slot."""
    return "{" + group + "}"


def group_of_key(key: str) -> str | None:
    """The group a key's hash tag names, None for a key without one."""
    found = _TAG.search(key)
    return found.group(1) if found else None


def outside(keys: Iterable[str], group: str) -> list[str]:
    """The keys that are not in `group` (a commit in that group must not write them)."""
    return [k for k in keys if group_of_key(k) != group]


def slot(key: str) -> int:
    """The Redis Cluster hash slot of `key` (its hash tag's, when it has one)."""
    return int(key_slot(key.encode()))
