"""HTTP edge of the engagement service. Its routes land with issue #5."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
