"""The write path through real processes, driven by a compiled load generator (wrk).

Every row is one wrk run (1 thread, 32 connections, fixed duration) against the whole stack
on the embedded broker, beside its reference measured in the same run: a bare FastAPI
endpoint (bench/bare.py) that validates the same body and makes one Redis Lua call. The
client's own CPU is reported beside each row, so a row that measures its client shows it.

Freshness: accept's 2xx until the projection answers degree 1, read with `?after=` (idle, and
under the invitation load), with each hop measured apart from the Kafka records' timestamps.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis

from bench import TOKEN, broker, service_env
from bench.cpu import StackCpu, busy_cores, port_of, settle, spent
from rapport.client import RapportClient, RapportError
from rapport.localstack import ChildProcess, EmbeddedRedisCluster, free_port
from rapport.supervisor import SERVICES, ServiceProcess, Supervisor, default_workers
from shared.directory import Directory
from shared.groups import tag
from shared.kafka import ensure_topics
from shared.redis import connect, initialize
from shared.settings import EngagementSettings, InvitationSettings
from shared.topics import CONNECTIONS, INVITATIONS, TopicNames

WRK_DIR = Path(__file__).parent / "wrk"
MEMBERS = 1000
PREFIX = "w"
# The engagement service's slot groups on the bench's cluster: a few per primary.
CLUSTER_SLOT_GROUPS = 12


@dataclass
class WrkRun:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    statuses: dict[int, int]
    client_cpu_s: float
    # CPU seconds of each process of the stack during the run (bench.cpu), by role.
    stack_cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def client_cpu(self) -> float:
        """The load generator's CPU as a share of one core."""
        return self.client_cpu_s / self.seconds

    def cpu_per_request_ms(self) -> dict[str, float]:
        """Each process's CPU per request (ms), the client's included."""
        spent = {**self.stack_cpu_s, "wrk": self.client_cpu_s}
        return {role: 1000 * s / max(self.requests, 1) for role, s in spent.items()}


@dataclass
class Freshness:
    total_ms: list[float] = field(default_factory=list)
    hops_ms: dict[str, list[float]] = field(default_factory=dict)
    failures: int = 0


# A pause between two answers longer than this is a group join or rebalance, not work.
DRAIN_STALL_S = 0.5


@dataclass
class Drain:
    """The connection service working off a backlog of accepted invitations alone: its
    consumer's own rate, over the time answers flowed (their log timestamps)."""

    accepted: int
    answered: int
    busy_s: float
    stalled_s: float

    @property
    def per_s(self) -> float:
        return self.answered / self.busy_s if self.busy_s else 0.0

    @classmethod
    def of(cls, accepted: int, answered_at: list[float]) -> Drain:
        times = sorted(answered_at)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        busy = sum(min(g, DRAIN_STALL_S) for g in gaps)
        return cls(accepted, len(times), busy, sum(gaps) - busy)


@dataclass
class WriteResults:
    seconds: int
    connections: int
    workers: dict[str, int]
    # The bare endpoint's runs just before and just after each row with a bar, by row:
    # register, invite, accept (register's after is invite's before).
    bare_before: dict[str, WrkRun]
    bare_after: dict[str, WrkRun]
    register: WrkRun
    invite: WrkRun
    accept: WrkRun
    idle: Freshness
    loaded: Freshness
    loaded_invite: WrkRun
    engage: WrkRun
    engage_cluster: WrkRun
    connection_drain: Drain
    # The embedded broker's CPU per fetch (ms): (batches held, cost) as a fresh partition
    # fills, and at the end of the invitations partitions after every row (bench.broker).
    fetch_by_fill: list[tuple[int, float]]
    fetch_after_rows_ms: float


@dataclass(frozen=True)
class WrkScript:
    """A script of bench/wrk/ and its settings (environment variables)."""

    name: str
    env: Mapping[str, str] = field(default_factory=dict)


# A random member invites, or likes something of, a random other one.
INVITE = WrkScript("to_other", {"WRK_PATH": "/invitations", "WRK_BODY": '{"to":"%s"}'})
ENGAGE = WrkScript(
    "to_other", {"WRK_PATH": "/engagements", "WRK_BODY": '{"target":"%s","kind":"like"}'}
)
REGISTER, ACCEPT, READS = WrkScript("register"), WrkScript("accept"), WrkScript("reads")


