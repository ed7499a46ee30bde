"""`rapport run` (what `make run` calls) as a user runs it: a real process tree."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from rapport.client import BlockingClient, Conflict, Unauthorized, is_ready
from rapport.localstack import free_port, port_is_free
from rapport.supervisor import SERVICES, default_workers
from shared.topics import ALL_TOPICS
from tests.e2e.driver import agrees_with_a_rebuild
from tests.helpers import child_pids

pytestmark = pytest.mark.e2e


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)  # polling another process's state; nothing to await


def _base(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _ready(port: int) -> bool:
    return is_ready(_base(port))


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit waits for whoever adopted it to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _service_pid(port: int) -> int | None:
    """The service's process (uvicorn's master of its workers), None while there is none."""
    out = subprocess.run(
        ["pgrep", "-f", f"rapport.serve .* --port {port} "], capture_output=True, text=True
    )
    return int(out.stdout.split()[0]) if out.returncode == 0 else None


# What would point `rapport run` at infrastructure or tokens other than its own.
NOT_OURS = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "READ_MODEL_REDIS_URL", "RAPPORT_API_TOKENS")


def _own_stack_env() -> dict[str, str]:
    """This process's environment without what would make `rapport run` use another stack."""
    return {k: v for k, v in os.environ.items() if k not in NOT_OURS}


