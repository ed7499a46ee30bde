"""The member directory: who is registered and active, and who blocked whom.

The connection service owns it and changes it in the same atomic commit as its events
(`MemberRegistered`, `MemberDeactivated`, `MemberBlocked`, `MemberUnblocked`). The invitation
and engagement services read it, never write it, in the same round trip that loads a
command's slice. So a member or a block the connection service answered 2xx for is never
contradicted by another service (read-your-writes across services), and checking costs no
extra round trip. Events remain the contract between services; the directory is the one
read-only index they share, documented here and in the README.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.settings import ServiceSettings


@dataclass(frozen=True)
class Directory:
    active_members: str
    blocks: str  # set of "blocker>blocked"

    @classmethod
    def of(cls, settings: ServiceSettings) -> Directory:
        return cls(settings.key("directory", "active"), settings.key("directory", "blocks"))

    def is_active(self, member: str) -> tuple[str, str]:
        """A set-membership check (for `Plan.checks`): the member is registered and active."""
        return self.active_members, member

    def blocks_from(self, blocker: str, blocked: str) -> tuple[str, str]:
        """A set-membership check: `blocker` blocks `blocked`."""
        return self.blocks, f"{blocker}>{blocked}"
