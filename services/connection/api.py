"""HTTP edge of the connection service. Its routes land with issue #4."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
