"""Wiring of the connection service: settings, store, consumers, routers."""

from __future__ import annotations

from fastapi import FastAPI

from services.connection import api
from services.connection.consumers import ConnectionConsumers
from services.connection.store import ConnectionStore
from shared.service import Runtime, create_service_app
from shared.settings import ConnectionSettings


def create_app(settings: ConnectionSettings | None = None) -> FastAPI:
    settings = settings or ConnectionSettings()

    def wire(runtime: Runtime) -> ConnectionStore:
        store = ConnectionStore(runtime.state, settings)
        runtime.subscribe(*ConnectionConsumers(store, settings.connection_cap).subscriptions())
        return store

    return create_service_app(
        settings,
        title="Rapport connection service",
        description="Members, connections, follows, blocks and lists (write side).",
        routers=[api.router],
        wire=wire,
        layout=ConnectionStore.layout,
    )
