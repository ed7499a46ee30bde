"""Read-your-writes across the four processes, as a client sees it: what one service answered
2xx for is never contradicted by another, with no retries and no sleeps."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.helpers import auth, random_id

pytestmark = pytest.mark.e2e


async def two_members(http: httpx.AsyncClient, url: dict[str, str]) -> tuple[str, str]:
    a, b = f"a{random_id(8)}", f"b{random_id(8)}"
    for m in (a, b):
        r = await http.post(
            f"{url['connection']}/members",
            json={"name": m, "industry": "Technology"},
            headers=auth(m),
        )
        assert r.status_code == 201, r.text
    return a, b


@pytest.mark.timeout(180)
async def test_register_invite_accept_then_degree_one_fifty_times_in_a_row(stack: Stack) -> None:
    url = stack.urls
    async with httpx.AsyncClient(timeout=15) as http:
        for _ in range(50):
            a, b = await two_members(http, url)
            # At once: the invitation service must know both members already.
            invited = await http.post(
                f"{url['invitation']}/invitations", json={"to": b}, headers=auth(a)
            )
            assert invited.status_code == 201, invited.text
            accepted = await http.post(
                f"{url['invitation']}/invitations/{invited.json()['invitation_id']}/accept",
                headers=auth(b),
            )
            assert accepted.status_code == 200, accepted.text
            # `after` the acceptance: the connection it leads to is visible too.
            degree = await http.get(
                f"{url['projection']}/members/{a}/degree/{b}",
                params={"after": accepted.json()["event_id"], "wait_ms": 10_000},
                headers=auth(a),
            )
            assert degree.status_code == 200, degree.text
            assert degree.json()["degree"] == 1


@pytest.mark.timeout(60)
async def test_a_block_answered_2xx_refuses_the_next_invitation_at_once(stack: Stack) -> None:
    url = stack.urls
    async with httpx.AsyncClient(timeout=15) as http:
        for _ in range(10):
            a, b = await two_members(http, url)
            blocked = await http.post(f"{url['connection']}/blocks/{a}", headers=auth(b))
            assert blocked.status_code == 200, blocked.text
            refused = await http.post(
                f"{url['invitation']}/invitations", json={"to": b}, headers=auth(a)
            )
            assert refused.status_code == 404, refused.text
            assert refused.json()["error"]["code"] == "member_not_found"
            engaged = await http.post(
                f"{url['engagement']}/engagements",
                json={"target": b, "kind": "like"},
                headers=auth(a),
            )
            assert engaged.status_code == 404, engaged.text