def wrk(
    url: str,
    script: WrkScript,
    seconds: int,
    connections: int,
    *,
    stack: StackCpu | None = None,
    **env: str,
) -> WrkRun:
    """One wrk run; its result line comes from bench/wrk/common.lua's `done`. With `stack`,
    the CPU each of its processes spent meanwhile."""
    watched = stack.processes() if stack else {}
    stack_before = stack.seconds(watched) if stack else {}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(WRK_DIR / f"{script.name}.lua"),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "WRK_DIR": str(WRK_DIR), "WRK_TOKEN": TOKEN, **script.env, **env},
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stack_spent = spent(stack_before, stack.seconds(watched)) if stack else {}
    line = next(x for x in out.splitlines() if x.startswith("WRK_RESULT "))
    data = json.loads(line.removeprefix("WRK_RESULT "))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WrkRun(
        data["requests"],
        data["seconds"],
        data["p50_ms"],
        data["p99_ms"],
        data["errors"],
        {int(k): v for k, v in data["statuses"].items()},
        cpu,
        stack_spent,
    )


async def _register(api: RapportClient, members: list[str]) -> None:
    sem = asyncio.Semaphore(32)

    async def one(m: str) -> None:
        async with sem:
            await api.register(m, m, "Technology")

    await asyncio.gather(*(one(m) for m in members))


async def _pending_invitations(redis_url: str, namespace: str, path: Path) -> int:
    """Write 'invitation_id recipient' for every pending invitation (the accept run's input)."""
    redis = Redis.from_url(redis_url, decode_responses=True)
    settings = InvitationSettings(namespace=namespace)  # the services' slot groups (one)
    lines = []
    for group in settings.groups.all():  # an invitation is in its pair's group
        key = partial(settings.key, "invitation", tag(group))
        ids = await redis.zrange(key("pending"), 0, -1)
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            async with redis.pipeline(transaction=False) as pipe:
                for i in chunk:
                    pipe.hget(key("inv", i), "s")
                for i, raw in zip(chunk, await pipe.execute(), strict=True):
                    lines.append(f"{i} {json.loads(raw)['recipient']}")
    random.Random(7).shuffle(lines)
    await asyncio.to_thread(path.write_text, "\n".join(lines) + "\n")
    await redis.aclose()
    return len(lines)


