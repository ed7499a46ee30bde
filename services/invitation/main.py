"""Wiring of the invitation service: settings, Redis, broker, routers. Nothing else lives here."""

from __future__ import annotations

from fastapi import FastAPI

from services.invitation import api, consumers
from shared.service import create_service_app
from shared.settings import InvitationSettings


def create_app(settings: InvitationSettings | None = None) -> FastAPI:
    settings = settings or InvitationSettings()
    return create_service_app(
        settings,
        title="Rapport invitation service",
        description="Invitation lifecycle (write side).",
        routers=[api.router],
        setup=consumers.register,
    )
