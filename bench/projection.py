"""Projection throughput: N events pre-loaded into the broker, then the projection service
(a real process) applies them all; beside it a bare aiokafka consume-and-decode loop over
the same topics, and redis-benchmark's pipelined SADD rate on the same redis-server."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis as redis_sync
from aiokafka import AIOKafkaConsumer

from bench import TOKEN, service_env
from bench.cpu import StackCpu, port_of, spent
from rapport.client import BlockingClient, RapportError
from rapport.localstack import free_port
from rapport.supervisor import ServiceProcess
from shared import events as ev
from shared.events import Envelope
from shared.kafka import ensure_topics, publish_envelopes
from shared.topics import ALL_TOPICS, TopicNames


@dataclass
class ProjectionResult:
    events: int
    projection_s: float
    steady_s: float
    steady_events: int
    bare_s: float
    sadd_per_s: float | None
    redis_used_bytes: int
    redis_time: RedisTime
    # CPU µs per event over the steady part, by process (projection, its Redis, the broker),
    # and the bare loop's own (both halves of the ratio, where one core each is all there is).
    cpu_per_event: dict[str, float]
    bare_cpu_per_event: float


@dataclass
class RedisTime:
    """Where Redis spent the apply's time (INFO commandstats of the node the run used): the
    scripts' whole time, and the part of it in the commands they called (the rest is Lua and
    the per-call dispatch)."""

    script_usec: int
    command_usec: int
    command_calls: int

    @classmethod
    def of(cls, commandstats: dict[str, dict[str, float]]) -> RedisTime:
        scripts = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall")
        inside = {k: v for k, v in commandstats.items() if k not in scripts}
        return cls(
            int(sum(commandstats.get(k, {}).get("usec", 0) for k in scripts)),
            int(sum(v["usec"] for v in inside.values())),
            int(sum(v["calls"] for v in inside.values())),
        )


def synthetic_events(n: int, rng: random.Random) -> list[Envelope]:
    """A ConnectionAccepted-heavy mix: 10% members, 75% connections, 15% engagements."""
    members = max(n // 10, 10)
    industries = ["Technology", "Finance", "Healthcare", "Media", "Manufacturing"]
    out = [
        Envelope.wrap(
            ev.MemberRegistered(
                member_id=f"member-{i:07d}", name=f"M{i}", industry=rng.choice(industries)
            ),
            producer="bench",
        )
        for i in range(members)
    ]
    kinds = ["like", "comment", "message", "congratulate"]
    while len(out) < n:
        a, b = rng.randrange(members), rng.randrange(members)
        if a == b:
            continue
        x, y = f"member-{a:07d}", f"member-{b:07d}"
        if rng.random() < 0.83:
            event: ev.Event = ev.ConnectionAccepted(member_a=min(x, y), member_b=max(x, y))
        else:
            event = ev.EngagementRecorded(actor=x, target=y, kind=rng.choice(kinds))
        out.append(Envelope.wrap(event, producer="bench"))
    return out


async def preload(bootstrap: str, namespace: str, events: list[Envelope]) -> None:
    await publish_envelopes(
        bootstrap, events, TopicNames(namespace), acks=1, linger_ms=20, max_batch_size=512 * 1024
    )


async def bare_consume(bootstrap: str, namespace: str, n: int) -> float:
    consumer = AIOKafkaConsumer(
        *(f"{namespace}{t}" for t in ALL_TOPICS),
        bootstrap_servers=bootstrap,
        group_id=f"{namespace}bare",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=1000,
        heartbeat_interval_ms=300,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        seen = 0
        started = None
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            if batch and started is None:
                started = time.perf_counter()
            for records in batch.values():
                for r in records:
                    json.loads(r.value)
                seen += len(records)
        return time.perf_counter() - (started or time.perf_counter())
    finally:
        await consumer.stop()


def redis_sadd_rate(port: int) -> float | None:
    tool = shutil.which("redis-benchmark")
    if not tool:
        return None
    out = subprocess.run(
        [tool, "-p", str(port), "-t", "sadd", "-n", "200000", "-P", "64", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    match = re.search(r"SADD: ([\d.]+) requests per second", out)
    return float(match.group(1)) if match else None


def run(
    bootstrap: str, redis_url: str, n: int, read_models_url: str | None = None, **extra_env: str
) -> ProjectionResult:
    """The projection through `n` events, its read models on `read_models_url`'s Redis (as
    `make run` lays them out) if given, else on `redis_url`'s."""
    namespace = f"bench{time.time_ns()}."
    # One projection process: the topics as `rapport run` lays them out for one replica.
    asyncio.run(ensure_topics(bootstrap, TopicNames(namespace).partitions(1)))
    events = synthetic_events(n, random.Random(1))
    asyncio.run(preload(bootstrap, namespace, events))
    token = TOKEN
    env = service_env(bootstrap, redis_url, namespace, read_models_url, **extra_env)
    applied_on = read_models_url or redis_url  # the Redis whose time and memory are measured
    with tempfile.TemporaryDirectory() as logs:
        proc = ServiceProcess("projection", free_port(), env, Path(logs))
        admin = redis_sync.Redis.from_url(applied_on)
        admin.config_resetstat()
        started = time.perf_counter()
        proc.start()
        api = BlockingClient({"projection": proc.url}, token, timeout=5)
        first: tuple[float, int] | None = None
        assert proc.child is not None and proc.child.proc is not None
        stack = StackCpu(
            {"projection": proc.child.proc.pid},
            {"redis": port_of(applied_on), "broker": port_of(bootstrap)},
        )
        watched = stack.processes()
        cpu_at_first: dict[str, float] = {}
        try:
            while True:
                try:
                    applied = api.status().events_applied
                    if first is None and applied > 0:
                        first = (time.perf_counter(), applied)
                        cpu_at_first = stack.seconds(watched)
                    if applied >= n:
                        break
                except RapportError:
                    pass  # not up yet
                if proc.child and not proc.child.alive():
                    raise RuntimeError("projection exited:\n" + proc.child.tail())
                time.sleep(0.05)  # polling another process's progress
            projection_s = time.perf_counter() - started
            assert first is not None
            steady_s, steady_events = time.perf_counter() - first[0], n - first[1]
            cpu = spent(cpu_at_first, stack.seconds(watched))
        finally:
            api.close()
            if proc.child:
                proc.child.stop()
    redis_time = RedisTime.of(admin.info("commandstats"))
    bare_cpu = time.process_time()
    bare_s = asyncio.run(bare_consume(bootstrap, namespace, n))
    bare_cpu = time.process_time() - bare_cpu
    used = int(admin.info("memory")["used_memory"])
    admin.close()
    return ProjectionResult(
        n,
        projection_s,
        steady_s,
        steady_events,
        bare_s,
        redis_sadd_rate(port_of(applied_on)),
        used,
        redis_time,
        {role: seconds / steady_events * 1e6 for role, seconds in cpu.items()},
        bare_cpu / n * 1e6,
    )


if __name__ == "__main__":  # pragma: no cover - manual use
    print(os.cpu_count())
