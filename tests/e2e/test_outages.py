"""Outages of the real dependencies, on a stack of its own laid out as `make run` lays it
(the read models on a redis-server of their own): Redis paused (SIGSTOP) or answering BUSY,
the read models' Redis alone paused, the broker paused. Every route answers within 2 s,
never 500 (503 with Retry-After, or what it can answer without the dependency), and
everything recovers without a restart once the dependency is back: no event dead-lettered,
and the read models equal a clean rebuild from the log."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from rapport.authorization import ROWS, Row
from rapport.client import BlockingClient, Conflict, Unavailable
from rapport.localstack import EMBEDDED_BROKER_TUNING, Infra, embedded_infra, free_port
from rapport.supervisor import SERVICES, ServiceProcess, Supervisor
from tests.e2e.driver import TOKENS, Driver, World, agrees_with_a_rebuild, request_row
from tests.helpers import TOKEN, TOKEN_ENV, poll_until, random_id

pytestmark = pytest.mark.e2e

DEADLINE_S = 2.0


class OutageStack:
    def __init__(self, infra: Infra, urls: dict[str, str]) -> None:
        self.infra = infra
        self.urls = urls

    @contextmanager
    def paused(self, *which: str) -> Iterator[None]:
        parts = {
            "redis": self.infra.redis,
            "read models": self.infra.read_models,
            "kafka": self.infra.kafka,
        }
        pids = []
        for name in which:
            part = parts[name]
            assert part is not None and part.child.proc is not None
            pids.append(part.child.proc.pid)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

    @property
    def redis_urls(self) -> list[str]:
        return [self.infra.redis_url, self.infra.read_models_url]


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OutageStack]:
    state = Path(tmp_path_factory.mktemp("outages"))
    with embedded_infra(state, use_env=False, read_models=True) as infra:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
            "REDIS_URL": infra.redis_url,
            "READ_MODEL_REDIS_URL": infra.read_models_url,
            **TOKEN_ENV,
            **EMBEDDED_BROKER_TUNING,
            "RAPPORT_LOG_LEVEL": "warning",
        }
        services = [ServiceProcess(name, free_port(), env, state / "logs") for name in SERVICES]
        supervisor = Supervisor(services)
        try:
            supervisor.start_all(timeout_s=90)
            yield OutageStack(infra, {s.name: s.url for s in services})
        finally:
            supervisor.stop()


def _caller(row: Row) -> str:
    """The caller for whom the row normally succeeds."""
    return next(c for c in ("self", "admin") if row.expect[c] < 300)


Worlds = dict[tuple[str, str, str], World]
Result = tuple[Row, int, float, str]


def _every_route(stack: OutageStack, world: Worlds) -> list[Result]:
    """Each route once, as its usual caller: (row, status, seconds, Retry-After)."""

    with BlockingClient(stack.urls, TOKEN, timeout=10) as api:

        def one(row: Row) -> Result:
            started = time.monotonic()
            try:
                response = request_row(Driver(api), row, world[row.route], _caller(row))
            except Unavailable:  # no answer at all within the client's timeout
                return row, 0, time.monotonic() - started, ""
            took = time.monotonic() - started
            return row, response.status_code, took, response.headers.get("retry-after", "")

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, ROWS))


def _worlds(stack: OutageStack) -> Worlds:
    """A world per route, made while everything is up."""
    with BlockingClient(stack.urls, TOKEN, timeout=15) as api:
        driver = Driver(api)
        return {row.route: driver.world(row) for row in ROWS}


def _recovered(stack: OutageStack) -> None:
    """Every service ready, and a write reaches the read model, without any restart."""
    with BlockingClient(stack.urls, TOKEN, timeout=15) as api:
        for service in stack.urls:
            poll_until(lambda s=service: api.ready(s), timeout=30, what=f"{service} ready")
        a, b = f"ra{random_id(8)}", f"rb{random_id(8)}"
        api.register(a, a, "Technology")
        api.register(b, b, "Technology")
        sent = api.invite(a, b)
        api.accept(b, sent.invitation_id)

        def connected() -> bool:  # after the accept (the client's writes)
            try:
                return api.degree(a, b, wait_ms=10_000).degree == 1
            except Conflict:  # not applied within one read's wait, which the server caps
                return False

        # Consumers rejoin their groups after a paused broker: a CI run once took more than
        # one read's 10 s cap to get the accept through, so the bound is several reads.
        poll_until(connected, timeout=30, what="the accept in the read model")
    agrees_with_a_rebuild(
        stack.urls,
        stack.infra.kafka_bootstrap,
        stack.infra.read_models_url,
        ops=TOKENS["ops"] or "",
        admin=TOKENS["admin"] or "",
    )


def _assert_fast_and_no_500(results: list[Result]) -> None:
    bad = [
        f"{row.method} {row.path}: {status} in {took:.2f}s (Retry-After {retry or '-'})"
        for row, status, took, retry in results
        if status in (0, 500) or took > DEADLINE_S or (status == 503 and not retry)
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.timeout(240)
def test_redis_paused_every_route_answers_503_fast_then_recovers(outage_stack: OutageStack) -> None:
    worlds = _worlds(outage_stack)
    with outage_stack.paused("redis", "read models"):
        results = _every_route(outage_stack, worlds)
        with BlockingClient(outage_stack.urls, TOKEN, timeout=10) as api:
            started = time.monotonic()
            ready = api.request("invitation", "GET", "/readyz", check=False)
            assert ready.status_code == 503 and time.monotonic() - started < DEADLINE_S
    _assert_fast_and_no_500(results)
    answered = {row.path: status for row, status, _, _ in results}
    # What needs Redis said so; what does not (liveness, metrics, the page) still answered.
    assert answered["/members/{member_id}/summary"] == 503
    assert answered["/invitations"] == 503
    assert answered["/healthz"] == answered["/dashboard"] == 200
    _recovered(outage_stack)


@pytest.mark.timeout(240)
def test_read_models_redis_paused_reads_answer_503_fast_and_writes_go_on(
    outage_stack: OutageStack,
) -> None:
    worlds = _worlds(outage_stack)
    with outage_stack.paused("read models"):
        results = _every_route(outage_stack, worlds)
        with BlockingClient(outage_stack.urls, TOKEN, timeout=10) as api:
            ready = api.request("projection", "GET", "/readyz", check=False)
            writer_ready = api.request("invitation", "GET", "/readyz", check=False)
    _assert_fast_and_no_500(results)
    answered = {row.path: status for row, status, _, _ in results}
    # Reads need the read models; writes only the write side's Redis.
    assert answered["/members/{member_id}/summary"] == 503
    assert answered["/invitations"] == 201
    assert ready.status_code == 503 and writer_ready.status_code == 200
    _recovered(outage_stack)


@pytest.mark.timeout(240)
def test_broker_paused_writes_and_reads_go_on_then_events_flow_again(
    outage_stack: OutageStack,
) -> None:
    worlds = _worlds(outage_stack)
    with BlockingClient(outage_stack.urls, TOKENS["ops"], timeout=10) as api:
        before = api.status().model_dump()
        with outage_stack.paused("kafka"):
            results = _every_route(outage_stack, worlds)
            status = api.request("projection", "GET", "/projection/status", check=False)
            ready = api.request("projection", "GET", "/readyz", check=False)
    _assert_fast_and_no_500(results)
    answered = {row.path: status for row, status, _, _ in results}
    # Writes only need Redis (the outbox relays later); reads only need Redis.
    assert answered["/invitations"] == 201
    assert answered["/members/{member_id}/summary"] == 200
    # Status answers with the end offsets last read, and says when they were read.
    assert status.status_code == 200 and status.json()["ends_as_of"] == before["ends_as_of"]
    assert status.json()["lag"].keys() == before["lag"].keys()
    assert ready.status_code == 503
    _recovered(outage_stack)


@pytest.mark.timeout(240)
def test_redis_busy_with_a_script_answers_503_then_recovers(outage_stack: OutageStack) -> None:
    worlds = _worlds(outage_stack)
    admins, runners = [], []
    for url in outage_stack.redis_urls:  # both: the write side's and the read models'
        admin = redis.Redis.from_url(url)
        admin.config_set("busy-reply-threshold", 100)
        admins.append(admin)
        runners.append(
            threading.Thread(
                target=lambda url=url: _swallow(
                    lambda: redis.Redis.from_url(url).eval("while true do end", 0)
                ),
                daemon=True,
            )
        )
    for runner in runners:
        runner.start()
    try:
        for admin in admins:
            poll_until(lambda admin=admin: _busy(admin), timeout=10, what="Redis answering BUSY")
        results = _every_route(outage_stack, worlds)
    finally:
        for admin in admins:
            poll_until(lambda admin=admin: _kill_script(admin), timeout=10, what="script killed")
        for runner in runners:
            runner.join(timeout=10)
    _assert_fast_and_no_500(results)
    answered = {row.path: status for row, status, _, _ in results}
    assert answered["/invitations"] == 503
    assert answered["/members/{member_id}/summary"] == 503
    _recovered(outage_stack)


def _swallow(call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except redis.RedisError:
        pass  # killed on purpose


def _busy(client: redis.Redis) -> bool:
    try:
        client.ping()
    except redis.exceptions.BusyLoadingError:
        return False
    except redis.ResponseError as exc:
        return str(exc).startswith("BUSY")
    return False


def _kill_script(client: redis.Redis) -> bool:
    try:
        client.script_kill()
    except redis.ResponseError as exc:
        return "NOTBUSY" in str(exc)
    return True
