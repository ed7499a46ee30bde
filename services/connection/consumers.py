"""What the connection service does with other services' events: an accepted invitation
becomes a connection (or a rejection the invitation service folds back)."""

from __future__ import annotations

from services.connection import domain
from services.connection.store import ConnectionStore
from shared import events as ev
from shared.consumer import ConsumedEvent, Subscription
from shared.topics import INVITATIONS


class ConnectionConsumers:
    def __init__(self, store: ConnectionStore, connection_cap: int) -> None:
        self.store = store
        self.connection_cap = connection_cap

    def subscriptions(self) -> list[Subscription]:
        return [
            Subscription(
                "invitations",
                [INVITATIONS],
                {ev.InvitationAccepted: self.connect_accepted_invitation},
            )
        ]

    async def connect_accepted_invitation(self, consumed: ConsumedEvent) -> None:
        invitation = consumed.event
        assert isinstance(invitation, ev.InvitationAccepted)
        await self.store.run(
            domain.AcceptConnection(
                invitation_id=invitation.invitation_id,
                sender=invitation.sender,
                recipient=invitation.recipient,
                cap=self.connection_cap,
            ),
            causation=consumed.envelope,
            dedupe_key=consumed.dedupe_key,
        )
