"""What the invitation service does with other services' events: one map from event type to
handler per subscription. Also the expiry sweep, safe on several replicas because each
expiry is an optimistic commit."""

from __future__ import annotations

from datetime import UTC, datetime

from services.invitation import domain
from services.invitation.store import InvitationStore
from shared import events as ev
from shared.commands import IndexOp
from shared.consumer import ConsumedEvent, Subscription
from shared.topics import CONNECTIONS, MEMBERS


class InvitationConsumers:
    def __init__(self, store: InvitationStore) -> None:
        self.store = store

    def subscriptions(self) -> list[Subscription]:
        react = self.fold_connection_decision
        return [
            Subscription(
                "members",
                [MEMBERS],
                {
                    ev.MemberRegistered: self.add_invitable_member,
                    ev.MemberDeactivated: self.cancel_invitations_of_deactivated_member,
                },
            ),
            Subscription(
                "connections",
                [CONNECTIONS],
                {
                    ev.ConnectionAccepted: react,
                    ev.ConnectionRemoved: react,
                    ev.ConnectionRejected: react,
                    ev.MemberBlocked: react,
                    ev.MemberUnblocked: react,
                },
            ),
        ]

    async def add_invitable_member(self, consumed: ConsumedEvent) -> None:
        await self._members("SADD", consumed)

    async def cancel_invitations_of_deactivated_member(self, consumed: ConsumedEvent) -> None:
        event = consumed.event
        assert isinstance(event, ev.MemberDeactivated)
        for invitation_id in await self.store.pending_of(event.member_id):
            await self.store.run(
                domain.Cancel(invitation_id, "deactivated"), causation=consumed.envelope
            )
        await self._members("SREM", consumed)

    async def fold_connection_decision(self, consumed: ConsumedEvent) -> None:
        await self.store.run(
            domain.React(consumed.event),
            observed=consumed.event,
            causation=consumed.envelope,
            dedupe_key=consumed.dedupe_key,
        )

    async def _members(self, op: str, consumed: ConsumedEvent) -> None:
        """The set of members one may invite, changed once per event."""
        member = consumed.event.member_id  # type: ignore[attr-defined]
        await self.store.store.commit(
            [],
            [],
            index_ops=[IndexOp(op, self.store.members_key, member)],  # type: ignore[arg-type]
            dedupe_key=consumed.dedupe_key,
        )


async def expire_due(store: InvitationStore, now: datetime | None = None) -> int:
    """Expire every pending invitation past its age; returns how many this call expired."""
    at = now or datetime.now(UTC)
    expired = 0
    for invitation_id in await store.due_for_expiry(at):
        outcome = await store.run(domain.Expire(invitation_id), now=at)
        expired += len(outcome.envelopes)
    return expired
