"""Drives the four running services for the e2e tests: fresh worlds of members for a row of
the authorization matrix, the row's request as any caller, and the check that a running
stack's read models equal a clean rebuild."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import parse_qsl

import httpx

from rapport.authorization import Row
from rapport.client import BlockingClient
from rapport.replay import read_through
from services.projection.queries.status import digest
from services.projection.store import ReadModelStore
from shared.redis import connect
from shared.scoring import ScoringModel
from shared.settings import ProjectionSettings
from tests.helpers import ADMIN_TOKEN, OPS_TOKEN, TOKEN, poll_until, random_id

TOKENS = {"none": None, "wrong": "not-a-token", "other": TOKEN, "self": TOKEN}
TOKENS |= {"ops": OPS_TOKEN, "admin": ADMIN_TOKEN}


@dataclass
class World:
    me: str
    peer: str
    other: str
    invitation_id: str = ""


class Driver:
    """Calls through the typed client's `request` (answers as they are, errors included)."""

    def __init__(self, api: BlockingClient) -> None:
        self.api = api

    def call(
        self, service: str, method: str, path: str, member: str, body: object = None
    ) -> httpx.Response:
        response: httpx.Response = self.api.request(
            service, method, path, member=member, json=body, token=TOKEN, check=False
        )
        return response

    def ok(self, *args: object, **kwargs: object) -> httpx.Response:
        response = self.call(*args, **kwargs)  # type: ignore[arg-type]
        assert response.status_code < 300, response.text
        return response

    def register(self, member: str) -> None:
        body = {"member_id": member, "name": member, "industry": "Technology"}
        self.ok("connection", "POST", "/members", member, body)

    def invite(self, sender: str, recipient: str) -> str:
        sent = self.ok("invitation", "POST", "/invitations", sender, {"to": recipient})
        return str(sent.json()["invitation_id"])

    def world(self, row: Row) -> World:
        w = World(f"me{random_id(8)}", f"peer{random_id(8)}", f"other{random_id(8)}")
        for m in ([w.me] if row.setup.register_me else []) + [w.peer, w.other]:
            self.register(m)
        if not row.setup.register_me:
            return w
        setup = row.setup
        if setup.connected:
            invitation = self.invite(w.me, w.peer)
            self.ok("invitation", "POST", f"/invitations/{invitation}/accept", w.peer)
            # Connected once the connection service agreed (the list routes need it).
            poll_until(lambda: self._connected(w), timeout=15)
        if setup.listed:
            self.ok("connection", "PUT", f"/lists/friends/members/{w.peer}", w.me)
        if setup.blocked:
            self.ok("connection", "POST", f"/blocks/{w.peer}", w.me)
        if setup.following:
            self.ok("connection", "PUT", f"/follows/{w.peer}", w.me)
        if "{invitation_id}" in row.path:
            sender, recipient = (w.peer, w.me) if setup.invitation == "received" else (w.me, w.peer)
            w.invitation_id = self.invite(sender, recipient)
        return w

    def _connected(self, w: World) -> bool:
        # The projection shows what the connection service decided, so degree 1 there means
        # the connection service has it.
        seen = self.call("projection", "GET", f"/members/{w.me}/degree/{w.peer}", w.me)
        return seen.status_code == 200 and seen.json()["degree"] == 1


def fill(text: str, w: World) -> str:
    values = {
        "{member_id}": w.me,
        "{me}": w.me,
        "{other}": w.peer,  # the other member a route is about
        "{peer}": w.peer,
        "{invitation_id}": w.invitation_id,
        "{name}": "friends",
    }
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def request_row(driver: Driver, row: Row, w: World, caller: str) -> httpx.Response:
    body = {k: fill(v, w) if isinstance(v, str) else v for k, v in (row.body or {}).items()}
    response: httpx.Response = driver.api.request(
        row.service,
        row.method,
        fill(row.path, w),
        member=w.other if caller == "other" else w.me,
        json=body if row.body else None,
        params=dict(parse_qsl(fill(row.query, w))) if row.query else None,
        token=TOKENS[caller] or "",
        check=False,
    )
    return response


def agrees_with_a_rebuild(
    urls: dict[str, str],
    bootstrap: str,
    redis_url: str,
    ops: str,
    admin: str,
    namespace: str = "",
    cluster: bool = False,
) -> None:
    """Once every event is on the log and applied: no event was dead-lettered (transient
    errors are retried, never set aside), and the read models equal a clean rebuild (nothing
    lost, nothing counted twice). `ops` and `admin` are the stack's tokens; `cluster` says
    the read models are on the Redis Cluster at `redis_url`."""
    with BlockingClient(urls, ops, timeout=15) as api:
        for name in ("invitation", "connection", "engagement"):
            backlog = f'rapport_outbox_backlog{{service="{name}"}} 0.0'
            poll_until(
                lambda n=name, b=backlog: b in api.metrics(n),
                timeout=30,
                what=f"{name}'s outbox relayed",
            )
        ends = asyncio.run(read_through(bootstrap, namespace))  # each partition's true end

        def applied_all() -> bool:
            positions = api.status().positions
            return all(positions.get(tp, 0) >= end for tp, end in ends.items())

        poll_until(applied_all, timeout=30, what="the projection at the log's end")
        dead = api.dashboard_data()["dlq_total"]
        live = asyncio.run(_digest(redis_url, namespace, cluster))
        # One rebuild at a time: one an earlier call started (the matrix's own row, or its
        # lock taken just as Redis came back) ends or lapses first (409 until then).
        poll_until(
            lambda: (
                api.request(
                    "projection", "POST", "/projection/rebuild", token=admin, check=False
                ).status_code
                == 202
            ),
            timeout=60,
            what="a rebuild started",
        )
        # A bound against a hang, not a speed bar: a rebuild of test_replicas' ~30,000 events
        # on its 3-node cluster took more than 60 s on a slow CI machine (bench/ measures it).
        poll_until(
            lambda: api.status().rebuild["state"] == "done", timeout=240, what="the rebuild done"
        )
        rebuilt = asyncio.run(_digest(redis_url, namespace, cluster))
    assert dead == 0
    assert rebuilt == live


async def _digest(redis_url: str, namespace: str, cluster: bool = False) -> str:
    """The live read models' digest, as the projection computes it."""
    client = connect(redis_url, cluster=cluster, socket_timeout_s=30)
    try:
        settings = ProjectionSettings(redis_url=redis_url, namespace=namespace)
        store = ReadModelStore(client, settings, ScoringModel())
        return await digest(store)
    finally:
        await client.aclose()
