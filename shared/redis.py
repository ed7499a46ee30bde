"""Redis connection helpers shared by every service."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# How long one Redis call of a request may take before it counts as an outage (a paused or
# wedged server): short, so a request answers 503 within about a second instead of hanging.
SOCKET_TIMEOUT_S = 1.0
# The same for background work (batches, rebuilds, refreshes), whose calls may be long.
BACKGROUND_SOCKET_TIMEOUT_S = 30.0
POOL_WAIT_S = 0.5
# A cluster client's pool per node, as a multiple of a one-node client's (see `connect`).
CLUSTER_CONNECTIONS_FACTOR = 16

# Redis answers that mean "not now" (a script running, loading, a failover, out of memory),
# not "this request is wrong": retried by consumers, 503 with Retry-After at the HTTP edge.
TRANSIENT_REPLIES = frozenset(
    {"BUSY", "LOADING", "READONLY", "OOM", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS"}
)


# The reply's code opens its message, or follows "caused error:" when a pipeline wraps it.
_REPLY_CODE = re.compile(r"^(\w+)|caused error: \(?['\"]?(\w+)")


def is_transient(exc: BaseException) -> bool:
    """An outage of Redis (connection, timeout, or a transient error reply)."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return True
    if isinstance(exc, ResponseError):
        return any(
            (m.group(1) or m.group(2)) in TRANSIENT_REPLIES for m in _REPLY_CODE.finditer(str(exc))
        )
    return False


def connect(
    url: str,
    max_connections: int = 64,
    cluster: bool = False,
    socket_timeout_s: float = SOCKET_TIMEOUT_S,
) -> Redis:
    """A pooled client with short timeouts, so an outage turns into a fast 503, not a hang.

    The pool blocks (up to POOL_WAIT_S) when all connections are busy, so a burst of requests
    queues for a connection instead of failing. Background work whose single calls may be
    long (a projection batch, a rebuild) passes a longer `socket_timeout_s`. With `cluster`,
    a Redis Cluster client (for a service whose keys are laid out for one: shared.groups).
    """
    if cluster:
        return RedisCluster.from_url(  # type: ignore[return-value]
            url,
            decode_responses=True,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            socket_timeout=socket_timeout_s,
            # Per node. redis-py's async cluster client does not queue for a connection: a
            # full pool fails the command at once (MaxConnectionsError, redis-py #3135). A
            # burst of sagas runs many commands at once, so give it room.
            max_connections=max_connections * CLUSTER_CONNECTIONS_FACTOR,
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        decode_responses=True,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        socket_timeout=socket_timeout_s,
        # A dropped connection (a Redis restart) is retried once on a fresh one; a timeout
        # is not retried, so a paused server costs one timeout, not three.
        retry=Retry(
            ExponentialBackoff(cap=0.1, base=0.01),
            retries=1,
            supported_errors=(RedisConnectionError,),
        ),
    )
    return Redis.from_pool(pool)


async def initialize(client: Redis) -> None:
    """Let a Redis Cluster client learn the cluster's layout before its first concurrent
    commands: in redis-py 8.1 each of those would start that discovery and disconnect the
    others' connections halfway through their handshake (AttributeError on a None writer).
    Nothing to do for a one-node client."""
    if isinstance(client, RedisCluster):
        await client.initialize()


