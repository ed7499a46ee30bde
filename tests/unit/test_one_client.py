"""One typed client (`rapport.client`) makes every request to the four running services: the
CLI, the demo loader, the bench and the e2e tests use it, and no other file puts a service's
URL together with a path. (Integration tests call apps in process over ASGI, not a running
service, and the Prometheus test calls Prometheus's own API.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
CLIENT = ROOT / "rapport/client.py"
# Where requests to running services come from.
CALLERS = [ROOT / "rapport", ROOT / "bench", ROOT / "tests/e2e"]
# A service's base URL joined with a path: f"{urls['projection']}/...", f"{stack.url(x)}/",
# f"{proc.url}/...", url + "/...", base_url=<a service URL>.
JOINS = [
    re.compile(r"\{[^{}]*\burls?\b[^{}]*\}/"),
    re.compile(r"\{[^{}]*\.url(\([^)]*\))?\}/"),
    re.compile(r"\burls?\b[^\n]*\+\s*[\"']/"),
    re.compile(r"base_url\s*=\s*(?!\"http://test\")"),
]
# Not one of the four services: Prometheus's API, the bench's bare reference endpoint.
ALLOWED = [re.compile(r"prometheus"), re.compile(r"bare_port")]


def offending_lines() -> list[str]:
    found = []
    for folder in CALLERS:
        for path in sorted(folder.rglob("*.py")):
            if path == CLIENT:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if any(j.search(line) for j in JOINS) and not any(a.search(line) for a in ALLOWED):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_no_file_but_the_client_puts_a_service_url_together() -> None:
    assert offending_lines() == []


def test_the_check_catches_a_hand_built_request() -> None:
    line = "httpx.get(f\"{stack.urls['projection']}/members/{a}/summary\")"
    assert any(j.search(line) for j in JOINS)
    assert any(j.search('client.get(f"{proc.url}/readyz")') for j in JOINS)
