"""Auto-pipelined Redis calls (shared.redis.AutoPipeline) on a real redis-server: concurrent
callers share a round trip, and each still gets exactly its own answer or error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
    await calls.script(script, [f"{namespace}warm"], [1])  # the server has the script
    before = await _clients(redis_client)
    answers = await asyncio.gather(
        *(calls.script(script, [f"{namespace}n{i % 5}"], [i]) for i in range(50))
    )
    # Each answer is its own command's: INCRBY by i on key i % 5, in issue order.
    totals = [0] * 5
    for i, answer in enumerate(answers):
        totals[i % 5] += i
        assert answer == totals[i % 5]
    # Fifty calls went out together on the connection already open, where calls sent apart
    # would open one each.
    assert await _clients(redis_client) == before


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


async def test_a_dropped_connection_is_opened_again_for_the_next_calls(
    calls: AutoPipeline, redis_client: Redis, namespace: str
) -> None:
    held = await calls.execute("CLIENT", "ID")
    await redis_client.client_kill_filter(_id=held)  # as a Redis restart would drop it
    # The first call after it finds the connection gone and is sent again on a new one.
    assert await calls.execute("INCRBY", f"{namespace}after", 1) == 1
    assert await calls.execute("CLIENT", "ID") != held
    assert await calls.execute("INCRBY", f"{namespace}after", 1) == 2


async def test_a_reply_later_than_the_timeout_fails_what_is_in_flight_and_the_next_call_goes_on(
    infra: Infra, namespace: str
) -> None:
    client = connect(infra.redis_url, socket_timeout_s=0.2)
    calls = AutoPipeline(client)
    try:
        await calls.execute("PING")
        # A command the server holds for a second (an empty list's blocking pop), and one
        # behind it: neither is answered within the 0.2 s timeout.
        held, behind = await asyncio.gather(
            calls.execute("BLPOP", f"{namespace}empty", 1),
            calls.execute("INCRBY", f"{namespace}behind", 1),
            return_exceptions=True,
        )
        assert isinstance(held, RedisTimeoutError) and isinstance(behind, RedisTimeoutError)
        assert await calls.execute("INCRBY", f"{namespace}next", 5) == 5
    finally:
        await client.aclose()


async def test_a_lone_caller_who_gives_up_while_reading_leaves_the_next_its_answer(
    calls: AutoPipeline, redis_client: Redis, namespace: str
) -> None:
    await calls.execute("PING")  # open: the next call is a lone one, read by its caller
    reader = asyncio.ensure_future(calls.execute("BLPOP", f"{namespace}list", 5))
    await asyncio.sleep(0)  # one loop turn: the pop is sent and its caller reads
    behind = asyncio.ensure_future(calls.execute("INCRBY", f"{namespace}behind", 1))
    await asyncio.sleep(0)  # and the call behind it is queued
    reader.cancel()
    await redis_client.rpush(f"{namespace}list", "x")  # the pop is answered, to no one
    assert await asyncio.wait_for(behind, 5) == 1  # fails, not hangs, if no one reads on
    assert reader.cancelled()
    assert await calls.execute("INCRBY", f"{namespace}behind", 1) == 2


async def test_a_lone_caller_returns_with_its_reply_and_leaves_the_later_ones_to_a_reader(
    calls: AutoPipeline, redis_client: Redis, namespace: str
) -> None:
    await calls.execute("PING")  # open: the next call is a lone one, read by its caller
    first = asyncio.ensure_future(calls.execute("INCRBY", f"{namespace}first", 1))
    await asyncio.sleep(0)  # one loop turn: it is sent and its caller reads
    held = asyncio.ensure_future(calls.execute("BLPOP", f"{namespace}list", 5))
    # Answered while the pop sent after it is not: its caller does not wait on others'.
    assert await asyncio.wait_for(first, 2) == 1
    assert not held.done()
    await redis_client.rpush(f"{namespace}list", "x")
    assert await asyncio.wait_for(held, 5) == (f"{namespace}list", "x")


async def test_several_commands_sent_together_answer_in_order_and_raise_the_first_error(
    calls: AutoPipeline, redis_client: Redis, namespace: str
) -> None:
    assert await calls.execute_all(
        ("INCRBY", f"{namespace}n", 2), ("EXPIRE", f"{namespace}n", 60), ("GET", f"{namespace}n")
    ) == [2, True, "2"]
    await redis_client.set(f"{namespace}text", "not a number")
    with pytest.raises(ResponseError, match="not an integer"):
        await calls.execute_all(("INCRBY", f"{namespace}text", 1), ("INCRBY", f"{namespace}n", 1))
    # Each stands alone: the command after the error was applied.
    assert await redis_client.get(f"{namespace}n") == "3"


async def test_every_kind_of_argument_reaches_redis_as_redis_py_would_send_it(
    calls: AutoPipeline, redis_client: Redis, namespace: str
) -> None:
    """Commands are packed by hiredis; what it would pack otherwise goes through redis-py:
    values of each kind arrive as they would through redis-py, a command name with a space
    is split, and an argument neither can encode fails only its own call."""
    values = ["ünïcode", b"\x00\xff raw", 12345, -7, 10**30, 0.1, 1e20, memoryview(b"view")]
    keys = [f"{namespace}v{i}" for i in range(len(values))]
    replies = await asyncio.gather(
        *(calls.execute("SET", key, value) for key, value in zip(keys, values, strict=True))
    )
    assert replies == [True] * len(values)
    for key, value in zip(keys, values, strict=True):
        with_redis_py = f"{namespace}py"
        await redis_client.set(with_redis_py, value)
        same = "return redis.call('GET', KEYS[1]) == redis.call('GET', KEYS[2]) and 1 or 0"
        assert await redis_client.eval(same, 2, key, with_redis_py) == 1, value
    # redis-py splits a command name with a space into its words; so does the fallback.
    expected = await redis_client.config_get("maxmemory-policy")
    assert await calls.execute("CONFIG GET", "maxmemory-policy") == expected
    bad, good = await asyncio.gather(
        calls.execute("SET", f"{namespace}bad", None),
        calls.execute("INCRBY", f"{namespace}after", 1),
        return_exceptions=True,
    )
    assert isinstance(bad, DataError)
    assert good == 1
