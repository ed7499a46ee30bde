"""Auto-pipelined Redis calls (shared.redis.AutoPipeline) on a real redis-server: concurrent
callers share a round trip, and each still gets exactly its own answer or error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.redis import AutoPipeline, connect
from tests.helpers import Infra

pytestmark = pytest.mark.integration

COUNT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def _clients(redis: Redis) -> int:
    return len(await redis.client_list())


@pytest_asyncio.fixture
async def calls(infra: Infra) -> AsyncIterator[AutoPipeline]:
    """Auto-pipelined calls on a client of their own (the service's kind of pool)."""
    client = connect(infra.redis_url)
    yield AutoPipeline(client)
    await client.aclose()


async def test_concurrent_calls_share_one_connection_and_each_gets_its_own_answer(
    calls: AutoPipeline, redis_client: Redis, namespace: str
) -> None:
    script = calls.redis.register_script(COUNT)
    before = await _clients(redis_client)
    await calls.script(script, [f"{namespace}warm"], [1])  # the server has the script
    answers = await asyncio.gather(
        *(calls.script(script, [f"{namespace}n{i % 5}"], [i]) for i in range(50))
    )
    # Each answer is its own command's: INCRBY by i on key i % 5, in issue order.
    totals = [0] * 5
    for i, answer in enumerate(answers):
        totals[i % 5] += i
        assert answer == totals[i % 5]
    # Fifty calls went out together: one connection, where fifty would open fifty.
    assert await _clients(redis_client) == before + 1


async def test_an_error_reaches_only_its_caller(
    calls: AutoPipeline, redis_client: Redis, namespace: str
) -> None:
    await redis_client.set(f"{namespace}text", "not a number")
    good, bad, also_good = await asyncio.gather(
        calls.execute("INCRBY", f"{namespace}a", 2),
        calls.execute("INCRBY", f"{namespace}text", 1),
        calls.execute("INCRBY", f"{namespace}a", 3),
        return_exceptions=True,
    )
    assert (good, also_good) == (2, 5)
    assert isinstance(bad, ResponseError) and "not an integer" in str(bad)


async def test_a_script_the_server_lost_is_loaded_again(
    calls: AutoPipeline, redis_client: Redis, namespace: str
) -> None:
    script = calls.redis.register_script(COUNT)
    await redis_client.script_flush()
    answers = await asyncio.gather(
        *(calls.script(script, [f"{namespace}lost"], [1]) for _ in range(3))
    )
    assert sorted(answers) == [1, 2, 3]


async def test_a_caller_that_gives_up_leaves_the_others_their_answers(
    calls: AutoPipeline, namespace: str
) -> None:
    quitter = asyncio.ensure_future(calls.execute("INCRBY", f"{namespace}q", 1))
    stayer = asyncio.ensure_future(calls.execute("INCRBY", f"{namespace}s", 1))
    # One loop turn, not a wait for time: both tasks run and queue their commands, and the
    # batch goes out only after this test cancels one of them.
    await asyncio.sleep(0)
    quitter.cancel()
    assert await stayer == 1
    assert quitter.cancelled()
