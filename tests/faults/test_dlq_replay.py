"""DLQ tooling on the real broker: an event an older consumer could not read is dead-lettered;
after the upgrade `rapport dlq replay` puts it back and it is applied exactly once, however
often it is replayed. The read model then equals a clean rebuild."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from rapport.dlq import DeadLetters
from services.projection import queries
from services.projection.main import create_app as projection_app
from shared import events as ev
from shared.events import Envelope
from shared.topics import CONNECTIONS, TopicNames, dlq
from tests.helpers import (
    Infra,
    auth,
    publish_envelopes,
    publish_raw,
    read_topic,
    rebuild_digest,
    running_app,
)

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("service_env")]


def rapport(*args: str) -> subprocess.CompletedProcess[str]:
    """The `rapport` CLI as an operator runs it (the environment names broker and namespace)."""
    return subprocess.run(
        [sys.executable, "-m", "rapport.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250"},  # a wide terminal: table cells unwrapped
        timeout=60,
        check=False,
    )


async def test_a_dead_lettered_event_replayed_is_applied_exactly_once(
    infra: Infra, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = TopicNames(namespace)
    members = [
        Envelope.wrap(ev.MemberRegistered(member_id=m, name=m, industry="Tech"), producer="t")
        for m in ("ann", "bob")
    ]
    connected = Envelope.wrap(ev.ConnectionAccepted(member_a="ann", member_b="bob"), producer="t")
    app = projection_app()
    async with running_app(app) as client:
        await publish_envelopes(infra.kafka_bootstrap, namespace, members)
        # An older projection that does not know this event type yet sets it aside.
        record = (connected.key.encode(), connected.to_bytes(), [("type", b"ConnectionAccepted")])
        with monkeypatch.context() as older:
            # A catalog without the type (a new dict: the real one keeps its order).
            known = {k: v for k, v in ev.EVENT_TYPES.items() if k != "ConnectionAccepted"}
            older.setattr(ev, "EVENT_TYPES", known)
            await publish_raw(infra.kafka_bootstrap, topics(CONNECTIONS), [record])
            dead = await read_topic(infra.kafka_bootstrap, dlq(topics(CONNECTIONS)), expect=1)
        listed = await asyncio.to_thread(rapport, "dlq", "list")
        shown = await asyncio.to_thread(rapport, "dlq", "show", CONNECTIONS)

        # Upgraded: replay it, then replay again (nothing left), then as if a replay crashed
        # after publishing and before committing (the same record goes out twice).
        replayed = await asyncio.to_thread(rapport, "dlq", "replay", CONNECTIONS)
        again = await DeadLetters(infra.kafka_bootstrap, namespace).replay(CONNECTIONS)
        await publish_envelopes(infra.kafka_bootstrap, namespace, [connected])
        degree = await client.get(
            "/members/ann/degree/bob",
            params={"after": str(connected.event_id), "wait_ms": 20000},
            headers=auth("ann"),
        )
        summary = await client.get("/members/ann/summary", headers=auth("ann"))
        listed_after = await asyncio.to_thread(rapport, "dlq", "list")
        store = app.state.wired.store
        live = await queries.status.digest(store)
        rebuilt = await rebuild_digest(client, store)

    assert dict(dead[0].headers)["dlq_reason"].startswith(b"unknown_type")
    assert listed.returncode == 0 and CONNECTIONS in listed.stdout, listed.stderr
    assert shown.returncode == 0 and "unknown_type" in shown.stdout, shown.stderr
    assert replayed.returncode == 0 and "replayed 1 record" in replayed.stdout, replayed.stderr
    assert again == (0, 0)
    assert degree.json()["degree"] == 1
    assert summary.json()["connections"] == 1  # applied once, not three times
    row = next(line for line in listed_after.stdout.splitlines() if CONNECTIONS in line)
    assert [cell.strip() for cell in row.split("│") if cell.strip()] == [CONNECTIONS, "1", "1"]
    assert rebuilt == live
