"""The ops dashboard in a real browser: Debian's headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.helpers import OPS_TOKEN, auth, poll_until, random_id

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


def _industries(stack: Stack) -> dict[str, dict[str, Any]]:
    data = httpx.get(f"{stack.urls['projection']}/industries", headers=auth(), timeout=10).json()
    return {i["industry"]: i for i in data["industries"]}


def _connect(stack: Stack, a: str, b: str) -> None:
    with httpx.Client(base_url=stack.urls["invitation"], timeout=10) as client:
        # The invitation service learns new members from their events: retry its 404.
        sent = poll_until(
            lambda: (
                (r := client.post("/invitations", json={"to": b}, headers=auth(a))).status_code
                == 201
                and r
            )
        )
        accepted = client.post(
            f"/invitations/{sent.json()['invitation_id']}/accept", headers=auth(b)
        )
        assert accepted.status_code == 200, accepted.text


def _register(stack: Stack, members: dict[str, str]) -> None:
    with httpx.Client(base_url=stack.urls["connection"], timeout=10) as client:
        for member, industry in members.items():
            body = {"member_id": member, "name": member, "industry": industry}
            assert client.post("/members", json=body, headers=auth()).status_code == 201


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
    page.goto(f"{stack.urls['projection']}/dashboard#token={OPS_TOKEN}")
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
    page.goto(f"{stack.urls['projection']}/dashboard")
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
