"""HTTP edge of the projection service. Its routes land with issue #6."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
