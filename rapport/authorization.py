"""The authorization matrix: every route of the four services, what each caller gets.

One row per operation in the services' OpenAPI documents. `tests/e2e/test_security.py`
calls every row with every kind of caller against running services and checks the status,
and fails when a route has no row; `make docs` prints the table to docs/authorization.md.

Callers (columns), each sending `X-Member-Id: me` unless said otherwise:
- `none`: no token;  `wrong`: a token that is none of the configured ones;
- `other`: the service token acting as another active member (`X-Member-Id: other`);
- `self`: the service token acting as `me`, the member named in the path;
- `ops`: the read-only ops token;  `admin`: the admin token.

Each row's world (`Setup`) is fresh: `me`, `peer` and `other` registered, plus what the
row needs (a connection, a block, a follow, invitations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CALLERS = ("none", "wrong", "other", "self", "ops", "admin")


@dataclass(frozen=True)
class Setup:
    """What exists before the row is called (besides `me`, `peer`, `other`)."""

    register_me: bool = True
    connected: bool = False  # me and peer connected
    listed: bool = False  # peer in me's list "friends" (needs connected)
    blocked: bool = False  # me blocked peer
    following: bool = False  # me follows peer
    # `{invitation_id}` is an invitation me sent to peer, or ("received") peer sent to me.
    invitation: str = "sent"


@dataclass(frozen=True)
class Row:
    service: str
    method: str
    path: str
    who: str  # in words, for the docs
    expect: dict[str, int]
    body: dict[str, Any] | None = None
    query: str = ""
    setup: Setup = field(default_factory=Setup)

    @property
    def route(self) -> tuple[str, str, str]:
        return (self.service, self.method, self.path)


def _statuses(
    none: int, wrong: int, other: int, self_: int, ops: int, admin: int
) -> dict[str, int]:
    return dict(zip(CALLERS, (none, wrong, other, self_, ops, admin), strict=True))


def public() -> dict[str, int]:
    return _statuses(200, 200, 200, 200, 200, 200)


def member(other: int, self_: int) -> dict[str, int]:
    """Service token only; the acting member must be active."""
    return _statuses(401, 401, other, self_, 403, 403)


def reader() -> dict[str, int]:
    return _statuses(401, 401, 200, 200, 200, 200)


def operator() -> dict[str, int]:
    return _statuses(401, 401, 403, 403, 200, 200)


def admin(status: int) -> dict[str, int]:
    return _statuses(401, 401, 403, 403, 403, status)


PUBLIC = "anyone (no token)"
MEMBER = "service token, as any active member"
OWN = "service token, as the member in the path only"
PARTY = "service token, as a party to the invitation"
SERVICE = "service token (any or no member)"
READER = "service, ops or admin token"
OPERATOR = "ops or admin token (any member, read-only)"
ADMIN = "admin token"

_HEALTH = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]
_SERVICES = ("invitation", "connection", "engagement", "projection")

ROWS: list[Row] = [
    *(Row(s, m, p, PUBLIC, public()) for s in _SERVICES for m, p in _HEALTH),
    # invitation ----------------------------------------------------------------------------
    Row("invitation", "POST", "/invitations", MEMBER, member(201, 201), body={"to": "{peer}"}),
    Row("invitation", "GET", "/invitations/{invitation_id}", PARTY, member(404, 200)),
    *(
        Row(
            "invitation",
            "POST",
            f"/invitations/{{invitation_id}}/{verb}",
            PARTY + " (the recipient)",
            member(404, 200),
            setup=Setup(invitation="received"),
        )
        for verb in ("accept", "decline", "report")
    ),
    Row(
        "invitation",
        "POST",
        "/invitations/{invitation_id}/withdraw",
        PARTY + " (the sender)",
        member(404, 200),
    ),
    # connection ----------------------------------------------------------------------------
    Row(
        "connection",
        "POST",
        "/members",
        "service token, as the member registering (or none)",
        member(403, 201),
        body={"member_id": "{me}", "name": "Me", "industry": "Technology"},
        setup=Setup(register_me=False),
    ),
    Row("connection", "GET", "/members/{member_id}", SERVICE, member(200, 200)),
    Row(
        "connection", "PATCH", "/members/{member_id}", OWN, member(403, 200), body={"title": "CTO"}
    ),
    Row("connection", "DELETE", "/members/{member_id}", OWN, member(403, 200)),
    Row(
        "connection",
        "DELETE",
        "/connections/{other}",
        MEMBER + " (their own connection)",
        member(404, 200),
        setup=Setup(connected=True),
    ),
    Row("connection", "POST", "/blocks/{other}", MEMBER, member(200, 200)),
    Row(
        "connection",
        "DELETE",
        "/blocks/{other}",
        MEMBER + " (their own block)",
        member(404, 200),
        setup=Setup(blocked=True),
    ),
    Row("connection", "PUT", "/follows/{other}", MEMBER, member(200, 200)),
    Row(
        "connection",
        "DELETE",
        "/follows/{other}",
        MEMBER + " (their own follow)",
        member(404, 200),
        setup=Setup(following=True),
    ),
    Row(
        "connection",
        "PUT",
        "/lists/{name}/members/{other}",
        MEMBER + " (their own lists)",
        member(404, 200),
        setup=Setup(connected=True),
    ),
    Row(
        "connection",
        "DELETE",
        "/lists/{name}/members/{other}",
        MEMBER + " (their own lists)",
        member(404, 200),
        setup=Setup(connected=True, listed=True),
    ),
    # engagement ----------------------------------------------------------------------------
    Row(
        "engagement",
        "POST",
        "/engagements",
        MEMBER,
        member(201, 201),
        body={"target": "{peer}", "kind": "like"},
    ),
    Row("engagement", "POST", "/milestones", MEMBER, member(201, 201), body={"kind": "promotion"}),
    # projection ----------------------------------------------------------------------------
    *(
        Row("projection", "GET", f"/members/{{member_id}}/{view}", OWN, member(403, 200), query=q)
        for view, q in (
            ("connections", ""),
            ("summary", ""),
            ("degree/{other}", ""),
            ("degrees", "ids={peer}"),
            ("paths/{other}", ""),
            ("mutual/{other}", ""),
            ("suggestions", ""),
            ("network", ""),
            ("invitations", ""),
            ("engagement", ""),
        )
    ),
    Row("projection", "GET", "/industries", READER, reader()),
    Row("projection", "GET", "/projection/status", READER, reader()),
    Row("projection", "POST", "/projection/rebuild", ADMIN, admin(202)),
    Row("projection", "GET", "/dashboard", PUBLIC + "; the page asks for a token", public()),
    Row("projection", "GET", "/dashboard/data", READER, reader()),
    *(
        # connected: the world waits until the projection has applied it (and the members)
        Row("projection", "GET", path, OPERATOR, operator(), setup=Setup(connected=True))
        for path in ("/dashboard/explore/{member_id}", "/dashboard/explore/{member_id}/{other}")
    ),
]


def render_markdown() -> str:
    lines = [
        "# Authorization matrix",
        "",
        "Generated from `rapport/authorization.py` by `make docs`; "
        "`tests/e2e/test_security.py` checks every cell against running services and "
        "fails for a route without a row. Columns: no token, a wrong token, the service "
        "token acting as another member, acting as the member in the path (`self`), the "
        "ops token, the admin token. 401 is an unknown caller; 403 is the one refusal body "
        "(`not_allowed`), whatever the reason; 404 is what a stranger to a resource sees.",
        "",
        "| service | route | who may call | " + " | ".join(CALLERS) + " |",
        "|---|---|---|" + "---|" * len(CALLERS),
    ]
    for row in ROWS:
        route = f"`{row.method} {row.path}`"
        cells = " | ".join(str(row.expect[c]) for c in CALLERS)
        lines.append(f"| {row.service} | {route} | {row.who} | {cells} |")
    return "\n".join(lines) + "\n"
