"""kill -9 of the projection process mid-stream: after a restart the read model still equals
the reference (nothing lost, nothing counted twice)."""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
from pathlib import Path

import pytest

from rapport.client import BlockingClient, RapportError
from rapport.localstack import free_port
from rapport.supervisor import ServiceProcess
from shared import events as ev
from shared.events import Envelope
from tests.helpers import TOKEN, Infra, publish_envelopes

pytestmark = pytest.mark.e2e


def _graph(
    n_members: int, n_edges: int, rng: random.Random
) -> tuple[list[Envelope], dict[str, set[str]], dict[str, str]]:
    industries = {
        f"u{i}": rng.choice(["Technology", "Finance", "Health"]) for i in range(n_members)
    }
    adjacency: dict[str, set[str]] = {m: set() for m in industries}
    events: list[Envelope] = []
    while sum(len(s) for s in adjacency.values()) < 2 * n_edges:
        a, b = rng.sample(sorted(industries), 2)
        if b in adjacency[a]:
            continue
        adjacency[a].add(b)
        adjacency[b].add(a)
        events.append(
            Envelope.wrap(
                ev.ConnectionAccepted(member_a=min(a, b), member_b=max(a, b)), producer="t"
            )
        )
    events += [
        Envelope.wrap(ev.MemberRegistered(member_id=m, name=m, industry=i), producer="t")
        for m, i in industries.items()
    ]
    return events, adjacency, industries


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)  # polling another process over HTTP


def _status(url: str) -> dict:
    with BlockingClient({"projection": url}, TOKEN, timeout=2) as api:
        try:
            return api.status().model_dump()
        except RapportError:  # not up (yet, or again)
            return {}


@pytest.mark.timeout(240)
def test_kill_9_mid_stream_then_restart_equals_reference(
    infra: Infra, namespace: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(42)
    events, adjacency, industries = _graph(2000, 30_000, rng)
    import asyncio

    asyncio.run(publish_envelopes(infra.kafka_bootstrap, namespace, events))
    port = free_port()
    env = {**service_env, "RAPPORT_PROJECTION_BATCH_MAX_RECORDS": "500"}
    proc = ServiceProcess("projection", port, env, tmp_path)
    proc.start()
    try:
        _wait(lambda: _status(proc.url).get("events_applied", 0) > 2000, 60)
        applied_at_kill = _status(proc.url)["events_applied"]
        assert proc.child and proc.child.proc
        os.kill(proc.child.proc.pid, signal.SIGKILL)
        proc.child.proc.wait(10)
        assert applied_at_kill < len(events), "killed too late to be mid-stream"

        proc.start()
        _wait(
            lambda: (
                _status(proc.url).get("events_applied") == len(events)
                and _status(proc.url).get("total_lag") == 0
            ),
            120,
        )
        status = _status(proc.url)
        sample = rng.sample(sorted(adjacency), 25)
        with BlockingClient({"projection": proc.url}, TOKEN, timeout=10) as api:
            industries_view = api.industries().model_dump()["industries"]
            pages = {m: api.connections(m, limit=500).model_dump() for m in sample}
    finally:
        proc.child.stop() if proc.child else None

    assert status["events_applied"] == len(events)  # each event counted exactly once
    for m in sample:
        assert {i["member_id"] for i in pages[m]["items"]} == adjacency[m]
    expected = {}
    for name in {"Technology", "Finance", "Health"}:
        degrees = [len(adjacency[m]) for m, i in industries.items() if i == name]
        expected[name] = (len(degrees), sum(degrees), float(statistics.median(degrees)))
    got = {
        i["industry"]: (i["members"], i["connections"], i["median_connections"])
        for i in industries_view
    }
    assert got == expected
