"""The dashboard's charts over time: one sample every few seconds, the last 15 minutes kept.

A sample reads what every replica can read alike: the topics' end offsets (events/s per
topic, records per DLQ topic) and the heartbeats every service process writes
(shared/instances.py: its request counters, latency histogram, outbox backlog, consumer lag).
Rates are the growth of each process's own counters between two samples, summed per service,
so a restarted process (counters from zero) or a new worker never shows as a negative rate.
The history lives in this replica's memory: a restarted projection starts its charts afresh.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from shared.instances import STATUS_CLASSES

WINDOW_S = 900.0


def _by_topic(ends: dict[str, int]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for tp, offset in ends.items():
        topic = tp.rsplit(":", 1)[0]
        totals[topic] = totals.get(topic, 0) + offset
    return totals


def _grown(now: float, before: float | None) -> float:
    """A counter's growth; a counter below its last value was restarted from zero."""
    if before is None or now < before:
        return now
    return now - before


def quantile(q: float, buckets: dict[str, float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative bucket counts keyed by `le`."""
    ordered = sorted((float(le), n) for le, n in buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_le, lower_n = 0.0, 0.0
    for le, n in ordered:
        if n >= rank:
            if math.isinf(le):
                return lower_le  # above the last finite bucket: its bound is what we know
            if n == lower_n:
                return le
            return lower_le + (le - lower_le) * (rank - lower_n) / (n - lower_n)
        lower_le, lower_n = le, n
    return lower_le


class History:
    def __init__(self, interval_s: float, window_s: float = WINDOW_S) -> None:
        self.interval_s = interval_s
        self.points: deque[dict[str, Any]] = deque(maxlen=int(window_s / interval_s) + 1)
        self._last: tuple[float, dict[str, int], dict[str, dict[str, Any]]] | None = None

    def observe(
        self,
        t: float,
        ends: dict[str, int],
        dlq_ends: dict[str, int],
        instances: list[dict[str, Any]],
    ) -> None:
        topics = _by_topic(ends)
        live = [i for i in instances if i.get("state") in ("ready", "not_ready")]
        metrics = {
            i["id"]: {**i["metrics"], "service": i["service"], "started_at": i["started_at"]}
            for i in live
        }
        point: dict[str, Any] = {
            "t": round(t, 3),
            "dlq_records": _by_topic(dlq_ends),
            "outbox_backlog": self._backlog(live),
            "lag": self._lag(live),
        }
        if self._last is not None:
            last_t, last_topics, last_metrics = self._last
            dt = max(t - last_t, 1e-6)
            point["events_per_s"] = {
                topic: round(max(total - last_topics.get(topic, 0), 0) / dt, 2)
                for topic, total in topics.items()
            }
            point |= self._http(metrics, last_metrics, last_t, dt)
        self._last = (t, topics, metrics)
        self.points.append(point)

    @staticmethod
    def _backlog(live: list[dict[str, Any]]) -> dict[str, float]:
        # One outbox stream per service, which each of its processes reads: the largest.
        backlog: dict[str, float] = {}
        for i in live:
            backlog[i["service"]] = max(backlog.get(i["service"], 0), i["metrics"]["backlog"])
        return backlog

    @staticmethod
    def _lag(live: list[dict[str, Any]]) -> dict[str, float]:
        # A partition is consumed by one process of a group at a time; a process that lost
        # it may still show its last figure, so take the largest per partition, then sum.
        by_partition: dict[str, dict[str, float]] = {}
        for i in live:
            for consumer, partitions in i["metrics"]["lag"].items():
                mine = by_partition.setdefault(consumer, {})
                for tp, n in partitions.items():
                    mine[tp] = max(mine.get(tp, 0), n)
        return {c: sum(p.values()) for c, p in sorted(by_partition.items())}

    @staticmethod
    def _http(
        metrics: dict[str, dict[str, Any]],
        last: dict[str, dict[str, Any]],
        last_t: float,
        dt: float,
    ) -> dict[str, Any]:
        counts: dict[str, dict[str, float]] = {}
        buckets: dict[str, dict[str, float]] = {}
        services = {m["service"] for m in metrics.values()}
        for instance, m in metrics.items():
            before = last.get(instance)
            if before is None and m["started_at"] < last_t:
                continue  # a process first heard of now, started earlier: no baseline yet
            service = m["service"]
            was_http = before["http"] if before else {}
            was_latency = before["latency"] if before else {}
            mine = counts.setdefault(service, dict.fromkeys(STATUS_CLASSES, 0.0))
            for kind in STATUS_CLASSES:
                mine[kind] += _grown(m["http"][kind], was_http.get(kind))
            hist = buckets.setdefault(service, {})
            for le, n in m["latency"].items():
                hist[le] = hist.get(le, 0.0) + _grown(n, was_latency.get(le))
        p99_ms: dict[str, float | None] = {}
        for service in sorted(services):
            q = quantile(0.99, buckets.get(service, {}))
            p99_ms[service] = None if q is None else round(q * 1000, 2)
        return {
            "requests_per_s": {
                s: round(sum(counts.get(s, {}).values()) / dt, 2) for s in sorted(services)
            },
            "p99_ms": p99_ms,
            "errors_per_s": {
                f"{s} {kind}": round(counts.get(s, {}).get(kind, 0.0) / dt, 2)
                for s in sorted(services)
                for kind in ("4xx", "5xx")
            },
        }

    def columns(self) -> dict[str, Any]:
        """The charts' data as columns (uPlot's shape): times, then per chart each series'
        values at those times (null where a series had none)."""
        points = list(self.points)
        charts = (
            "events_per_s",
            "lag",
            "requests_per_s",
            "p99_ms",
            "errors_per_s",
            "dlq_records",
            "outbox_backlog",
        )
        out: dict[str, Any] = {"interval_s": self.interval_s, "t": [p["t"] for p in points]}
        for chart in charts:
            names = sorted({name for p in points for name in p.get(chart, {})})
            out[chart] = {name: [p.get(chart, {}).get(name) for p in points] for name in names}
        return out
