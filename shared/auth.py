"""Who is calling, and what they may do.

Three kinds of bearer token, each a comma-separated setting:
- service (`RAPPORT_API_TOKENS`): the gateway's. It acts for the member it names in
  `X-Member-Id` (member calls), and may read the shared figures (industries, ops views).
- ops (`RAPPORT_OPS_TOKENS`): read-only operations: status, dashboard data, industries.
- admin (`RAPPORT_ADMIN_TOKENS`): changes the system itself (a rebuild), plus what ops reads.

No token, or one that is none of these: 401. A known token on a call its role does not
cover: 403, with the same body as any refusal. `/healthz`, `/readyz`, `/metrics` and the
dashboard page itself need no token (they carry no member data; the dashboard asks for one).
"""

from __future__ import annotations

import hmac
import re
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Header, Request

from shared.domain import refused
from shared.errors import ApiError
from shared.events import ID_PATTERN

_ID = re.compile(ID_PATTERN)


class Role(StrEnum):
    SERVICE = "service"
    OPS = "ops"
    ADMIN = "admin"


def _matches(token: str, allowed: list[str]) -> bool:
    # Compare against every token so timing does not reveal which prefix matched.
    matched = False
    for candidate in allowed:
        matched |= hmac.compare_digest(token.encode(), candidate.encode())
    return matched


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def role_of(request: Request) -> Role:
    """The role of `Authorization: Bearer <token>`; 401 when there is none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("missing bearer token")
    settings = request.app.state.settings
    found = None
    # Every list is checked, so timing does not tell which role a token has.
    for role, tokens in (
        (Role.SERVICE, settings.api_tokens),
        (Role.OPS, settings.ops_tokens),
        (Role.ADMIN, settings.admin_tokens),
    ):
        if _matches(token, tokens) and found is None:
            found = role
    if found is None:
        raise _unauthorized("invalid bearer token")
    return found


async def caller_role(request: Request) -> Role:
    return role_of(request)


CallerRole = Annotated[Role, Depends(caller_role)]


async def require_service(role: CallerRole) -> None:
    """The gateway's token: member calls and what the product shows every member."""
    if role is not Role.SERVICE:
        raise refused()


async def require_reader(role: CallerRole) -> None:
    """Read-only shared views: the service, ops or admin token."""


async def require_operator(role: CallerRole) -> None:
    """Operators' views into any member's network (the dashboard's explorer): the ops or
    admin token, never the gateway's."""
    if role not in (Role.OPS, Role.ADMIN):
        raise refused()


async def require_admin(role: CallerRole) -> None:
    if role is not Role.ADMIN:
        raise refused()


async def acting_member(
    request: Request,
    x_member_id: Annotated[
        str | None, Header(description="The member on whose behalf the call is made")
    ] = None,
) -> str:
    """The gateway's token and the member it acts for. One dependency rather than a chain
    of three: it runs on every member call, and FastAPI solves each level on its own."""
    if role_of(request) is not Role.SERVICE:
        raise refused()
    if not x_member_id:
        raise _unauthorized("missing X-Member-Id header")
    if not _ID.fullmatch(x_member_id):
        raise ApiError(400, "invalid_member_id", "X-Member-Id must match " + ID_PATTERN)
    return x_member_id


Authenticated = Annotated[None, Depends(require_service)]
Reader = Annotated[None, Depends(require_reader)]
Operator = Annotated[None, Depends(require_operator)]
Admin = Annotated[None, Depends(require_admin)]
ActingMember = Annotated[str, Depends(acting_member)]


def require_self(member_id: str, acting: str) -> None:
    """403 when a member asks for a view that belongs to another member."""
    if member_id != acting:
        raise refused()
