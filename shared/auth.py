"""Who is calling: a bearer token (the gateway's), and the member it says is acting."""

from __future__ import annotations

import hmac
import re
from typing import Annotated

from fastapi import Depends, Header, Request

from shared.errors import ApiError
from shared.events import ID_PATTERN

_ID = re.compile(ID_PATTERN)


def _tokens(request: Request) -> list[str]:
    return request.app.state.settings.api_tokens


async def require_token(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """401 unless `Authorization: Bearer <token>` matches one of RAPPORT_API_TOKENS."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "missing bearer token", {"WWW-Authenticate": "Bearer"})
    # Compare against every token so timing does not reveal which prefix matched.
    matched = False
    for allowed in _tokens(request):
        matched |= hmac.compare_digest(token.encode(), allowed.encode())
    if not matched:
        raise ApiError(401, "unauthorized", "invalid bearer token", {"WWW-Authenticate": "Bearer"})


async def acting_member(
    _: Annotated[None, Depends(require_token)],
    x_member_id: Annotated[
        str | None, Header(description="The member on whose behalf the call is made")
    ] = None,
) -> str:
    if not x_member_id:
        raise ApiError(401, "unauthorized", "missing X-Member-Id header")
    if not _ID.fullmatch(x_member_id):
        raise ApiError(400, "invalid_member_id", "X-Member-Id must match " + ID_PATTERN)
    return x_member_id


Authenticated = Annotated[None, Depends(require_token)]
ActingMember = Annotated[str, Depends(acting_member)]


def require_self(member_id: str, acting: str) -> None:
    """403 when a member asks for a view that belongs to another member."""
    if member_id != acting:
        raise ApiError(403, "forbidden", "members may only act on or read their own network")
