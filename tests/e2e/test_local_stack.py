"""`rapport run` (what `make run` calls) as a user runs it: a real process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rapport.localstack import free_port, port_is_free
from rapport.supervisor import SERVICES

pytestmark = pytest.mark.e2e


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)  # polling another process's state; nothing to await


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _service_pid(port: int) -> int:
    out = subprocess.run(
        ["pgrep", "-f", f"uvicorn .* --port {port} "], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[0])


@pytest.mark.timeout(180)
def test_run_starts_everything_prints_token_restarts_crashes_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    ports = {name: free_port() for name in SERVICES}
    kafka_port, redis_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "RAPPORT_API_TOKENS")
    }
    env.update({f"RAPPORT_{name.upper()}_PORT": str(p) for name, p in ports.items()})
    env["COLUMNS"] = "200"
    log = tmp_path / "run.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rapport.cli",
                "run",
                "--kafka-port",
                str(kafka_port),
                "--redis-port",
                str(redis_port),
                "--state-dir",
                str(tmp_path / "state"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        _wait(lambda: "API token" in log.read_text() or proc.poll() is not None, 90, "start-up")
        printed = log.read_text()
        assert proc.poll() is None, printed
        token = (tmp_path / "state" / "token").read_text().strip()
        assert token in printed
        for name, port in ports.items():
            assert f"http://127.0.0.1:{port}" in printed
            assert _ready(port), name
        assert f"127.0.0.1:{kafka_port}" in printed and f"127.0.0.1:{redis_port}" in printed

        _invite_accept_and_see_degree_one(ports, token)
        _cli_rebuild_keeps_the_answers(ports, tmp_path / "state", env)

        victim = _service_pid(ports["invitation"])
        os.kill(victim, signal.SIGKILL)
        _wait(
            lambda: not _ready(ports["invitation"]) or _service_pid(ports["invitation"]) != victim,
            10,
            "crash",
        )
        _wait(lambda: _ready(ports["invitation"]), 60, "restart after kill -9")
        assert _service_pid(ports["invitation"]) != victim
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()
    for port in [*ports.values(), kafka_port, redis_port]:
        assert port_is_free(port), f"port {port} still in use after Ctrl-C"


def _invite_accept_and_see_degree_one(ports: dict[str, int], token: str) -> None:
    """The whole choreography across four processes, with the token `make run` printed."""
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}

    def headers(member: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "X-Member-Id": member}

    for member, industry in (("ada", "Technology"), ("grace", "Technology")):
        r = httpx.post(
            f"{url['connection']}/members",
            json={"name": member, "industry": industry},
            headers=headers(member),
        )
        assert r.status_code == 201, r.text
    unauthorized = httpx.post(f"{url['invitation']}/invitations", json={"to": "grace"})
    assert unauthorized.status_code == 401

    # The invitation service learns about new members from rapport.members.
    invited: dict = {}

    def invite() -> bool:
        r = httpx.post(
            f"{url['invitation']}/invitations", json={"to": "grace"}, headers=headers("ada")
        )
        invited.update(r.json())
        return r.status_code == 201

    _wait(invite, 15, "the invitation service to know grace")
    accepted = httpx.post(
        f"{url['invitation']}/invitations/{invited['invitation_id']}/accept",
        headers=headers("grace"),
    )
    assert accepted.status_code == 200, accepted.text

    def degree_one() -> bool:
        r = httpx.get(f"{url['projection']}/members/ada/degree/grace", headers=headers("ada"))
        return r.status_code == 200 and r.json()["degree"] == 1

    _wait(degree_one, 15, "the connection to reach the projection")
    summary = httpx.get(
        f"{url['projection']}/members/grace/summary", headers=headers("grace")
    ).json()
    assert summary["connections"] == 1 and summary["followers"] == 1 and summary["following"] == 1
    industries = httpx.get(f"{url['projection']}/industries", headers=headers("ada")).json()
    assert industries["industries"][0]["average_connections"] == 1.0


def _cli_rebuild_keeps_the_answers(ports: dict[str, int], state: Path, env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{ports['projection']}"
    cli = [sys.executable, "-m", "rapport.cli", "projection"]
    rebuilt = subprocess.run(
        [*cli, "rebuild", "--url", url, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "rebuilt into version 2" in rebuilt.stdout
    status = subprocess.run(
        [*cli, "status", "--url", url, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0 and "projection v2" in status.stdout, status.stdout
    token = (state / "token").read_text().strip()
    degree = httpx.get(
        f"{url}/members/ada/degree/grace",
        headers={"Authorization": f"Bearer {token}", "X-Member-Id": "ada"},
    )
    assert degree.json()["degree"] == 1
