"""Runs the four services as child processes: waits for readiness, restarts any that crash;
also the local stack's helpers (the log archiver) and its embedded broker."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rapport.client import is_ready
from rapport.localstack import ChildProcess, Infra, StackError
from shared.settings import SETTINGS_BY_SERVICE

log = logging.getLogger("rapport.supervisor")

SERVICES = tuple(SETTINGS_BY_SERVICE)
# Each service's settings class holds its default port (`RAPPORT_<SERVICE>_PORT` overrides).
DEFAULT_PORTS = {
    name: cls.model_fields["port"].default for name, cls in SETTINGS_BY_SERVICE.items()
}
# Worker processes where a second one pays on two cores: registration (the connection
# service) ran 0.32 -> 0.43 of the bare endpoint with two. Invitations gained nothing while
# the consumers' fetches ate the second core; with busy subscriptions fetching less often
# (shared.kafka.FetchPacing) the invitation process bounds them, and a second one took them
# 0.28 -> 0.31 (four interleaved runs: +17%). Accepts neither gain nor lose (one connection
# worker was measured again with the 100 ms busy hold: accepts 0.22, no gain).
DEFAULT_WORKERS = {"connection": 2, "invitation": 2}


def default_workers(name: str) -> int:
    """Worker processes of a service: `RAPPORT_<SERVICE>_WORKERS`, else DEFAULT_WORKERS (1)."""
    return int(os.environ.get(f"RAPPORT_{name.upper()}_WORKERS", DEFAULT_WORKERS.get(name, 1)))


@dataclass
class ServiceProcess:
    name: str
    port: int
    env: dict[str, str]
    log_dir: Path
    workers: int = 1
    child: ChildProcess | None = None
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        # uvicorn, each worker on a listening socket of its own (rapport.serve says why).
        argv = [
            sys.executable,
            "-m",
            "rapport.serve",
            f"services.{self.name}.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--timeout-graceful-shutdown",
            "10",
            "--workers",
            str(self.workers),
        ]
        # The port in the settings too: the process reports where it listens (heartbeat).
        env = {**os.environ, **self.env, f"RAPPORT_{self.name.upper()}_PORT": str(self.port)}
        self.child = ChildProcess(self.name, argv, self.log_dir / f"{self.name}.log", env=env)
        self.child.start()

    def ready(self) -> bool:
        return is_ready(self.url)


@dataclass
class Supervisor:
    services: list[ServiceProcess]
    restart_backoff_s: float = 1.0
    # Helper processes without an HTTP face (the log archiver): restarted when they die.
    helpers: list[ChildProcess] = field(default_factory=list)
    # Called on every watch tick: the embedded broker's own watch (restart and refill).
    infra: Infra | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start_all(self, timeout_s: float = 60.0) -> None:
        for helper in self.helpers:
            helper.start()
        for svc in self.services:
            svc.start()
        deadline = time.monotonic() + timeout_s
        pending = list(self.services)
        while pending:
            for svc in list(pending):
                if svc.child is not None and not svc.child.alive():
                    raise StackError(f"{svc.name} exited during start-up:\n{svc.child.tail()}")
                if svc.ready():
                    pending.remove(svc)
            if self._stop.is_set():
                return
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise StackError(f"not ready after {timeout_s}s: {names}")
            self._stop.wait(0.2)

    def watch(self) -> None:
        """Block until stopped, restarting any service, helper or the embedded broker whose
        process died (the broker refilled from the log's copy before anything publishes)."""
        while not self._stop.wait(0.5):
            if self.infra is not None and self.infra.broker_died():
                log.warning("the embedded broker exited; restarting it and refilling its log")
                restored = self.infra.recover_broker()
                log.warning("broker back: %d record(s) restored", restored)
            for helper in self.helpers:
                if not self._stop.is_set() and not helper.alive():
                    log.warning("%s exited; restarting", helper.name)
                    helper.start()
            for svc in self.services:
                if self._stop.is_set():
                    return
                if svc.child is not None and not svc.child.alive():
                    svc.restarts += 1
                    log.warning(
                        "%s exited (code %s); restarting (restart #%d)",
                        svc.name,
                        svc.child.proc.returncode if svc.child.proc else "?",
                        svc.restarts,
                    )
                    svc.child.kill_leftovers()  # its workers, if it had several
                    self._stop.wait(min(self.restart_backoff_s * svc.restarts, 10))
                    svc.start()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        for svc in self.services:
            if svc.child is not None and svc.child.proc is not None:
                svc.child.proc.terminate()
        for svc in self.services:
            if svc.child is not None:
                svc.child.stop(timeout=15)
        for helper in self.helpers:
            helper.stop(timeout=15)
