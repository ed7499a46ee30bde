"""The client's read-your-writes on a stand-in transport: every write since the last read
that waited is named in `?after=`, since writes on different partitions are applied
independently; a read that answered forgets them, one refused (409) keeps them."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest

from rapport.client import Conflict, RapportClient
from services.projection.api import AFTER_MAX

DEGREE = {"degree": 1, "mutual_connections": 0, "mutual_sample": []}


class Services:
    """Answers invites with a new event each, and degree reads as told."""

    def __init__(self) -> None:
        self.events = (f"{n:08x}-0000-4000-8000-000000000000" for n in itertools.count())
        self.afters: list[str | None] = []
        self.applied = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            event = next(self.events)
            body = json.loads(request.content)
            invitation = {
                "invitation_id": "i" + event[:8],
                "status": "pending",
                "sender": request.headers["x-member-id"],
                "recipient": body["to"],
                "sent_at": "2026-12-06T10:00:00Z",
                "updated_at": "2026-12-06T10:00:00Z",
                "event_id": event,
                "event_ids": [event],
            }
            return httpx.Response(201, json=invitation)
        self.afters.append(request.url.params.get("after"))
        if not self.applied:
            error = {"code": "not_yet_applied", "message": "retry"}
            return httpx.Response(409, json={"error": error}, headers={"Retry-After": "1"})
        return httpx.Response(200, json=DEGREE)


async def test_a_read_waits_for_every_write_since_the_last_read() -> None:
    services = Services()
    async with RapportClient(token="t", transport=httpx.MockTransport(services)) as rapport:
        first = await rapport.invite("ann", "bob")
        second = await rapport.invite("ann", "cat")
        await rapport.degree("ann", "bob")
        await rapport.degree("ann", "cat")  # both known applied: nothing to wait for
        third = await rapport.invite("ann", "dan")
        services.applied = False
        with pytest.raises(Conflict):
            await rapport.degree("ann", "dan")
        services.applied = True
        await rapport.degree("ann", "dan")  # still waits for the write the 409 did not see
    assert services.afters == [
        f"{first.event_id},{second.event_id}",
        None,
        third.event_id,
        third.event_id,
    ]


async def test_the_writes_remembered_are_bounded_by_what_one_read_may_name() -> None:
    services = Services()
    async with RapportClient(token="t", transport=httpx.MockTransport(services)) as rapport:
        sent = [await rapport.invite("ann", f"m{n}") for n in range(AFTER_MAX + 5)]
        await rapport.degree("ann", "m0")
    assert services.afters == [",".join(s.event_id or "" for s in sent[-AFTER_MAX:])]