@pytest.mark.timeout(180)
def test_run_starts_everything_prints_token_restarts_crashes_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    ports = {name: free_port() for name in SERVICES}
    kafka_port, redis_port, read_model_port = free_port(), free_port(), free_port()
    env = _own_stack_env()
    env.update({f"RAPPORT_{name.upper()}_PORT": str(p) for name, p in ports.items()})
    env["COLUMNS"] = "200"
    log = tmp_path / "run.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rapport.cli",
                "run",
                "--kafka-port",
                str(kafka_port),
                "--redis-port",
                str(redis_port),
                "--read-model-redis-port",
                str(read_model_port),
                "--state-dir",
                str(tmp_path / "state"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        _wait(lambda: "API token" in log.read_text() or proc.poll() is not None, 90, "start-up")
        printed = log.read_text()
        assert proc.poll() is None, printed
        token = (tmp_path / "state" / "token").read_text().strip()
        assert token in printed
        for name, port in ports.items():
            assert f"http://127.0.0.1:{port}" in printed
            assert _ready(port), name
        for infra_port in (kafka_port, redis_port, read_model_port):
            assert f"127.0.0.1:{infra_port}" in printed

        _invite_accept_and_see_degree_one(ports, token)
        _cli_rebuild_keeps_the_answers(ports, tmp_path / "state", env)

        victim = _service_pid(ports["invitation"])
        assert victim is not None
        workers = child_pids(victim)
        assert len(workers) >= default_workers("invitation") > 1  # (and its resource tracker)
        # kill -9 of the master: its workers are left behind until the supervisor sees it.
        os.kill(victim, signal.SIGKILL)
        # Up again under a new master (its old workers may answer until the supervisor sees it).
        _wait(
            lambda: (
                _service_pid(ports["invitation"]) not in (None, victim)
                and _ready(ports["invitation"])
            ),
            60,
            "restart after kill -9",
        )
        # The old workers are gone (they held the port the new master binds).
        assert not [pid for pid in workers if _running(pid)]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()
    for port in [*ports.values(), kafka_port, redis_port, read_model_port]:
        assert port_is_free(port), f"port {port} still in use after Ctrl-C"


def _invite_accept_and_see_degree_one(ports: dict[str, int], token: str) -> None:
    """The whole choreography across four processes, with the token `make run` printed."""
    urls = {name: _base(port) for name, port in ports.items()}
    with BlockingClient(urls, token) as api:
        for member, industry in (("ada", "Technology"), ("grace", "Technology")):
            api.register(member, member, industry)
        with pytest.raises(Unauthorized):
            api.request("invitation", "POST", "/invitations", json={"to": "grace"}, token="")
        # At once: the invitation service knows a member its 201 was given for.
        sent = api.invite("ada", "grace")
        api.accept("grace", sent.invitation_id)
        assert api.degree("ada", "grace").degree == 1  # read after the accept
        summary = api.summary("grace")
        assert (summary.connections, summary.followers, summary.following) == (1, 1, 1)
        assert api.industries().industries[0].average_connections == 1.0


def _cli_rebuild_keeps_the_answers(ports: dict[str, int], state: Path, env: dict[str, str]) -> None:
    url = _base(ports["projection"])
    cli = [sys.executable, "-m", "rapport.cli", "projection"]
    rebuilt = subprocess.run(
        [*cli, "rebuild", "--url", url, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "rebuilt into version 2" in rebuilt.stdout
    status = subprocess.run(
        [*cli, "status", "--url", url, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0 and "projection v2" in status.stdout, status.stdout
    with BlockingClient({"projection": url}, (state / "token").read_text().strip()) as api:
        assert api.degree("ada", "grace").degree == 1


class LocalStack:
    """`rapport run` as a user starts it, on free ports, with its state directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.ports = {name: free_port() for name in SERVICES}
        self.kafka_port, self.redis_port = free_port(), free_port()
        self.read_model_port = free_port()
        self.state = tmp_path / "state"
        self.tmp = tmp_path
        self.env = _own_stack_env()
        self.env.update({f"RAPPORT_{n.upper()}_PORT": str(p) for n, p in self.ports.items()})
        self.env["COLUMNS"] = "200"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def log(self) -> Path:
        return self.tmp / f"run{self.runs}.out"

    def start(self) -> None:
        self.runs += 1
        argv = [sys.executable, "-m", "rapport.cli", "run", "--kafka-port", str(self.kafka_port)]
        argv += ["--redis-port", str(self.redis_port), "--state-dir", str(self.state)]
        argv += ["--read-model-redis-port", str(self.read_model_port)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        _wait(
            lambda: "API token" in self.log.read_text() or self.proc.poll() is not None,
            90,
            "start-up",
        )
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        assert self.proc.returncode == 0, self.log.read_text()

    def url(self, service: str) -> str:
        return _base(self.ports[service])

    def token(self, role: str = "token") -> str:
        return (self.state / role).read_text().strip()

    def api(self, role: str = "token") -> BlockingClient:
        return BlockingClient({n: self.url(n) for n in SERVICES}, self.token(role), timeout=30)

    def connect(self, a: str, b: str) -> str:
        with self.api() as api:
            sent = api.invite(a, b)
            return str(api.accept(b, sent.invitation_id).event_id)

    def register(self, member: str, industry: str) -> None:
        with self.api() as api:
            api.register(member, member, industry)

    def figures(self, after: str | None = None, wait_s: float = 10.0) -> dict:
        """What a user and an operator see: summaries, degrees, industries, dashboard; once
        the event `after` is in the read model (waiting up to `wait_s`)."""
        with self.api() as api, self.api("ops-token") as ops:
            if after is not None:
                _wait(lambda: _applied(api, "ada", after), wait_s, f"event {after} applied")
            seen: dict = {
                m: api.summary(m, after=after).model_dump() for m in ("ada", "grace", "alan")
            }
            seen["degree"] = api.degree("ada", "alan").model_dump()
            seen["industries"] = api.industries().model_dump()
            board = ops.dashboard_data()
        seen["dashboard"] = {"totals": board["totals"], "industries": board["industries"]}
        return seen

    def diagnostics(self, lines: int = 200) -> str:
        """The tail of each log of the stack, with every service's asyncio tasks (where each
        waits, shared.observability.dump_tasks_on_signal): what a failed run leaves to read."""
        logs = [self.log, *sorted((self.state / "logs").glob("*.log"))]
        services = [self.state / "logs" / f"{name}.log" for name in self.ports]
        sizes = {path: path.stat().st_size for path in services if path.exists()}
        for port in self.ports.values():
            pattern = f"rapport.serve .* --port {port} "
            subprocess.run(["pkill", "-USR1", "-f", pattern], check=False)

        def dumped() -> bool:
            return all(b"task " in path.read_bytes()[size:] for path, size in sizes.items())

        with contextlib.suppress(AssertionError):  # a process that is gone dumps nothing
            _wait(dumped, 5, "the services' task dumps")
        return "\n".join(
            f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-lines:])
            for path in logs
            if path.exists()
        )


def _applied(api: BlockingClient, member: str, after: str) -> bool:
    """Whether the projection has applied `after` (each call waits up to the server's limit)."""
    try:
        api.summary(member, after=after)
    except Conflict:
        return False
    return True


@pytest.mark.timeout(300)
def test_the_local_stack_keeps_its_data_across_restarts_and_a_broker_crash(
    tmp_path: Path,
) -> None:
    stack = LocalStack(tmp_path)
    stack.start()
    try:
        for member, industry in (
            ("ada", "Technology"),
            ("grace", "Technology"),
            ("alan", "Mathematics"),
        ):
            stack.register(member, industry)
        stack.connect("ada", "grace")
        last = stack.connect("alan", "grace")
        before = stack.figures(after=last)
        assert before["degree"]["degree"] == 2 and before["grace"]["connections"] == 2
        # One partition per worker of the service with the most (the connection service's
        # two), no more: the broker pays for each partition on every fetch.
        workers = {name: default_workers(name) for name in SERVICES}
        partitions = max(workers.values())
        assert _partition_counts(stack.kafka_port) == dict.fromkeys(ALL_TOPICS, partitions)
        # Every worker of every service is up: two of the connection service by default.
        with stack.api("ops-token") as ops:

            def ready() -> Counter[str]:
                instances = ops.dashboard_data()["instances"]
                return Counter(i["service"] for i in instances if i["state"] == "ready")

            _wait(lambda: ready() == workers, 30, f"{workers} ready workers")
        stack.stop()
        # The read models' Redis saved a snapshot as it stopped. Without it (a crash before
        # the first one), the projection rebuilds them from the log's copy on the next start.
        snapshot = stack.state / "read-models" / "dump.rdb"
        assert snapshot.exists()
        snapshot.unlink()

        # `make run` again: everything is still there, the dashboard agrees.
        stack.start()
        assert stack.figures(after=last, wait_s=60) == before

        # kill -9 of the broker: the supervisor restarts and refills it.
        broker = _broker_pid(stack.kafka_port)
        os.kill(broker, signal.SIGKILL)
        _wait(lambda: "broker back" in stack.log.read_text(), 60, "the broker's restart")
        assert _broker_pid(stack.kafka_port) != broker
        # Refilled with the counts the log was written with: each key in its partition.
        assert _partition_counts(stack.kafka_port) == dict.fromkeys(ALL_TOPICS, partitions)
        stack.register("ken", "Mathematics")
        # Consumers rejoin their groups on the new broker first: the first event through
        # both hops may take longer than a read's wait on a loaded machine.
        after = stack.figures(after=stack.connect("ken", "ada"), wait_s=60)
        with stack.api("ops-token") as ops:
            status = ops.status().model_dump()
        # Nothing lost, nothing counted twice: the read models equal a clean rebuild.
        agrees_with_a_rebuild(
            {name: stack.url(name) for name in SERVICES},
            f"127.0.0.1:{stack.kafka_port}",
            f"redis://127.0.0.1:{stack.read_model_port}/0",
            ops=stack.token("ops-token"),
            admin=stack.token("admin-token"),
        )
    except BaseException:
        print(stack.diagnostics())  # pytest shows it with the failure
        raise
    finally:
        if stack.proc is not None and stack.proc.poll() is None:
            stack.stop()
    # The new connection counted once, nothing before it lost or counted twice.
    assert after["ada"]["connections"] == before["ada"]["connections"] + 1
    assert after["grace"] == before["grace"] and after["alan"] == before["alan"]
    assert after["dashboard"]["totals"]["connections"] == (
        before["dashboard"]["totals"]["connections"] + 1
    )
    assert status["log_resets"] == {} and status["total_lag"] == 0


def _partition_counts(port: int) -> dict[str, int]:
    async def counts() -> dict[str, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=f"127.0.0.1:{port}")
        await consumer.start()
        try:
            await consumer.topics()  # the broker's metadata
            return {t: len(consumer.partitions_for_topic(t) or ()) for t in ALL_TOPICS}
        finally:
            await consumer.stop()

    return asyncio.run(counts())


def _broker_pid(port: int) -> int:
    out = subprocess.run(
        ["pgrep", "-f", f"tansu.* --listener-url tcp://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[0])
