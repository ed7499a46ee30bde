"""HTTP edge of the invitation service. Its routes land with issue #3."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
