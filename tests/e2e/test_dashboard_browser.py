"""The ops dashboard in a real browser: Debian's headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rapport.client import BlockingClient, link
from rapport.localstack import free_port
from rapport.supervisor import ServiceProcess
from tests.e2e.conftest import Stack
from tests.helpers import OPS_TOKEN, TOKEN, poll_until, random_id

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling Google on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        reason = "chromium is not installed (`make test` installs Debian's chromium)"
        if os.environ.get("RAPPORT_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _api(stack: Stack) -> BlockingClient:
    return BlockingClient(stack.urls, TOKEN)


def _industries(stack: Stack) -> dict[str, dict[str, Any]]:
    with _api(stack) as api:
        return {i.industry: i.model_dump() for i in api.industries().industries}


def _connect(stack: Stack, a: str, b: str) -> None:
    with _api(stack) as api:
        sent = api.invite(a, b)
        assert api.accept(b, sent.invitation_id).status == "accepted"


def _register(stack: Stack, members: dict[str, str]) -> None:
    with _api(stack) as api:
        for member, industry in members.items():
            api.register(member, member, industry)


def _dashboard(stack: Stack, token: str | None = None) -> str:
    return link(stack.urls["projection"], "/dashboard" + (f"#token={token}" if token else ""))


def _row(page: Any, industry: str) -> list[str]:
    return page.locator(f'#industries tr[data-industry="{industry}"] td').all_inner_texts()


def test_dashboard_shows_live_industry_averages_and_follows_a_new_connection(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    tag = random_id(4)
    aero, tex = f"Aerospace {tag}", f"Textiles {tag}"
    a, b, c, d = (f"{n}-{tag}" for n in ("amelia", "bessie", "coco", "dior"))
    _register(stack, {a: aero, b: aero, c: tex, d: tex})
    _connect(stack, a, b)
    _connect(stack, a, c)
    before = poll_until(
        lambda: (i := _industries(stack)).get(aero, {}).get("average_connections") == 1.5 and i
    )
    assert before[tex]["average_connections"] == 0.5

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(_dashboard(stack, OPS_TOKEN))
    page.wait_for_selector(f'#industries tr[data-industry="{aero}"]', timeout=15_000)
    assert "token" not in page.url  # taken out of the address bar once read
    assert _row(page, aero) == [aero, "2", "1.5", "1.5"]
    assert _row(page, tex) == [tex, "2", "0.5", "0.5"]
    # The chart, the distribution, the pipeline tables are all drawn.
    assert page.locator("#industry-chart .row").count() == 2
    assert page.locator("#distribution .col").first.inner_text().split() == ["1", "0"]
    lag_topics = page.locator("#lag tbody tr td:first-child").all_inner_texts()
    assert lag_topics == [
        f"{stack.namespace}rapport.{t}"
        for t in ("connections", "engagements", "invitations", "members")
    ]
    assert page.locator("#dlq tbody tr").count() == 4
    assert page.locator("#kpi-members").inner_text() == "4"

    page.evaluate("window.loadedOnce = true")  # gone if the page reloads
    _connect(stack, c, d)  # a new connection: Textiles goes from 0.5 to 1.5 on average
    page.wait_for_function(
        """name => {
            const row = document.querySelector(`#industries tr[data-industry="${name}"]`);
            return row && row.cells[2].textContent === "1.5";
        }""",
        arg=tex,
        timeout=20_000,
    )
    assert page.evaluate("window.loadedOnce") is True
    assert _row(page, tex) == [tex, "2", "1.5", "1.5"]
    assert _row(page, aero) == [aero, "2", "1.5", "1.5"]
    assert page.locator("#kpi-connections").inner_text() == "3"
    assert page.locator("#state").inner_text().startswith("live")

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    print(f"dashboard screenshot: {shot}")
    # Offline by construction: every request went to the projection service itself.
    assert requests and all(url.startswith(stack.urls["projection"]) for url in requests), requests
    page.close()


def test_dashboard_without_or_with_a_wrong_token_asks_for_one(stack: Stack, browser: Any) -> None:
    page = browser.new_page()
    page.goto(_dashboard(stack))
    page.wait_for_selector("#login:not([hidden])")
    assert page.locator("#board").is_hidden()
    page.fill("#token", "not-a-token")
    page.click("#login button")
    page.wait_for_function("document.getElementById('login-error').textContent.length > 0")
    assert "not accepted" in page.locator("#login-error").inner_text()
    page.fill("#token", OPS_TOKEN)
    page.click("#login button")
    page.wait_for_selector("#board:not([hidden])")
    assert page.locator("#login").is_hidden()
    page.close()


def _demo(stack: Stack, tmp_path: Path, tag: str) -> None:
    """A small demo network through the public APIs, as `make run DEMO=1` builds it."""
    rapport = Path(sys.executable).parent / "rapport"
    result = subprocess.run(
        [str(rapport), "demo", "--members", "60", "--scale", "0.005", "--tag", tag],
        cwd=tmp_path,
        env={**os.environ, **stack.env, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_charts_health_panel_and_explorer_after_a_demo(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    tag = random_id(4)
    _demo(stack, tmp_path, tag)
    a, b, c = (f"{n}-{tag}" for n in ("ann", "bob", "cyd"))
    _register(stack, {a: "Optics", b: "Optics", c: "Optics"})
    _connect(stack, a, b)
    _connect(stack, b, c)  # ann and cyd: 2nd degree, through bob
    with _api(stack) as api:  # the projection has applied both connections
        poll_until(lambda: api.degree(a, c).degree == 2, what="ann and cyd at 2nd degree")
    # A second engagement replica, to be stopped while the page watches.
    replica = ServiceProcess("engagement", free_port(), stack.env, stack.logs / "replica")
    (stack.logs / "replica").mkdir(exist_ok=True)
    replica.start()
    try:
        poll_until(replica.ready, timeout=60, what="the second engagement replica")
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(_dashboard(stack, OPS_TOKEN))

        # Every chart has data points (the projection samples every second here).
        page.wait_for_function(
            """() => {
                const charts = [...document.querySelectorAll('#charts [data-chart]')];
                return charts.length === 7 && charts.every(c => Number(c.dataset.points) > 1);
            }""",
            timeout=30_000,
        )
        assert page.locator("#charts .u-legend").count() == 7  # a legend per chart
        assert page.locator("#charts canvas").count() == 7

        # The health panel: both engagement processes ready; one stopped turns red.
        replica_row = f'#health tr[data-service="engagement"][data-port="{replica.port}"]'
        page.wait_for_selector(f'{replica_row}[data-state="ready"]', timeout=15_000)
        states = page.locator("#health tbody tr").evaluate_all(
            "rows => rows.map(r => [r.dataset.service, r.dataset.state])"
        )
        assert sorted(s for s, _ in states) == sorted(
            ["invitation", "connection", "engagement", "engagement", "projection"]
        )
        assert all(state == "ready" for _, state in states), states
        page.screenshot(path=str(tmp_path / "dashboard-charts-health.png"), full_page=True)
        assert replica.child is not None
        replica.child.proc.kill()  # type: ignore[union-attr]
        page.wait_for_selector(f'{replica_row}[data-state="down"]', timeout=5_000)
        assert page.locator(f"{replica_row} .badge").inner_text().startswith("down")
        page.screenshot(path=str(tmp_path / "dashboard-service-down.png"), full_page=True)

        # The explorer: two members, their degree, mutual connection and a drawn path.
        page.fill("#explore-a", a)
        page.fill("#explore-b", c)
        page.click("#explore button")
        page.wait_for_selector("#explore-pair:not([hidden])", timeout=15_000)
        assert page.locator('#explore-degree [data-fact="degree"]').inner_text() == "2"
        assert page.locator('#explore-degree [data-fact="mutual"]').inner_text() == "1"
        assert b in page.locator("#explore-mutual").inner_text()
        assert page.locator("#explore-paths li").first.inner_text().startswith(f"{a} → {b} → {c}")
        assert page.locator("#explore-paths-graph").get_attribute("data-nodes") == "3"
        assert page.locator("#explore-graph").get_attribute("data-nodes") == "3"  # ann, bob, cyd
        assert page.locator('#explore-member [data-fact="connections"]').inner_text() == "1"
        assert page.locator("#explore-graph canvas").count() > 0  # drawn
        page.locator("#explorer").screenshot(path=str(tmp_path / "dashboard-explorer.png"))
        print(f"dashboard screenshots: {tmp_path}")
        # Offline by construction: every request went to the projection service itself.
        assert all(url.startswith(stack.urls["projection"]) for url in requests), requests
        page.close()
    finally:
        if replica.child is not None:
            replica.child.stop()


def test_the_explorer_is_for_operators_only(stack: Stack, browser: Any) -> None:
    page = browser.new_page()
    page.goto(_dashboard(stack, TOKEN))  # the gateway's token
    page.wait_for_selector("#board:not([hidden])")
    page.fill("#explore-a", "anyone")
    page.click("#explore button")
    page.wait_for_function("document.getElementById('explore-error').textContent.length > 0")
    assert "ops or admin token" in page.locator("#explore-error").inner_text()
    page.close()
