"""Redis connection helpers shared by every service."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def connect(url: str, max_connections: int = 64, cluster: bool = False) -> Redis:
    """A pooled client with short timeouts, so an outage turns into a fast 503, not a hang.

    The pool blocks (up to 5 s) when all connections are busy, so a burst of requests queues
    for a connection instead of failing. With `cluster`, a Redis Cluster client (only the
    projection's read models are laid out for a cluster).
    """
    if cluster:
        return RedisCluster.from_url(  # type: ignore[return-value]
            url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=5,
            max_connections=max_connections,
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return Redis.from_pool(pool)
