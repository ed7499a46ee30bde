"""Wiring of the connection service: settings, Redis, broker, routers. Nothing else lives here."""

from __future__ import annotations

from fastapi import FastAPI

from services.connection import api, consumers
from shared.service import create_service_app
from shared.settings import ConnectionSettings


def create_app(settings: ConnectionSettings | None = None) -> FastAPI:
    settings = settings or ConnectionSettings()
    return create_service_app(
        settings,
        title="Rapport connection service",
        description="Members, connections, follows, blocks and lists (write side).",
        routers=[api.router],
        setup=consumers.register,
    )
