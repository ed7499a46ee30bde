"""Wiring of the invitation service: settings, store, consumers, sweep, routers."""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI

from services.invitation import api
from services.invitation.consumers import InvitationConsumers, expire_due
from services.invitation.domain import Rules
from services.invitation.store import InvitationStore
from shared.service import Runtime, create_service_app
from shared.settings import InvitationSettings


def rules_from(settings: InvitationSettings) -> Rules:
    return Rules(
        message_max_chars=settings.message_max_chars,
        weekly_limit=settings.weekly_limit,
        reinvite_cooldown=timedelta(days=settings.reinvite_cooldown_days),
        expiry=timedelta(days=settings.expiry_days),
        report_threshold=settings.report_threshold,
    )


def create_app(settings: InvitationSettings | None = None) -> FastAPI:
    settings = settings or InvitationSettings()

    def wire(runtime: Runtime) -> InvitationStore:
        store = InvitationStore(runtime.state, settings, rules_from(settings))
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
        layout=InvitationStore.layout,
    )
