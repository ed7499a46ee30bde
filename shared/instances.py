"""Every service process reports itself: a heartbeat in Redis each second.

The heartbeat (one field per process in the hash `rapport:instances`) carries what the ops
dashboard's health panel and charts need, read from the process itself: readiness and the
failing check, start time and version, outbox backlog, background loops, the last error
logged, and a snapshot of its own request counters, latency histogram and consumer lag.
Processes report themselves, so the dashboard sees every replica and every uvicorn worker
(each has its own counters) without being told where they are. A process that stops beating
shows as down once its last beat is `DOWN_AFTER_S` old; a clean stop says so at once.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import metadata
from typing import Any

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from shared.observability import READY, run_checks

HEARTBEAT_S = 1.0
DOWN_AFTER_S = 3.0  # no beat for this long: down (the dashboard polls every 2 s: red in 5 s)
FORGET_AFTER_S = 600.0  # an instance gone this long leaves the panel
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")


def version() -> str:
    try:
        return metadata.version("rapport")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


class LastError(logging.Handler):
    """Remembers the last ERROR this process logged (message and time), for the panel."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.message = ""
        self.at = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.message = f"{record.name}: {record.getMessage()}"[:300]
            self.at = record.created
        except Exception:  # a handler never raises into the code that logged
            self.handleError(record)


LAST_ERROR = LastError()


def install_last_error() -> None:
    root = logging.getLogger()
    if LAST_ERROR not in root.handlers:
        root.addHandler(LAST_ERROR)


def metrics_snapshot(service: str) -> dict[str, Any]:
    """This process's own counters: requests by status class, the latency histogram (all
    routes together, cumulative by bucket), consumer lag by partition."""
    http = dict.fromkeys(STATUS_CLASSES, 0.0)
    buckets: dict[str, float] = {}
    lag: dict[str, dict[str, float]] = {}
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            labels = sample.labels
            if sample.name == "rapport_http_requests_total" and labels.get("service") == service:
                kind = f"{labels['status'][:1]}xx"
                if kind in http:
                    http[kind] += sample.value
            elif (
                sample.name == "rapport_http_request_seconds_bucket"
                and labels.get("service") == service
            ):
                buckets[labels["le"]] = buckets.get(labels["le"], 0.0) + sample.value
            elif sample.name == "rapport_consumer_lag":
                tp = f"{labels['topic']}:{labels['partition']}"
                lag.setdefault(labels["consumer"], {})[tp] = sample.value
    return {"http": http, "latency": buckets, "lag": lag}


class InstanceReporter:
    """Writes this process's heartbeat; `beat` runs every `HEARTBEAT_S` as a background loop."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        service: str,
        port: int,
        checks: Mapping[str, Callable[[], Awaitable[None]]],
        loops: Callable[[], dict[str, Any]],
        backlog: Callable[[], Awaitable[int]],
    ) -> None:
        self.redis = redis
        self.key = key
        self.service = service
        self.port = port
        self.checks = dict(checks)
        self.loops = loops
        self.backlog = backlog
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.id = f"{service}/{self.instance}"  # one process may run several apps (tests)
        self.started_at = time.time()
        self.version = version()
        install_last_error()

    def payload(self, failed: dict[str, str], state: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "instance": self.instance,
            "port": self.port,
            "version": self.version,
            "started_at": self.started_at,
            "seen_at": time.time(),
            "state": state,
            "failed": failed,
            "loops": self.loops(),
            "last_error": LAST_ERROR.message,
            "last_error_at": LAST_ERROR.at or None,
            "metrics": metrics_snapshot(self.service),
        }

    async def beat(self) -> None:
        failed = await run_checks(self.checks)
        for name in self.checks:
            READY.labels(self.service, name).set(0 if name in failed else 1)
        data = self.payload(failed, "ready" if not failed else "not_ready")
        data["metrics"]["backlog"] = await self.backlog()
        await self.redis.hset(self.key, self.id, json.dumps(data))

    async def stopped(self) -> None:
        """A clean stop: the panel shows it at once rather than after `DOWN_AFTER_S`."""
        await self.redis.hset(self.key, self.id, json.dumps(self.payload({}, "stopped")))


async def read_instances(redis: Redis, key: str, now: float | None = None) -> list[dict[str, Any]]:
    """Every instance heard from lately, with its status: ready, not_ready (a check fails),
    down (no beat for `DOWN_AFTER_S`) or stopped; those gone for long are forgotten."""
    now = time.time() if now is None else now
    raw = await redis.hgetall(key)
    instances, forget = [], []
    for field, value in raw.items():
        try:
            data = json.loads(value)
        except ValueError:
            forget.append(field)
            continue
        age = now - float(data.get("seen_at", 0))
        if age > FORGET_AFTER_S:
            forget.append(field)
            continue
        if data.get("state") != "stopped" and age > DOWN_AFTER_S:
            data["state"] = "down"
        data["seen_ago_s"] = round(max(age, 0.0), 1)
        instances.append(data)
    if forget:
        await redis.hdel(key, *forget)
    return sorted(instances, key=lambda d: (d["service"], d["instance"]))
