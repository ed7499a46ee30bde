"""Wiring of the projection service: settings, Redis, broker, routers. Nothing else lives here."""

from __future__ import annotations

from fastapi import FastAPI

from services.projection import api, consumers, dashboard
from shared.service import create_service_app
from shared.settings import ProjectionSettings


def create_app(settings: ProjectionSettings | None = None) -> FastAPI:
    settings = settings or ProjectionSettings()
    return create_service_app(
        settings,
        title="Rapport projection service",
        description="Redis read models and the query API.",
        routers=[api.router, dashboard.router],
        setup=consumers.register,
    )
