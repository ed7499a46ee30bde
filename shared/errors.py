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
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

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
    """Raised by routes and the service layer; becomes a JSON error response."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class DomainError(ApiError):
    """A rule of the domain said no. Raised by pure `decide` functions; the API maps it as is."""

    status = 400
    default_code = "rejected"

    def __init__(
        self, message: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(self.status, code or self.default_code, message, headers)


class NotFound(DomainError):
    status, default_code = 404, "not_found"


class Conflict(DomainError):
    status, default_code = 409, "conflict"


class Forbidden(DomainError):
    status, default_code = 403, "forbidden"


class Invalid(DomainError):
    status, default_code = 422, "invalid_request"


class RateLimited(DomainError):
    status, default_code = 429, "rate_limited"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})
        self.retry_after_s = retry_after_s


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


def install_error_handlers(app: FastAPI) -> None:
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

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal", "internal error")


class ContendedWrite(Unavailable):
    """Optimistic retries ran out: an aggregate is too hot right now; retry shortly."""

    def __init__(self) -> None:
        super().__init__("too many concurrent writes to the same record, retry shortly")
