"""One typed Python client for Rapport's four services (async httpx).

    async with RapportClient(urls, token) as rapport:
        await rapport.register("ada", "Ada Lovelace", "Technology")
        await rapport.register("grace", "Grace Hopper", "Technology")
        sent = await rapport.invite("ada", "grace")
        await rapport.accept("grace", sent.invitation_id)
        print((await rapport.degree("ada", "grace")).degree)  # 1: reads after the accept

Every method calls one route as a member (`X-Member-Id`) with the token it was given, and
answers the service's own response model. An error answer raises `RapportError` (or the
subclass for its status) carrying the JSON error `code` and `message`; an unreachable service
raises `Unavailable` too. Read-your-writes: the client keeps the `event_id` of each write
since its last read that waited for them, and passes them as `?after=` to the projection's
member reads (waiting up to `wait_ms`), so a read never misses what this client wrote, even
when its writes went to different partitions (`read_your_writes=False` turns that off;
`after=` overrides).

`BlockingClient` is the same client for synchronous code (the CLI, threads, Playwright
tests): each call runs on the client's own event loop thread. This module is the only place
that puts together the services' URLs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from services.connection.api import MemberCreated, MemberPublic
from services.invitation.api import InvitationPublic
from services.projection.api import (
    AFTER_MAX,
    Badges,
    ConnectionsPage,
    Degree,
    EngagementViews,
    Industries,
    MutualPage,
    NetworkPage,
    Paths,
    PendingInvitations,
    ProjectionStatus,
    RebuildStarted,
    Suggestions,
    Summary,
)
from shared.api import WriteResult
from shared.settings import SETTINGS_BY_SERVICE

# Each service on its settings' default port (as `rapport run` starts it).
DEFAULT_URLS = {
    name: f"http://127.0.0.1:{cls.model_fields['port'].default}"
    for name, cls in SETTINGS_BY_SERVICE.items()
}
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class RapportError(Exception):
    """An error answer: HTTP status, the API's error code and message."""

    def __init__(self, status: int, code: str, message: str, retry_after: str | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class Invalid(RapportError):
    """400 or 422: the request was malformed."""


class Unauthorized(RapportError):
    """401: no token, or one that is not configured."""


class Forbidden(RapportError):
    """403: not allowed (the one refusal body, whatever the reason)."""


class NotFound(RapportError):
    """404: no such member, invitation or relation (as far as the caller may know)."""


class Conflict(RapportError):
    """409: conflicts with the current state (already connected, a pending invitation...)."""


class RateLimited(RapportError):
    """429: a limit (weekly invitations, read quota); see `retry_after`."""


class Unavailable(RapportError):
    """503, or the service did not answer: transient, retry later."""


ERRORS: dict[int, type[RapportError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: Invalid,
    429: RateLimited,
    503: Unavailable,
}


def raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {}
    kind = ERRORS.get(response.status_code, RapportError)
    raise kind(
        response.status_code,
        str(error.get("code", "http_error")),
        str(error.get("message", response.text[:200])),
        response.headers.get("retry-after"),
    )


# An idle pooled connection is dropped after this long: under the services' keep-alive
# (uvicorn closes an idle connection after 5 s), so a busy client never sends a request on a
# connection the server is closing at that moment (a ReadError, with httpx's default of 5 s).
KEEPALIVE_EXPIRY_S = 2.0


class RapportClient:
    def __init__(
        self,
        urls: Mapping[str, str] | None = None,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        read_your_writes: bool = True,
        wait_ms: int = 10_000,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.urls = {**DEFAULT_URLS, **(urls or {})}
        self.token = token
        self.read_your_writes = read_your_writes
        self.wait_ms = wait_ms  # how long a read waits for the write it follows
        # Writes not yet known applied (oldest first, at most AFTER_MAX): a read that waited
        # for them all forgets them.
        self.unread_writes: list[str] = []
        self._http = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S),
        )

    async def __aenter__(self) -> RapportClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def url(self, service: str, path: str) -> str:
        return self.urls[service].rstrip("/") + path

    # --- the one place requests are made ------------------------------------------------------
    async def request(
        self,
        service: str,
        method: str,
        path: str,
        *,
        member: str | None = None,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        token: str | None = None,
        check: bool = True,
        content: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One call: `path` on `service`, as `member`, with this client's token (or `token`;
        "" sends none). Error answers raise unless `check` is False. `content` and `headers`
        send a body and headers as they are (tests of the services' edge)."""
        headers = dict(headers or {})
        bearer = self.token if token is None else token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        if member is not None:
            headers["X-Member-Id"] = member
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = await self._http.request(
                method,
                self.url(service, path),
                json=json,
                params=query or None,  # an empty mapping would drop a query written in `path`
                headers=headers,
                content=content,
            )
        except httpx.TransportError as exc:
            raise Unavailable(0, "unreachable", f"{service} service unreachable: {exc!r}") from exc
        if check:
            raise_for_error(response)
        return response

    async def _json(self, service: str, method: str, path: str, **kw: Any) -> Any:
        response = await self.request(service, method, path, **kw)
        return response.json() if response.content else None

    async def _model(self, model: type[M], service: str, method: str, path: str, **kw: Any) -> M:
        return model.model_validate(await self._json(service, method, path, **kw))

    async def _write(self, model: type[M], service: str, method: str, path: str, **kw: Any) -> M:
        result = await self._model(model, service, method, path, **kw)
        event_id = getattr(result, "event_id", None)
        if event_id:
            self.unread_writes = [*self.unread_writes, str(event_id)][-AFTER_MAX:]
        return result

    @property
    def last_event_id(self) -> str | None:
        """The last write's event, while no read has waited for it yet."""
        return self.unread_writes[-1] if self.unread_writes else None

    def _after(self, after: str | None) -> str | None:
        if after is not None:
            return after
        if self.read_your_writes and self.unread_writes:
            return ",".join(self.unread_writes)
        return None

    async def _read(
        self,
        model: type[M],
        member: str,
        path: str,
        after: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> M:
        query = {**(params or {}), "after": self._after(after)}
        if query["after"] is not None and query.get("wait_ms") is None:
            query["wait_ms"] = self.wait_ms
        waited = list(self.unread_writes) if after is None and self.read_your_writes else []
        answer = await self._model(
            model, "projection", "GET", f"/members/{member}{path}", member=member, params=query
        )
        # Applied, all of them (else the read answered 409): later reads need not wait.
        self.unread_writes = [e for e in self.unread_writes if e not in waited]
        return answer

    # --- connection service --------------------------------------------------------------------
    async def register(
        self, member: str, name: str, industry: str, **profile: str | None
    ) -> MemberCreated:
        body = {"member_id": member, "name": name, "industry": industry, **profile}
        return await self._write(
            MemberCreated, "connection", "POST", "/members", member=member, json=body
        )

    async def profile(self, member: str, viewer: str | None = None) -> MemberPublic:
        return await self._model(
            MemberPublic, "connection", "GET", f"/members/{member}", member=viewer
        )

    async def update_profile(self, member: str, **fields: str | None) -> WriteResult:
        return await self._write(
            WriteResult, "connection", "PATCH", f"/members/{member}", member=member, json=fields
        )

    async def deactivate(self, member: str) -> WriteResult:
        return await self._write(
            WriteResult, "connection", "DELETE", f"/members/{member}", member=member
        )

    async def remove_connection(self, member: str, other: str) -> WriteResult:
        return await self._relation("DELETE", f"/connections/{other}", member)

    async def block(self, member: str, other: str) -> WriteResult:
        return await self._relation("POST", f"/blocks/{other}", member)

    async def unblock(self, member: str, other: str) -> WriteResult:
        return await self._relation("DELETE", f"/blocks/{other}", member)

    async def follow(self, member: str, other: str) -> WriteResult:
        return await self._relation("PUT", f"/follows/{other}", member)

    async def unfollow(self, member: str, other: str) -> WriteResult:
        return await self._relation("DELETE", f"/follows/{other}", member)

    async def add_to_list(self, member: str, name: str, other: str) -> WriteResult:
        return await self._relation("PUT", f"/lists/{name}/members/{other}", member)

    async def remove_from_list(self, member: str, name: str, other: str) -> WriteResult:
        return await self._relation("DELETE", f"/lists/{name}/members/{other}", member)

    async def _relation(self, method: str, path: str, member: str) -> WriteResult:
        return await self._write(WriteResult, "connection", method, path, member=member)

    # --- invitation service --------------------------------------------------------------------
    async def invite(
        self, sender: str, recipient: str, message: str | None = None
    ) -> InvitationPublic:
        body = {"to": recipient, **({"message": message} if message is not None else {})}
        return await self._write(
            InvitationPublic, "invitation", "POST", "/invitations", member=sender, json=body
        )

    async def invitation(self, member: str, invitation_id: str) -> InvitationPublic:
        return await self._model(
            InvitationPublic, "invitation", "GET", f"/invitations/{invitation_id}", member=member
        )

    async def accept(self, member: str, invitation_id: str) -> InvitationPublic:
        return await self._answer("accept", member, invitation_id)

    async def decline(self, member: str, invitation_id: str) -> InvitationPublic:
        return await self._answer("decline", member, invitation_id)

    async def report(self, member: str, invitation_id: str) -> InvitationPublic:
        return await self._answer("report", member, invitation_id)

    async def withdraw(self, member: str, invitation_id: str) -> InvitationPublic:
        return await self._answer("withdraw", member, invitation_id)

    async def _answer(self, verb: str, member: str, invitation_id: str) -> InvitationPublic:
        path = f"/invitations/{invitation_id}/{verb}"
        return await self._write(InvitationPublic, "invitation", "POST", path, member=member)

    # --- engagement service --------------------------------------------------------------------
    async def engage(
        self, member: str, target: str, kind: str, ref: str | None = None
    ) -> WriteResult:
        body = {"target": target, "kind": kind, **({"ref": ref} if ref else {})}
        return await self._write(
            WriteResult, "engagement", "POST", "/engagements", member=member, json=body
        )

    async def milestone(self, member: str, kind: str, detail: str | None = None) -> WriteResult:
        body = {"kind": kind, **({"detail": detail} if detail else {})}
        return await self._write(
            WriteResult, "engagement", "POST", "/milestones", member=member, json=body
        )

    # --- projection: a member's views ------------------------------------------------------------
    async def summary(self, member: str, after: str | None = None) -> Summary:
        return await self._read(Summary, member, "/summary", after)

    async def degree(
        self, member: str, other: str, after: str | None = None, wait_ms: int | None = None
    ) -> Degree:
        return await self._read(Degree, member, f"/degree/{other}", after, {"wait_ms": wait_ms})

    async def degrees(self, member: str, ids: list[str], after: str | None = None) -> Badges:
        return await self._read(Badges, member, "/degrees", after, {"ids": ",".join(ids)})

    async def paths(
        self, member: str, other: str, limit: int = 3, after: str | None = None
    ) -> Paths:
        return await self._read(Paths, member, f"/paths/{other}", after, {"limit": limit})

    async def mutual(
        self,
        member: str,
        other: str,
        cursor: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> MutualPage:
        params = {"cursor": cursor, "limit": limit}
        return await self._read(MutualPage, member, f"/mutual/{other}", after, params)

    async def suggestions(
        self, member: str, limit: int = 20, after: str | None = None
    ) -> Suggestions:
        return await self._read(Suggestions, member, "/suggestions", after, {"limit": limit})

    async def connections(
        self,
        member: str,
        cursor: str | None = None,
        limit: int = 50,
        after: str | None = None,
        **filters: str | None,
    ) -> ConnectionsPage:
        params = {"cursor": cursor, "limit": limit, **filters}
        return await self._read(ConnectionsPage, member, "/connections", after, params)

    async def network(
        self,
        member: str,
        degree: int = 2,
        cursor: str | None = None,
        limit: int = 50,
        after: str | None = None,
        **filters: str | None,
    ) -> NetworkPage:
        params = {"degree": degree, "cursor": cursor, "limit": limit, **filters}
        return await self._read(NetworkPage, member, "/network", after, params)

    async def pending(
        self, member: str, direction: str = "received", after: str | None = None
    ) -> PendingInvitations:
        params = {"direction": direction}
        return await self._read(PendingInvitations, member, "/invitations", after, params)

    async def engagement(self, member: str, after: str | None = None) -> EngagementViews:
        return await self._read(EngagementViews, member, "/engagement", after)

    # --- projection: shared and ops views --------------------------------------------------------
    async def industries(self) -> Industries:
        return await self._model(Industries, "projection", "GET", "/industries")

    async def status(self) -> ProjectionStatus:
        return await self._model(ProjectionStatus, "projection", "GET", "/projection/status")

    async def rebuild(self) -> RebuildStarted:
        return await self._model(RebuildStarted, "projection", "POST", "/projection/rebuild")

    async def dashboard_data(self) -> dict[str, Any]:
        data: dict[str, Any] = await self._json("projection", "GET", "/dashboard/data")
        return data

    async def explore(self, member: str, other: str | None = None) -> dict[str, Any]:
        path = f"/dashboard/explore/{member}" + (f"/{other}" if other else "")
        data: dict[str, Any] = await self._json("projection", "GET", path)
        return data

    async def ready(self, service: str) -> bool:
        try:
            response = await self.request(service, "GET", "/readyz", token="", check=False)
        except Unavailable:
            return False
        return response.status_code == 200

    async def metrics(self, service: str) -> str:
        return (await self.request(service, "GET", "/metrics", token="")).text


def link(base_url: str, path: str) -> str:
    """The address of a service's page for a browser or a person (the dashboard, /docs)."""
    return base_url.rstrip("/") + path


def is_ready(base_url: str, timeout: float = 1.0) -> bool:
    """A service's `/readyz` answers 200 (the supervisor's start-up and restart checks)."""
    try:
        return httpx.get(link(base_url, "/readyz"), timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class BlockingClient:
    """`RapportClient` for synchronous callers: `BlockingClient(urls, token).degree(a, b)`.
    Every coroutine method of the client is offered as a plain method that waits for it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.client: RapportClient = self._run(self._build(*args, **kwargs))

    @staticmethod
    async def _build(*args: Any, **kwargs: Any) -> RapportClient:
        return RapportClient(*args, **kwargs)  # the httpx client belongs to the loop thread

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._run(attr(*args, **kwargs))

        return call

    def close(self) -> None:
        self._run(self.client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
