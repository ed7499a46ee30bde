"""Subscribers of the invitation service: members it may invite, and what the connection
service decided (connections, rejections, blocks) folded back into invitations. Also the
expiry sweep, safe on several replicas because each expiry is an optimistic commit."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from services.invitation import domain
from services.invitation.store import InvitationStore
from shared import events as ev
from shared.consumer import TRANSIENT_ERRORS, ConsumedEvent
from shared.service import Runtime
from shared.settings import InvitationSettings
from shared.topics import CONNECTIONS, MEMBERS

log = logging.getLogger("rapport.invitation")

FOLDED = (
    ev.ConnectionAccepted,
    ev.ConnectionRemoved,
    ev.ConnectionRejected,
    ev.MemberBlocked,
    ev.MemberUnblocked,
)


def register(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, InvitationSettings)
    store = InvitationStore(runtime.redis, runtime.outbox, settings)
    runtime.store = store

    async def track_members(events: list[ConsumedEvent]) -> None:
        for consumed in events:
            event = consumed.event
            if isinstance(event, ev.MemberDeactivated):
                for invitation_id in await store.pending_of(event.member_id):
                    await store.execute(
                        domain.Cancel(invitation_id, "deactivated"), causation=consumed.envelope
                    )
            if isinstance(event, ev.MemberRegistered | ev.MemberDeactivated):
                await store.membership(event, consumed.dedupe_key)

    async def fold_connection_decisions(events: list[ConsumedEvent]) -> None:
        for consumed in events:
            if isinstance(consumed.event, FOLDED):
                await store.execute(
                    observed=consumed.event,
                    causation=consumed.envelope,
                    dedupe_key=consumed.dedupe_key,
                )

    runtime.consumer("members", track_members, [MEMBERS])
    runtime.consumer("connections", fold_connection_decisions, [CONNECTIONS])
    runtime.spawn(
        lambda: expiry_sweep(store, settings.expiry_sweep_interval_s), "invitation-expiry"
    )


async def expire_due(store: InvitationStore, now: datetime | None = None) -> int:
    """Expire every pending invitation past its age; returns how many this call expired."""
    at = now or datetime.now(UTC)
    expired = 0
    for invitation_id in await store.due_for_expiry(at):
        outcome = await store.execute(domain.Expire(invitation_id), now=at)
        expired += len(outcome.envelopes)
    return expired


async def expiry_sweep(store: InvitationStore, interval_s: float) -> None:
    while True:
        try:
            await expire_due(store)
        except TRANSIENT_ERRORS as exc:
            log.warning("expiry sweep: %r", exc)
        # Periodic by nature: there is no event to wait on for "time passed".
        await asyncio.sleep(interval_s)