class AutoPipeline:
    """Sends the commands issued in one turn of the event loop to Redis together, on one
    connection of its own, and hands each caller its reply (not a transaction: each command
    stands alone, as if sent apart).

    Why: redis-py pays for a pooled connection, a retry wrapper, timeouts, one write and one
    read on every call. Measured here with 32 concurrent callers of one small script: 76-79
    µs of client CPU per call sent apart, 17-19 µs auto-pipelined. A lone call (a graph
    query) paid it too: 150-160 µs a round trip through redis-py, where the bare connection
    takes 50-70. So the connection is held; a lone call is written at once and its caller
    reads the reply; calls that come while replies are due go out together at the end of the
    loop's turn, without waiting for the replies before them, and one reader hands them out.

    Failures keep redis-py's contract: a lost connection fails what was in flight with a
    ConnectionError, and each of those callers is sent once more on a new connection; no
    reply within the client's socket timeout fails what was in flight with a TimeoutError.
    A cluster client sends each command apart (its commands may be on different nodes)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.batching = not isinstance(redis, RedisCluster)
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._in_flight: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self._connection: Connection | None = None
        # Connected (handshake done), and nothing failed since. Not `is_connected`: redis-py
        # sets the streams before its handshake, which reads on them (test_outages caught it).
        self._open = False
        self._unsent: list[list[tuple[tuple[Any, ...], asyncio.Future[Any]]]] = []
        self._reading = False  # a caller or the reader task reads the replies due
        self._tasks: set[asyncio.Task[None]] = set()  # held until done: weak in the loop

    async def execute(self, *args: Any) -> Any:
        if not self.batching:
            return await self.redis.execute_command(*args)
        (reply,) = await self._call([args])
        return reply

    async def execute_all(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Several commands sent together (each stands alone, as in `execute`), their
        replies in order; the first error is raised once all are answered."""
        if not self.batching:
            async with self.redis.pipeline(transaction=False) as pipe:
                for args in commands:
                    pipe.execute_command(*args)
                return list(await pipe.execute())
        return await self._call(list(commands))

    async def script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """EVALSHA; a server that does not have the script yet gets it once (SCRIPT LOAD)."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await script(keys=keys, args=args)

    async def _call(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        try:
            return await self._send(commands)
        except RedisConnectionError:  # a dropped connection: once more, on a new one
            return await self._send(commands)

    def _usable(self) -> Connection | None:
        """The held connection, if it is open and nothing failed on it since."""
        connection = self._connection
        if self._open and connection is not None and connection.is_connected:
            return connection
        return None

    def _read_on(self, connection: Connection) -> None:
        """A reader task for the replies due, unless someone reads them already."""
        if self._in_flight and not self._reading:
            self._reading = True
            self._spawn(self._read_due(connection))

    async def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        batch = [(args, loop.create_future()) for args in commands]
        lone = not (self._pending or self._in_flight or self._reading)
        if lone and (connection := self._usable()) is not None:
            # Nothing else under way: out at once, and read here (no turn of the loop, no
            # reader task) up to this call's last reply.
            self._write(connection, batch)
            self._reading = True
            await self._read_due(connection, until=batch[-1][1])
        else:
            if not self._pending:
                loop.call_soon(self._flush)
            self._pending.extend(batch)
            for _, future in batch:
                with contextlib.suppress(Exception):  # raised below, in order
                    await future
        return [f.result() for _, f in batch]

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        connection = self._usable()
        if connection is not None:
            self._write(connection, batch)
            self._read_on(connection)
            return
        self._open = False  # closed from outside (the client's close, say): open it again
        self._unsent.append(batch)
        if len(self._unsent) == 1:  # the first since the connection closed: open it
            self._spawn(self._connect())

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        try:
            if self._connection is None:
                # From the client's pool, never given back: the pool's disconnect (the
                # client's close) closes it with the others.
                self._connection = await self.redis.connection_pool.get_connection()
            if not self._connection.is_connected:  # fresh from the pool, it is
                await self._connection.connect()
        except BaseException as exc:
            unsent, self._unsent = self._unsent, []
            _fail([f for batch in unsent for _, f in batch], exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._open = True
        unsent, self._unsent = self._unsent, []
        for batch in unsent:
            self._write(self._connection, batch)
        self._read_on(self._connection)

    def _write(
        self, connection: Connection, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]
    ) -> None:
        assert connection._writer is not None  # open: see the callers
        try:
            packed = _packed([args for args, _ in batch])
        except Exception as exc:  # a command that cannot be encoded, say: this batch only
            _fail([f for _, f in batch], exc)
            return
        connection._writer.writelines(packed)
        self._in_flight.extend((args[0], future) for args, future in batch)

    async def _read_due(
        self, connection: Connection, until: asyncio.Future[Any] | None = None
    ) -> None:
        """Reads the replies due, in order, and hands each to its caller, until none is due
        (a reader task) or `until` is answered (a lone caller, who leaves the rest to a
        reader task). One reader at a time (`_reading`)."""
        callbacks = self.redis.response_callbacks
        try:
            while self._in_flight and not (until is not None and until.done()):
                try:
                    reply = await connection.read_response(disconnect_on_error=False)
                except ResponseError as exc:  # this command's error reply
                    reply = exc
                name, future = self._in_flight.popleft()
                if future.done():  # its caller gave up (a cancelled request)
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                    continue
                callback = callbacks.get(name)
                future.set_result(reply if callback is None else callback(reply))
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and until is not None:
                # The lone caller who was reading gave up: a reader task reads on for the
                # rest. (Cancelled inside a read, the bytes it had taken stay in hiredis'
                # parser: the next read goes on from them.)
                if self._in_flight:
                    self._spawn(self._read_due(connection))
                else:
                    self._reading = False
                raise
            # The connection failed or timed out, or the reader task was cancelled (the
            # loop's end): whatever is in flight fails, and the next call opens it again.
            self._open = False
            self._reading = False
            in_flight, self._in_flight = self._in_flight, deque()
            _fail([f for _, f in in_flight], exc)
            await connection.disconnect(nowait=True)
            if not isinstance(exc, Exception):
                raise
        else:
            if self._in_flight:  # the lone caller has its reply: the others' are read on
                self._spawn(self._read_due(connection))
            else:
                self._reading = False


_HIREDIS_PACKER = HiredisRespSerializer()


def _pack_with_hiredis(self: Connection, *args: Any) -> list[bytes]:
    return _HIREDIS_PACKER.pack(*args)  # type: ignore[no-any-return]


# redis-py's synchronous client packs with hiredis when it is installed; its asyncio client
# packs in Python (pinned 8.1.0), 2x slower for this process's calls outside the auto-pipeline
# (pipelines, the relays' stream reads). Every asyncio connection of the process packs as the
# synchronous one does.
Connection.pack_command = _pack_with_hiredis  # type: ignore[method-assign,assignment]


def _packed(commands: list[tuple[Any, ...]]) -> list[bytes]:
    """The commands in the Redis protocol, by the packer above (hiredis, in C): 5 µs for a
    script call with ten arguments where redis-py's asyncio `pack_commands` took 19, which
    was 7% of the connection service's CPU under accepts. It splits a command name with a
    space in it and raises redis-py's DataError for an argument it cannot encode."""
    return [piece for args in commands for piece in _HIREDIS_PACKER.pack(*args)]


def _fail(futures: Sequence[asyncio.Future[Any]], exc: BaseException) -> None:
    for future in futures:
        if future.done():
            continue
        if isinstance(exc, Exception):
            future.set_exception(exc)
        else:
            future.cancel()