class LogClock(abc.ABC):
    """Reads topics from their end as records arrive, handing each envelope and its record
    timestamp (set by the relay's producer) to `saw`."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.consumer = AIOKafkaConsumer(
            *topics, bootstrap_servers=bootstrap, fetch_max_wait_ms=5, auto_offset_reset="latest"
        )
        self._task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    def saw(self, envelope: dict[str, Any], at: float) -> None:
        """One record of the topics: its envelope and when it entered the log."""

    async def start(self) -> None:
        await self.consumer.start()
        await self.consumer.getmany(timeout_ms=500)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for record in self.consumer:
            self.saw(json.loads(record.value), record.timestamp / 1000)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.consumer.stop()


class AnswerClock(LogClock):
    """When the connection service answered each accepted invitation (ConnectionAccepted or
    ConnectionRejected entered the log), by invitation id."""

    def __init__(self, bootstrap: str, topics: TopicNames, expected: int) -> None:
        super().__init__(bootstrap, topics(CONNECTIONS))
        self.at: dict[str, float] = {}
        self.expected = expected
        self.all_answered = asyncio.Event()

    def saw(self, envelope: dict[str, Any], at: float) -> None:
        inv = envelope.get("payload", {}).get("invitation_id")
        if inv and envelope["type"] in ("ConnectionAccepted", "ConnectionRejected"):
            self.at.setdefault(inv, at)
            if len(self.at) >= self.expected:
                self.all_answered.set()


class HopClock(LogClock):
    """When each InvitationAccepted / ConnectionAccepted entered the log, keyed by
    invitation id."""

    def __init__(self, bootstrap: str, topics: TopicNames) -> None:
        super().__init__(bootstrap, topics(INVITATIONS), topics(CONNECTIONS))
        self.seen: dict[tuple[str, str], float] = {}
        self.events: dict[str, asyncio.Event] = {}

    def saw(self, envelope: dict[str, Any], at: float) -> None:
        inv = envelope.get("payload", {}).get("invitation_id")
        if inv and envelope["type"] in ("InvitationAccepted", "ConnectionAccepted"):
            self.seen[(envelope["type"], inv)] = at
            self.events.setdefault(inv, asyncio.Event())
            if ("ConnectionAccepted", inv) in self.seen:
                self.events[inv].set()


async def _freshness(
    api: RapportClient,
    clock: HopClock,
    samples: int,
    rng: random.Random,
) -> Freshness:
    """Accept an invitation between two new members, then `?after=` degree 1, `samples` times."""
    result = Freshness(hops_ms={"relay": [], "connection": [], "projection": []})
    for _ in range(samples):
        a, b = f"f{rng.getrandbits(40):x}", f"g{rng.getrandbits(40):x}"
        await _register(api, [a, b])
        inv = (await api.invite(a, b)).invitation_id
        accepted = await api.accept(b, inv)
        answered_at = time.time()
        started = time.perf_counter()
        try:
            degree = await api.degree(a, b, after=accepted.event_id, wait_ms=10_000)
        except RapportError:
            degree = None
        visible_at = time.time()
        if degree is None or degree.degree != 1:
            result.failures += 1
            continue
        result.total_ms.append((time.perf_counter() - started) * 1000)
        event = clock.events.setdefault(inv, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout=5)
        except TimeoutError:
            continue
        invitation_at = clock.seen[("InvitationAccepted", inv)]
        connection_at = clock.seen[("ConnectionAccepted", inv)]
        result.hops_ms["relay"].append((invitation_at - answered_at) * 1000)
        result.hops_ms["connection"].append((connection_at - invitation_at) * 1000)
        result.hops_ms["projection"].append((visible_at - connection_at) * 1000)
    return result


def run_writes(
    bootstrap: str,
    redis_url: str,
    logs: Path,
    seconds: int = 10,
    connections: int = 32,
    read_models_url: str | None = None,
) -> WriteResults:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: `make wrk` installs Debian's package")
    namespace = f"w{time.time_ns()}."
    env = service_env(
        bootstrap,
        redis_url,
        namespace,
        read_models_url,
        RAPPORT_INVITATION_WEEKLY_LIMIT="1000000",
        RAPPORT_ENGAGEMENT_PER_ACTOR_PER_MINUTE="1000000",
        RAPPORT_ENGAGEMENT_PER_TARGET_PER_DAY="1000000",
    )
    workers = {name: default_workers(name) for name in SERVICES}
    # The topics as `rapport run` lays them out for these replicas (rapport.cli.run).
    topic_partitions = TopicNames(namespace).partitions(max(workers.values()))
    asyncio.run(ensure_topics(bootstrap, topic_partitions))
    procs = [ServiceProcess(n, free_port(), env, logs, workers=workers[n]) for n in SERVICES]
    supervisor = Supervisor(procs)
    supervisor.start_all(timeout_s=90)
    urls = {p.name: p.url for p in procs}
    bare_port = free_port()
    bare = ChildProcess(
        "bare",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.bare:app",
            "--port",
            str(bare_port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        logs / "bare.log",
        env={**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    bare.start()
    try:
        assert bare.proc is not None
        stack = StackCpu(
            {p.name: p.child.proc.pid for p in procs if p.child and p.child.proc},
            {"redis": port_of(redis_url), "broker": port_of(bootstrap)}
            | ({"read-model redis": port_of(read_models_url)} if read_models_url else {}),
        )
        members = [f"{PREFIX}{i:06d}" for i in range(MEMBERS)]
        idle_cores = _idle_cores(stack)
        asyncio.run(_seed(urls, members))
        _wait_up(f"http://127.0.0.1:{bare_port}/docs")
        load = {"WRK_MEMBERS": str(MEMBERS), "WRK_PREFIX": PREFIX}
        # Idle freshness first, while no consumer has a backlog from the load runs.
        idle = asyncio.run(_measure_freshness(bootstrap, namespace, urls, 0, connections, load))[0]
        bare_stack = StackCpu({"bare": bare.proc.pid}, {"redis": port_of(redis_url)})
        # The machine's speed drifts (consecutive 10 s runs of the bare endpoint alone: 1,792
        # to 2,262 req/s within a minute; 1,036 to 1,628 within three on a slower machine),
        # so each row with a bar has its own reference runs just before and just after it,
        # each after the stack settled: their mean is the speed during the row.

        def bare_run() -> WrkRun:
            settle(stack, idle_cores)
            return wrk(
                f"http://127.0.0.1:{bare_port}",
                INVITE,
                seconds,
                connections,
                stack=bare_stack,
                **load,
            )

        bare_before = {"register": bare_run()}
        settle(stack, idle_cores)
        register = wrk(
            urls["connection"],
            REGISTER,
            seconds,
            connections,
            stack=stack,
            WRK_PREFIX=f"r{namespace[1:8]}",
        )
        bare_before["invite"] = bare_run()
        settle(stack, idle_cores)
        invite = wrk(urls["invitation"], INVITE, seconds, connections, stack=stack, **load)
        bare_after = {"register": bare_before["invite"], "invite": bare_run()}
        engage = wrk(urls["engagement"], ENGAGE, seconds, connections, **load)
        engage_cluster = _engage_on_cluster(env, members, logs, seconds, connections, load)
        _, loaded, loaded_invite = asyncio.run(
            _measure_freshness(bootstrap, namespace, urls, seconds, connections, load)
        )
        # Accept last: its acceptances keep the connection service busy for a while after.
        accepts = logs / "accepts.txt"
        asyncio.run(_pending_invitations(redis_url, namespace, accepts))
        bare_before["accept"] = bare_run()
        settle(stack, idle_cores)
        accept = wrk(
            urls["invitation"], ACCEPT, seconds, connections, stack=stack, WRK_ACCEPTS=str(accepts)
        )
        bare_after["accept"] = bare_run()  # once the connection service caught up (settle)
        connection = next(p for p in procs if p.name == "connection")
        drain = _connection_drain(bootstrap, redis_url, namespace, urls, connection, logs)
    finally:
        bare.stop()
        supervisor.stop()
    # With the services stopped: the broker's CPU is then the fetches' own.
    fetch_after_rows, fetch_by_fill = asyncio.run(
        _fetch_costs(bootstrap, namespace, topic_partitions, stack)
    )
    return WriteResults(
        seconds,
        connections,
        workers,
        bare_before,
        bare_after,
        register,
        invite,
        accept,
        idle,
        loaded,
        loaded_invite,
        engage,
        engage_cluster,
        drain,
        fetch_by_fill,
        fetch_after_rows,
    )


async def _fetch_costs(
    bootstrap: str, namespace: str, topic_partitions: Mapping[str, int], stack: StackCpu
) -> tuple[float, list[tuple[int, float]]]:
    """The broker's CPU per fetch at the end of the invitations partitions the rows wrote
    (the accept row's logs, and more), and as a fresh partition fills (bench.broker)."""
    watched = {"broker": stack.processes()["broker"]}

    def broker_cpu_s() -> float:
        return stack.seconds(watched)["broker"]

    topic = TopicNames(namespace)(INVITATIONS)
    partitions = [TopicPartition(topic, p) for p in range(topic_partitions[topic])]
    after_rows = await broker.end_fetch_cpu_ms(bootstrap, broker_cpu_s, partitions)
    return after_rows, await broker.fetch_cost_by_fill(bootstrap, broker_cpu_s)


def _engage_on_cluster(
    env: dict[str, str],
    members: list[str],
    logs: Path,
    seconds: int,
    connections: int,
    load: dict[str, str],
) -> WrkRun:
    """`POST /engagements` on one engagement process whose keys live on a 3-node Redis
    Cluster, in slot groups, with the same members in the cluster's member directory."""
    with tempfile.TemporaryDirectory(dir=logs) as tmp:
        cluster = EmbeddedRedisCluster(Path(tmp))
        cluster.start()
        try:
            settings = EngagementSettings(
                namespace=env["RAPPORT_NAMESPACE"], slot_groups=CLUSTER_SLOT_GROUPS
            )
            asyncio.run(_seed_directory(cluster.url, Directory.of(settings), members))
            on_cluster = {
                **env,
                "REDIS_URL": cluster.url,
                "RAPPORT_REDIS_CLUSTER": "1",
                "RAPPORT_SLOT_GROUPS": str(CLUSTER_SLOT_GROUPS),
            }
            proc = ServiceProcess("engagement", free_port(), on_cluster, Path(tmp))
            supervisor = Supervisor([proc])
            supervisor.start_all(timeout_s=60)
            try:
                return wrk(proc.url, ENGAGE, seconds, connections, **load)
            finally:
                supervisor.stop()
        finally:
            cluster.stop()


async def _seed_directory(url: str, directory: Directory, members: list[str]) -> None:
    """The members as the connection service registers them in the directory."""
    client = connect(url, cluster=True)
    await initialize(client)
    by_key: dict[str, list[str]] = {}
    for m in members:
        key, entry = directory.is_active(m)
        by_key.setdefault(key, []).append(entry)
    for key, entries in by_key.items():
        await client.sadd(key, *entries)
    await client.aclose()


def _connection_drain(
    bootstrap: str,
    redis_url: str,
    namespace: str,
    urls: dict[str, str],
    connection: ServiceProcess,
    logs: Path,
    seconds: int = 5,
) -> Drain:
    """Stop the connection service, accept invitations for `seconds` (the log holds them),
    start it again and time its consumer through the backlog."""
    assert connection.child is not None
    connection.child.stop(timeout=15)
    accepts = logs / "drain-accepts.txt"
    asyncio.run(_pending_invitations(redis_url, namespace, accepts))
    run = wrk(urls["invitation"], ACCEPT, seconds, 32, WRK_ACCEPTS=str(accepts))
    accepted = run.statuses.get(200, 0)

    async def drained() -> Drain:
        answers = AnswerClock(bootstrap, TopicNames(namespace), accepted)
        await answers.start()
        try:
            connection.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answers.all_answered.wait(), timeout=120)
            return Drain.of(accepted, list(answers.at.values()))
        finally:
            await answers.stop()

    return asyncio.run(drained())


