"""A real Prometheus (Debian's) scrapes a running stack with the repo's scrape config and
alert rules: every service's target is up, every service reports itself ready, the rules load,
and a counter moves after a request."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from rapport.client import BlockingClient
from rapport.localstack import free_port
from tests.e2e.conftest import Stack
from tests.helpers import TOKEN, poll_until, random_id
from tests.unit.test_alert_rules import ALERTS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus missing: `make test` installs Debian's prometheus package")
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    # The repo's config as it is, aimed at this stack's ports and scraping every second.
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(ROOT / "deploy/prometheus" / f) for f in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [urlsplit(u).netloc for u in stack.urls.values()]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _query(http: httpx.Client, prometheus_url: str, expr: str) -> list[dict]:
    try:
        answer = http.get(f"{prometheus_url}/api/v1/query", params={"query": expr})
    except httpx.TransportError:
        return []  # not listening yet
    return answer.json()["data"]["result"] if answer.status_code == 200 else []


@pytest.mark.timeout(120)
def test_a_real_prometheus_scrapes_every_service_and_sees_a_counter_move(
    stack: Stack, prometheus: str
) -> None:
    targets = {urlsplit(u).netloc for u in stack.urls.values()}
    registers = 'sum(rapport_http_requests_total{service="connection",route="/members"})'
    with httpx.Client(timeout=10) as http:
        up = poll_until(
            lambda: (
                {
                    r["metric"]["instance"]
                    for r in _query(http, prometheus, 'up{job="rapport"} == 1')
                }
                == targets
            ),
            timeout=60,
            what="every target up",
        )
        ready = poll_until(
            lambda: _query(http, prometheus, 'min by (service) (rapport_ready{job="rapport"})'),
            timeout=30,
            what="readiness reported",
        )
        rules = http.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
        before = _query(http, prometheus, registers)
        member = f"p{random_id(8)}"
        with BlockingClient(stack.urls, TOKEN) as api:
            created = api.register(member, "Pat", "Technology")
        counted = before[0]["value"][1] if before else "0"
        moved = poll_until(
            lambda: [r for r in _query(http, prometheus, registers) if r["value"][1] != counted],
            timeout=30,
            what="the request counter to move",
        )

    assert up
    assert {r["metric"]["service"]: r["value"][1] for r in ready} == {
        "invitation": "1",
        "connection": "1",
        "engagement": "1",
        "projection": "1",
    }
    assert {rule["name"] for group in rules for rule in group["rules"]} == ALERTS
    assert created.member_id == member
    assert float(moved[0]["value"][1]) == float(counted) + 1
