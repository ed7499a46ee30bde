"""The `rapport` command line against a running stack, as a person at a terminal uses it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rapport.client import BlockingClient
from rapport.demo import INDUSTRY_AVERAGES
from tests.e2e.conftest import Stack
from tests.helpers import TOKEN, poll_until, random_id

pytestmark = pytest.mark.e2e

RAPPORT = Path(sys.executable).parent / "rapport"  # the console script pip installed


def rapport(
    stack: Stack, cwd: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [str(RAPPORT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def register(stack: Stack, *members: str, industry: str = "Research") -> None:
    with BlockingClient(stack.urls, TOKEN) as api:
        for m in members:
            api.register(m, m.title(), industry)


def test_invite_accept_degree_summary_suggest_and_tail(stack: Stack, tmp_path: Path) -> None:
    ada, grace, alan = (f"{n}-{random_id(6)}" for n in ("ada", "grace", "alan"))
    register(stack, ada, grace, alan)

    def invite(a: str, b: str) -> subprocess.CompletedProcess[str]:
        # The invitation service learns members from their events: retry a fresh member's 404.
        return poll_until(
            lambda: (r := rapport(stack, tmp_path, "invite", a, b)).returncode == 0 and r,
            what=f"{a} invites {b}",
        )

    sent = invite(ada, grace)
    invitation_id = re.search(r"invitation ([\w-]+) ", sent.stdout).group(1)  # type: ignore[union-attr]
    assert f"{ada} → {grace}: pending" in sent.stdout

    accepted = rapport(stack, tmp_path, "accept", invitation_id, "--as", grace)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "accepted" in accepted.stdout
    sent = invite(grace, alan)
    invitation_id = re.search(r"invitation ([\w-]+) ", sent.stdout).group(1)  # type: ignore[union-attr]
    assert rapport(stack, tmp_path, "accept", invitation_id, "--as", alan).returncode == 0

    poll_until(
        lambda: "1st" in rapport(stack, tmp_path, "degree", ada, grace).stdout,
        what="ada and grace 1st-degree",
    )
    second = poll_until(
        lambda: "2nd" in (out := rapport(stack, tmp_path, "degree", ada, alan).stdout) and out,
        what="ada and alan 2nd-degree",
    )
    assert f"mutual connections: 1 ({grace})" in second
    several = rapport(stack, tmp_path, "degree", ada, grace, alan, f"nobody-{random_id(6)}")
    assert several.returncode == 0, several.stderr
    assert f"{ada} → {grace}: 1st" in several.stdout and f"{ada} → {alan}: 2nd" in several.stdout
    assert "beyond 3rd / unknown" in several.stdout
    path = rapport(stack, tmp_path, "path", ada, alan)
    assert path.returncode == 0 and f"{ada} → {grace} → {alan}" in path.stdout

    summary = rapport(stack, tmp_path, "summary", grace)
    assert summary.returncode == 0
    assert re.search(r"│ connections\s+│\s+2 │", summary.stdout), summary.stdout
    suggestions = rapport(stack, tmp_path, "suggest", ada)
    assert suggestions.returncode == 0 and alan in suggestions.stdout

    tail = rapport(
        stack, tmp_path, "tail", "connections", "--from-beginning", "--limit", "2", timeout=60
    )
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.count("ConnectionAccepted") == 2  # the two connections, nothing else


def test_cli_errors_are_clear_and_non_zero(stack: Stack, tmp_path: Path) -> None:
    ada = f"ada-{random_id(6)}"
    register(stack, ada)
    missing = rapport(stack, tmp_path, "invite", ada, f"nobody-{random_id(6)}")
    assert missing.returncode == 1
    assert "404" in missing.stdout and "Traceback" not in missing.stdout + missing.stderr
    other = rapport(stack, tmp_path, "degree", ada, "bad id!")
    assert other.returncode == 1 and "422" in other.stdout

    down = subprocess.run(
        [str(RAPPORT), "summary", ada],
        cwd=tmp_path,
        env={**os.environ, **stack.env, "RAPPORT_PROJECTION_URL": "http://127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 2 and "unreachable" in down.stdout
    status = rapport(stack, tmp_path, "projection", "status", "--url", "http://127.0.0.1:9")
    assert status.returncode == 2 and "unreachable" in status.stdout
    assert "Traceback" not in status.stdout + status.stderr
    live = rapport(stack, tmp_path, "projection", "status")
    assert live.returncode == 0 and "events applied" in live.stdout


def test_demo_builds_a_calibrated_power_law_network(stack: Stack, tmp_path: Path) -> None:
    result = rapport(
        stack,
        tmp_path,
        "demo",
        "--members",
        "240",
        "--scale",
        "0.01",
        "--seed",
        "3",
        "--tag",
        random_id(4),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "registered 240" in result.stdout
    with BlockingClient(stack.urls, TOKEN) as api:
        rows = {i.industry: i.model_dump() for i in api.industries().industries}
    for name, average in INDUSTRY_AVERAGES.items():
        target = average * 0.01
        assert rows[name]["members"] == 40
        assert abs(rows[name]["average_connections"] / target - 1) <= 0.10, (name, rows[name])
    # Power law: a few members hold many connections, most have few.
    assert all(
        rows[n]["median_connections"] < rows[n]["average_connections"] for n in INDUSTRY_AVERAGES
    )
    assert "deviation" in result.stdout
