"""Wiring of the engagement service: settings, Redis, broker, routers. Nothing else lives here."""

from __future__ import annotations

from fastapi import FastAPI

from services.engagement import api, consumers
from shared.service import create_service_app
from shared.settings import EngagementSettings


def create_app(settings: EngagementSettings | None = None) -> FastAPI:
    settings = settings or EngagementSettings()
    return create_service_app(
        settings,
        title="Rapport engagement service",
        description="Engagement and milestones (write side).",
        routers=[api.router],
        setup=consumers.register,
    )
