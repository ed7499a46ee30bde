"""Wiring of the invitation service: settings, store, consumers, sweep, routers."""

from __future__ import annotations

from fastapi import FastAPI

from services.invitation import api
from services.invitation.consumers import InvitationConsumers, expire_due
from services.invitation.store import InvitationStore
from shared.service import Runtime, create_service_app
from shared.settings import InvitationSettings


def create_app(settings: InvitationSettings | None = None) -> FastAPI:
    settings = settings or InvitationSettings()

    def wire(runtime: Runtime) -> InvitationStore:
        store = InvitationStore(runtime.state, settings)
        runtime.subscribe(*InvitationConsumers(store).subscriptions())
        runtime.every(
            settings.expiry_sweep_interval_s, lambda: expire_due(store), "invitation-expiry"
        )
        return store

    return create_service_app(
        settings,
        title="Rapport invitation service",
        description="Invitation lifecycle (write side).",
        routers=[api.router],
        wire=wire,
    )
