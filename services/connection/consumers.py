"""What the connection service does with events: an accepted invitation becomes a connection
(or a rejection the invitation service folds back); and its own events finish the sagas a
request started (members' sides of a pair, with several slot groups; a deactivated member's
connections), in case the process stopped half-way. A request makes those steps at once, so
here they are no-ops."""

from __future__ import annotations

from services.connection.store import ConnectionStore
from shared import events as ev
from shared.consumer import ConsumedEvent, EventHandler, Subscription
from shared.topics import CONNECTIONS, INVITATIONS, MEMBERS


class ConnectionConsumers:
    def __init__(self, store: ConnectionStore, connection_cap: int) -> None:
        self.store = store
        self.connection_cap = connection_cap

    def subscriptions(self) -> list[Subscription]:
        ending: dict[type[ev.Event], EventHandler] = {
            ev.MemberDeactivated: self.end_connections_of_deactivated_member
        }
        sides: dict[type[ev.Event], EventHandler] = {
            ev.ConnectionAccepted: self.settle_members,
            ev.ConnectionRemoved: self.settle_members,
        }
        return [
            Subscription(
                "invitations",
                [INVITATIONS],
                {ev.InvitationAccepted: self.connect_accepted_invitation},
            ),
            # With one group a pair and its members' sides commit at once: only a
            # deactivated member's connections (one commit each) can be left half-way.
            Subscription("own-sagas", [MEMBERS], ending, background=True)
            if self.store.at_once
            else Subscription("own-sagas", [CONNECTIONS, MEMBERS], sides | ending),
        ]

    async def connect_accepted_invitation(self, consumed: ConsumedEvent) -> None:
        invitation = consumed.event
        assert isinstance(invitation, ev.InvitationAccepted)
        await self.store.accept(
            invitation,
            self.connection_cap,
            causation=consumed.envelope,
            dedupe_key=consumed.dedupe_key,
        )

    async def settle_members(self, consumed: ConsumedEvent) -> None:
        event = consumed.event
        assert isinstance(event, ev.ConnectionAccepted | ev.ConnectionRemoved)
        # No touch: a commit only where a side still differs from its pair.
        await self.store.settle(event.member_a, event.member_b, touch=False)

    async def end_connections_of_deactivated_member(self, consumed: ConsumedEvent) -> None:
        event = consumed.event
        assert isinstance(event, ev.MemberDeactivated)
        await self.store.end_connections(event.member_id)
