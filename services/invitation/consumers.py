"""What the invitation service does with events: one map from event type to handler per
subscription. Other services' decisions fold into the pairs; with several slot groups, its
own events finish the sagas a request started (both members' sides of an invitation), in
case the process stopped half-way (a request makes those steps at once, so here they are
no-ops); with one group a request commits them all at once, leaving nothing to finish. Also
the expiry sweep, safe on several replicas because each expiry is an optimistic commit."""

from __future__ import annotations

from datetime import UTC, datetime

from services.invitation import domain
from services.invitation.store import InvitationStore
from shared import events as ev
from shared.consumer import ConsumedEvent, Subscription
from shared.settings import ConnectionSettings
from shared.topics import CONNECTIONS, INVITATIONS, MEMBERS


class InvitationConsumers:
    def __init__(self, store: InvitationStore) -> None:
        self.store = store

    def subscriptions(self) -> list[Subscription]:
        react = self.fold_connection_decision
        decisions = [
            Subscription(
                "decisions",
                [MEMBERS, CONNECTIONS],
                {
                    ev.MemberDeactivated: self.cancel_invitations_of_deactivated_member,
                    ev.ConnectionAccepted: self.fold_connection_accepted,
                    ev.ConnectionRemoved: react,
                    ev.ConnectionRejected: react,
                    ev.MemberBlocked: react,
                    ev.MemberUnblocked: react,
                },
                # Folding a decision back into its invitation, and cancellations: a 2xx
                # already answered what they change (the directory, the connection).
                background=True,
            )
        ]
        if self.store.at_once:
            return decisions  # every saga took one commit: nothing is ever left half-way
        return [
            *decisions,
            Subscription(
                "own-sagas",
                [INVITATIONS],
                {
                    kind: self.settle_members
                    for kind in (
                        ev.InvitationSent,
                        ev.InvitationAccepted,
                        ev.InvitationDeclined,
                        ev.InvitationWithdrawn,
                        ev.InvitationExpired,
                    )
                },
            ),
        ]

    async def settle_members(self, consumed: ConsumedEvent) -> None:
        event = consumed.event
        assert isinstance(event, ev.InvitationEvent)
        # No touch: a commit only where a side still differs from its invitation.
        await self.store.settle(event.sender, event.recipient, event.invitation_id, touch=False)

    async def cancel_invitations_of_deactivated_member(self, consumed: ConsumedEvent) -> None:
        event = consumed.event
        assert isinstance(event, ev.MemberDeactivated)
        for invitation_id in await self.store.pending_of(event.member_id):
            await self.store.run(
                domain.Cancel(invitation_id, "deactivated"),
                causation=consumed.envelope,
                now=consumed.envelope.occurred_at,
            )

    async def fold_connection_accepted(self, consumed: ConsumedEvent) -> None:
        # The connection service's answer to an invitation this service accepted: that
        # accept already made the pair connected (and only a fold of the pair's removal or
        # rejection, which must come first, undoes it), so the fold would change nothing and
        # cost an accept a third command. A connection made elsewhere (another producer, no
        # invitation) is folded: the pair learns it is connected.
        event = consumed.event
        assert isinstance(event, ev.ConnectionAccepted)
        answered = consumed.envelope.producer == ConnectionSettings.service
        if answered and event.invitation_id is not None:
            return
        await self.fold_connection_decision(consumed)

    async def fold_connection_decision(self, consumed: ConsumedEvent) -> None:
        # At the time of the observed event, so the state it leaves is what a replay of the
        # log makes of it (and a cancellation is dated by the block that caused it).
        await self.store.run(
            domain.React(consumed.event),
            observed=consumed.event,
            causation=consumed.envelope,
            dedupe_key=consumed.dedupe_key,
            now=consumed.envelope.occurred_at,
        )


async def expire_due(store: InvitationStore, now: datetime | None = None) -> int:
    """Expire every pending invitation past its age; returns how many this call expired."""
    at = now or datetime.now(UTC)
    expired = 0
    for invitation_id in await store.due_for_expiry(at):
        outcome = await store.run(domain.Expire(invitation_id), now=at)
        expired += len(outcome.envelopes)
    return expired
