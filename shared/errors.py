"""The JSON error model `{"error": {"code", "message"}}` and the handlers that guarantee it.

Anything our code did not anticipate still answers JSON without a stack trace; infrastructure
outages answer 503 with Retry-After, because they are transient and the caller should retry.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.commands import ContendedWrite
from shared.domain import Conflict, DomainError, Forbidden, Invalid, NotFound, RateLimited
from shared.redis import is_transient

log = logging.getLogger("rapport.errors")

RETRY_AFTER_S = 2


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": {"code": "already_connected", "message": "you are already connected"}}
            ]
        }
    )

    error: ErrorBody


class ApiError(Exception):
    """Raised at the HTTP edge (auth, routes); becomes a JSON error response as is."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class Unavailable(ApiError):
    def __init__(self, message: str = "a dependency is unavailable, retry shortly") -> None:
        super().__init__(503, "unavailable", message, {"Retry-After": str(RETRY_AFTER_S)})


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}

# Documented on every route so OpenAPI clients (and schemathesis) know the error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid bearer token"},
    422: {"model": ErrorResponse, "description": "Invalid request"},
    503: {"model": ErrorResponse, "description": "Redis or the broker is unavailable"},
}


# The one table from a domain error's kind to its HTTP status.
DOMAIN_STATUS: dict[type[DomainError], int] = {
    NotFound: 404,
    Conflict: 409,
    Forbidden: 403,
    Invalid: 422,
    RateLimited: 429,
}


def domain_status(exc: DomainError) -> int:
    for kind in type(exc).__mro__:
        if kind in DOMAIN_STATUS:
            return DOMAIN_STATUS[kind]
    return 400


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, RateLimited) else None
        return error_response(domain_status(exc), exc.code, exc.message, headers)

    @app.exception_handler(ContendedWrite)
    async def _contended(_: Request, exc: ContendedWrite) -> JSONResponse:
        return error_response(503, "unavailable", str(exc), {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    @app.exception_handler(KafkaError)
    @app.exception_handler(OSError)
    async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.warning("dependency unavailable: %r", exc)
        return error_response(
            503,
            "unavailable",
            "a dependency is unavailable, retry shortly",
            {"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(ResponseError)
    async def _redis_reply(request: Request, exc: ResponseError) -> JSONResponse:
        # BUSY, LOADING, READONLY, OOM, TRYAGAIN...: Redis says "not now", retry shortly.
        if is_transient(exc):
            return await _unavailable(request, exc)
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal", "internal error")
