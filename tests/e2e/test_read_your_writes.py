"""Read-your-writes across the four processes, as a client sees it: what one service answered
2xx for is never contradicted by another, with no retries and no sleeps. Driven through the
typed client (`rapport.client`), which threads each write's `event_id` into the next read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rapport.client import BlockingClient, NotFound, RapportClient
from tests.e2e.conftest import Stack
from tests.helpers import TOKEN, random_id

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


async def two_members(rapport: RapportClient) -> tuple[str, str]:
    a, b = f"a{random_id(8)}", f"b{random_id(8)}"
    for m in (a, b):
        await rapport.register(m, m, "Technology")
    return a, b


@pytest.mark.timeout(180)
async def test_register_invite_accept_then_degree_one_fifty_times_in_a_row(stack: Stack) -> None:
    async with RapportClient(stack.urls, TOKEN, timeout=15) as rapport:
        for _ in range(50):
            a, b = await two_members(rapport)
            # At once: the invitation service must know both members already.
            sent = await rapport.invite(a, b)
            accepted = await rapport.accept(b, sent.invitation_id)
            assert rapport.last_event_id == accepted.event_id
            # `after` the acceptance (threaded by the client): the connection it leads to is
            # visible too.
            assert (await rapport.degree(a, b, wait_ms=10_000)).degree == 1


@pytest.mark.timeout(60)
async def test_a_block_answered_2xx_refuses_the_next_invitation_at_once(stack: Stack) -> None:
    async with RapportClient(stack.urls, TOKEN, timeout=15) as rapport:
        for _ in range(10):
            a, b = await two_members(rapport)
            await rapport.block(b, a)
            with pytest.raises(NotFound) as refused:
                await rapport.invite(a, b)
            assert refused.value.code == "member_not_found"
            with pytest.raises(NotFound):
                await rapport.engage(a, b, "like")


def test_the_blocking_client_for_synchronous_callers(stack: Stack) -> None:
    with BlockingClient(stack.urls, TOKEN) as rapport:
        a, b = f"a{random_id(8)}", f"b{random_id(8)}"
        rapport.register(a, "A", "Technology")
        rapport.register(b, "B", "Technology")
        sent = rapport.invite(a, b, message="Hello")
        rapport.accept(b, sent.invitation_id)
        assert rapport.degree(a, b).degree == 1
        assert rapport.summary(a).connections == 1
        assert rapport.ready("projection") is True


async def test_the_readme_client_example_runs_as_written(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (code,) = [b for b in blocks if "RapportClient" in b]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # our own documentation, run as written
    await scope["ada_meets_grace"](TOKEN, stack.urls)
    assert capsys.readouterr().out.split() == ["1", "already_connected"]
