"""The README's producer example runs as written against the real broker, and the projection
shows what it published."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.projection.main import create_app
from shared import events as ev
from shared.events import Envelope
from tests.helpers import Infra, auth, publish_envelopes, running_app

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("service_env")]

README = Path(__file__).resolve().parents[2] / "README.md"


async def test_readme_example_publishes_a_valid_engagement(infra: Infra, namespace: str) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = [b for b in blocks if "def publish_engagement" in b]
    assert len(code) == 1
    source = code[0].replace('"rapport.engagements"', f'"{namespace}rapport.engagements"')
    scope: dict = {}
    exec(compile(source, "README.md", "exec"), scope)  # our own documentation, run as written
    async with running_app(create_app()) as client:
        await publish_envelopes(
            infra.kafka_bootstrap,
            namespace,
            [Envelope.wrap(ev.ConnectionAccepted(member_a="ada", member_b="grace"), producer="t")],
        )
        event_id = await scope["publish_engagement"](
            infra.kafka_bootstrap, "ada", "grace", "comment"
        )
        view = await client.get(
            "/members/ada/engagement",
            params={"after": event_id, "wait_ms": 15000},
            headers=auth("ada"),
        )
    assert view.status_code == 200
    assert [i["member_id"] for i in view.json()["engaged"]] == ["grace"]
