"""The member directory: who is registered and active, and who blocked whom.

The connection service owns it and changes it in the same atomic commit as its events
(`MemberRegistered`, `MemberDeactivated`, `MemberBlocked`, `MemberUnblocked`). The invitation
and engagement services read it, never write it, in the same round trip that loads a
command's slice. So a member or a block the connection service answered 2xx for is never
contradicted by another service (read-your-writes across services), and checking costs no
extra round trip. Events remain the contract between services; the directory is the one
read-only index they share, documented here and in the README.

It is laid out in the write services' slot groups (`shared.groups`), so that the connection
service commits it with the aggregate it belongs to: "active" is one set per group, in the
member's group (`directory:{g0417}:active`); blocks are one set per group, in the pair's
group (`directory:{g0012}:blocks`, members `blocker>blocked`).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.groups import SlotGroups, tag
from shared.settings import ServiceSettings
from shared.topics import pair_key


@dataclass(frozen=True)
class Directory:
    root: str  # the key prefix, e.g. `rapport:directory`
    groups: SlotGroups

    @classmethod
    def of(cls, settings: ServiceSettings) -> Directory:
        return cls(settings.key("directory"), settings.groups)

    def is_active(self, member: str) -> tuple[str, str]:
        """A set-membership check (for `Plan.checks`): the member is registered and active."""
        return f"{self.root}:{tag(self.groups.of(member))}:active", member

    def blocks_from(self, blocker: str, blocked: str) -> tuple[str, str]:
        """A set-membership check: `blocker` blocks `blocked`."""
        group = self.groups.of(pair_key(blocker, blocked))
        return f"{self.root}:{tag(group)}:blocks", f"{blocker}>{blocked}"
