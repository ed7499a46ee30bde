"""Subscribers of the connection service: accepted invitations become connections."""

from __future__ import annotations

from services.connection import domain
from services.connection.store import ConnectionStore
from shared import events as ev
from shared.consumer import ConsumedEvent
from shared.service import Runtime
from shared.settings import ConnectionSettings
from shared.topics import INVITATIONS


def register(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, ConnectionSettings)
    store = ConnectionStore(runtime.redis, runtime.outbox, settings)
    runtime.store = store

    async def connect_accepted_invitations(events: list[ConsumedEvent]) -> None:
        for consumed in events:
            if isinstance(consumed.event, ev.InvitationAccepted):
                invitation = consumed.event
                await store.execute(
                    domain.AcceptConnection(
                        invitation_id=invitation.invitation_id,
                        sender=invitation.sender,
                        recipient=invitation.recipient,
                        cap=settings.connection_cap,
                    ),
                    causation=consumed.envelope,
                    dedupe_key=consumed.dedupe_key,
                )

    runtime.consumer("invitations", connect_accepted_invitations, [INVITATIONS])
