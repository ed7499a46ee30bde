"""A service's worker processes share its connections: each listens on a socket of its own
(rapport.serve), so a burst of new connections spreads over them instead of landing on the
worker that woke first (with one shared socket, wrk's 32 went 32/0 in one run of five)."""

from __future__ import annotations

import os
import signal
import socket
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from rapport.localstack import free_port
from rapport.supervisor import ServiceProcess
from tests.e2e.conftest import process_env
from tests.helpers import Infra, child_pids, poll_until

CONNECTIONS = 32


def _owners(port: int, pids: set[int], state: str = "01") -> Counter[int]:
    """How many sockets on local `port` in `state` (01: established, 0A: listening) each of
    `pids` holds (from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == state:
            inodes.add(f"socket:[{fields[9]}]")
    owners: Counter[int] = Counter()
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        owners[pid] += sum(link in inodes for link in links)
    return owners


@contextmanager
def _connected(port: int) -> Iterator[list[bytes]]:
    """CONNECTIONS connections opened at once, each with one request answered (so a worker
    has accepted it); yields the status lines, keeps them open meanwhile."""
    with ExitStack() as stack:
        socks = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            for _ in range(CONNECTIONS)
        ]
        for sock in socks:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: rapport\r\n\r\n")
        yield [sock.recv(65536).split(b"\r\n", 1)[0] for sock in socks]


@pytest.fixture
def two_workers(infra: Infra, tmp_path: Path) -> Iterator[ServiceProcess]:
    env = process_env(infra, "w")
    service = ServiceProcess("engagement", free_port(), env, tmp_path, workers=2)
    service.start()
    try:
        poll_until(service.ready, timeout=60, what="the engagement service")
        yield service
    finally:
        if service.child:
            service.child.stop()


def _listening_workers(service: ServiceProcess, besides: int | None = None) -> set[int]:
    """The service's two workers, once each listens on the port (the first one up answers
    /readyz while the other may still be starting); none of them `besides`."""

    def listening() -> set[int] | None:
        assert service.child and service.child.proc
        started = set(child_pids(service.child.proc.pid))
        # Only workers listen (not multiprocessing's resource tracker).
        owners = _owners(service.port, started, state="0A")
        workers = {p for p in started if owners[p]}
        return workers if len(workers) == 2 and besides not in workers else None

    return poll_until(listening, timeout=30, what="2 listening workers")


def _spread(service: ServiceProcess, workers: set[int]) -> Counter[int]:
    with _connected(service.port) as answers:
        assert answers == [b"HTTP/1.1 200 OK"] * CONNECTIONS
        return _owners(service.port, workers)


def test_connections_opened_at_once_spread_over_the_workers(
    two_workers: ServiceProcess,
) -> None:
    workers = _listening_workers(two_workers)
    owners = _spread(two_workers, workers)
    assert sum(owners.values()) == CONNECTIONS
    # By address hash, each worker gets about half: fewer than 4 of 32 is a 1-in-10^6 draw.
    assert set(owners) == workers and min(owners.values()) >= 4, owners


def test_a_worker_that_dies_is_replaced_by_one_that_listens_too(
    two_workers: ServiceProcess,
) -> None:
    killed = min(_listening_workers(two_workers))
    os.kill(killed, signal.SIGKILL)
    after = _listening_workers(two_workers, besides=killed)
    poll_until(two_workers.ready, what="the service answering again")
    owners = poll_until(
        lambda: len(o := _spread(two_workers, after)) == 2 and o,
        timeout=30,
        what="connections on both workers",
    )
    assert min(owners.values()) >= 4, owners
