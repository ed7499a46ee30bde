"""Wiring of the engagement service: settings, store, consumers, routers."""

from __future__ import annotations

from fastapi import FastAPI

from services.engagement import api
from services.engagement.consumers import EngagementConsumers
from services.engagement.store import EngagementStore
from shared.service import Runtime, create_service_app
from shared.settings import EngagementSettings


def create_app(settings: EngagementSettings | None = None) -> FastAPI:
    settings = settings or EngagementSettings()

    def wire(runtime: Runtime) -> EngagementStore:
        store = EngagementStore(runtime.state, settings)
        runtime.subscribe(*EngagementConsumers(store).subscriptions())
        return store

    return create_service_app(
        settings,
        title="Rapport engagement service",
        description="Engagement and milestones (write side).",
        routers=[api.router],
        wire=wire,
        layout=EngagementStore.layout,
    )
