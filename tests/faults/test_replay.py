"""Every write service's state can be rebuilt from the topics: after a varied history through
the real services, replaying the log into a fresh keyspace gives the live state's digest, and
a service whose Redis state was lost gets it back (`rapport replay <service>`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest
from redis.asyncio import Redis

from rapport.replay import WRITE_SERVICES, digest, has_state, read_log, replay
from services.connection.main import create_app as connection_app
from services.engagement.main import create_app as engagement_app
from services.invitation.main import create_app as invitation_app
from tests.helpers import Infra, auth, running_app, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("service_env")]


class Actions:
    def __init__(self, inv: httpx.AsyncClient, conn: httpx.AsyncClient, eng: httpx.AsyncClient):
        self.inv, self.conn, self.eng = inv, conn, eng

    async def ok(
        self, client: httpx.AsyncClient, method: str, path: str, member: str, body: object = None
    ) -> dict:
        response = await client.request(method, path, json=body, headers=auth(member))
        assert response.status_code < 300, (path, response.text)
        return response.json()

    async def invite(self, sender: str, recipient: str) -> str:
        sent = await self.ok(self.inv, "POST", "/invitations", sender, {"to": recipient})
        return str(sent["invitation_id"])

    async def answer(self, verb: str, invitation: str, member: str) -> None:
        await self.ok(self.inv, "POST", f"/invitations/{invitation}/{verb}", member)


async def a_varied_history(act: Actions) -> str:
    """Returns the invitation the last reaction cancels (its sender deactivated)."""
    for member, industry in (
        ("ann", "Technology"),
        ("bob", "technology "),
        ("cat", "Finance"),
        ("dan", "Finance"),
        ("eve", "Media"),
    ):
        body = {"name": member.title(), "industry": industry}
        await act.ok(act.conn, "POST", "/members", member, body)
    await act.ok(act.conn, "PATCH", "/members/dan", "dan", {"industry": "Health", "title": "MD"})
    await act.answer("accept", await act.invite("ann", "bob"), "bob")
    await act.answer("decline", await act.invite("ann", "cat"), "cat")
    await act.answer("withdraw", await act.invite("cat", "dan"), "cat")
    await act.answer("report", await act.invite("eve", "cat"), "cat")
    left_pending = await act.invite("eve", "ann")
    await act.ok(act.conn, "PUT", "/follows/dan", "ann")

    async def connected() -> bool:  # the connection service decided ann-bob
        listed = await act.conn.put("/lists/friends/members/bob", headers=auth("ann"))
        return listed.status_code == 200

    await wait_until(connected, timeout=20)
    for kind in ("like", "comment"):
        await act.ok(act.eng, "POST", "/engagements", "ann", {"target": "bob", "kind": kind})
    await act.ok(act.eng, "POST", "/milestones", "bob", {"kind": "promotion"})
    to_block = await act.invite("bob", "dan")
    await act.ok(act.conn, "POST", "/blocks/bob", "dan")

    async def cancelled() -> bool:  # the invitation service folded the block
        seen = await act.inv.get(f"/invitations/{to_block}", headers=auth("dan"))
        return seen.json()["status"] == "cancelled"

    await wait_until(cancelled, timeout=20)
    await act.ok(act.conn, "DELETE", "/members/eve", "eve")
    return left_pending


async def test_replaying_the_log_rebuilds_every_write_service(
    infra: Infra, namespace: str, redis_client: Redis
) -> None:
    apps = invitation_app(), connection_app(), engagement_app()
    async with (
        running_app(apps[0]) as inv,
        running_app(apps[1]) as conn,
        running_app(apps[2]) as eng,
    ):
        last = await a_varied_history(Actions(inv, conn, eng))
        # Quiet: the last reaction folded (a deactivation cancels), every outbox relayed.
        await wait_until(lambda: _cancelled(inv, last), timeout=20)
        await wait_until(lambda: _relayed(apps), timeout=20)
        live = {s: await digest(s, redis_client, namespace) for s in WRITE_SERVICES}

    events = await read_log(infra.kafka_bootstrap, namespace)
    replayed = {}
    for service in WRITE_SERVICES:
        fresh = f"{namespace}replay."
        await replay(service, redis_client, events, fresh)
        replayed[service] = await digest(service, redis_client, fresh)
    assert replayed == live
    assert {
        s: await has_state(s, redis_client, namespace) for s in WRITE_SERVICES
    } == dict.fromkeys(WRITE_SERVICES, True)

    # The engagement service's state is lost; the CLI rebuilds it where it was.
    async for key in redis_client.scan_iter(match=f"{namespace}rapport:engagement:*"):
        await redis_client.delete(key)
    assert not await has_state("engagement", redis_client, namespace)
    rebuilt = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "rapport.cli", "replay", "engagement", "--into", "live"],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
        check=False,
    )
    compared = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "rapport.cli", "replay", "connection"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
        check=False,
    )
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert await digest("engagement", redis_client, namespace) == live["engagement"]
    assert compared.returncode == 0 and "equal" in compared.stdout, compared.stdout


async def _relayed(apps: tuple) -> bool:  # type: ignore[type-arg]
    for app in apps:
        if await app.state.runtime.state.backlog():
            return False
    return True


async def _cancelled(inv: httpx.AsyncClient, invitation: str) -> bool:
    seen = await inv.get(f"/invitations/{invitation}", headers=auth("ann"))
    return seen.json()["status"] == "cancelled"