def _idle_cores(stack: StackCpu, seconds: float = 3.0) -> float:
    """What the idle stack uses (its consumers' polls, on the embedded broker a fair share),
    and a margin: the level `settle` waits for."""
    return 1.5 * busy_cores(stack, stack.processes(), seconds) + 0.05


def _wait_up(url: str, timeout_s: float = 20) -> None:
    """The bare reference endpoint (not a Rapport service) answering."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # another process is starting; nothing to await
    raise RuntimeError(f"{url} did not come up")


async def _seed(urls: dict[str, str], members: list[str]) -> None:
    async with RapportClient(urls, TOKEN, timeout=30) as api:
        await _register(api, members)


async def _measure_freshness(
    bootstrap: str,
    namespace: str,
    urls: dict[str, str],
    seconds: int,
    connections: int,
    load: dict[str, str],
) -> tuple[Freshness, Freshness, WrkRun]:
    """Idle freshness (100 samples) when `seconds` is 0, else freshness while wrk loads
    `POST /invitations` for `seconds`."""
    clock = HopClock(bootstrap, TopicNames(namespace))
    await clock.start()
    rng = random.Random(time.time_ns())
    try:
        async with RapportClient(urls, TOKEN, timeout=30) as api:
            if not seconds:
                idle = await _freshness(api, clock, 100, rng)
                return idle, Freshness(), WrkRun(0, 1, 0, 0, 0, {}, 0)
            background = asyncio.create_task(
                asyncio.to_thread(wrk, urls["invitation"], INVITE, seconds, connections, **load)
            )
            await asyncio.sleep(1)  # let the load reach its steady state first
            loaded = Freshness(hops_ms={"relay": [], "connection": [], "projection": []})
            while not background.done():
                one = await _freshness(api, clock, 1, rng)
                loaded.total_ms += one.total_ms
                loaded.failures += one.failures
                for hop, values in one.hops_ms.items():
                    loaded.hops_ms[hop] += values
            loaded_invite = await background
    finally:
        await clock.stop()
    return Freshness(), loaded, loaded_invite


def percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return (0.0, 0.0)
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def statuses(run: WrkRun) -> str:
    codes = Counter(run.statuses)
    return ", ".join(f"{code}: {n:,}" for code, n in sorted(codes.items())) + (
        f", socket errors: {run.errors}" if run.errors else ""
    )
