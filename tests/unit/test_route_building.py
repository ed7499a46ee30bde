"""Every route of a service is built before its first request (shared.service.build_routes):
FastAPI builds an included router's routes lazily, on the first request matched against
them, and the first caller of each process waited for it (about 60 ms on the bench machine,
the whole of the idle freshness bench's worst sample)."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI

from services.connection.main import create_app as connection_app
from services.engagement.main import create_app as engagement_app
from services.invitation.main import create_app as invitation_app
from services.projection.main import create_app as projection_app
from shared.service import build_routes


def _unbuilt(app: FastAPI) -> list[str]:
    """Included routers whose routes are not built yet (FastAPI 0.137 on keeps each as one
    node of `app.routes` that builds its routes when first matched)."""
    return [
        repr(route.original_router.prefix)  # type: ignore[attr-defined]
        for route in app.router.routes
        if hasattr(route, "effective_candidates") and route._effective_candidates_version is None  # type: ignore[attr-defined]
    ]


@pytest.mark.parametrize(
    "create_app", [invitation_app, connection_app, engagement_app, projection_app]
)
def test_every_included_router_is_built_before_the_first_request(create_app: object) -> None:
    app = create_app()  # type: ignore[operator]
    assert _unbuilt(app), "FastAPI builds included routers eagerly now: build_routes can go"
    asyncio.run(build_routes(app))
    assert _unbuilt(app) == []
