"""The dashboard's charts over time (services/projection/history.py): rates from successive
heartbeats of every process, summed per service; a restarted process or a new worker never
makes a negative or doubled rate; p99 as Prometheus computes it from the histogram."""

from __future__ import annotations

import pytest

from services.projection.history import History, quantile


def beat(
    service: str,
    pid: int,
    ok: float,
    errors5: float = 0.0,
    started_at: float = 0.0,
    latency: dict[str, float] | None = None,
    backlog: float = 0.0,
    lag: dict[str, dict[str, float]] | None = None,
    state: str = "ready",
) -> dict:
    return {
        "id": f"{service}/h:{pid}",
        "service": service,
        "instance": f"h:{pid}",
        "state": state,
        "started_at": started_at,
        "metrics": {
            "http": {"2xx": ok, "3xx": 0.0, "4xx": 0.0, "5xx": errors5},
            "latency": latency or {},
            "backlog": backlog,
            "lag": lag or {},
        },
    }


def test_rates_are_each_process_growth_summed_per_service() -> None:
    history = History(interval_s=5)
    history.observe(100, {"t:0": 10}, {}, [beat("invitation", 1, 100), beat("invitation", 2, 50)])
    history.observe(
        105,
        {"t:0": 60},
        {"t.dlq:0": 2},
        [beat("invitation", 1, 150, errors5=5), beat("invitation", 2, 70)],
    )
    charts = history.columns()
    assert charts["t"] == [100, 105]
    assert charts["events_per_s"] == {"t": [None, 10.0]}
    assert charts["requests_per_s"] == {"invitation": [None, 15.0]}  # (50 + 5 + 20) / 5 s
    assert charts["errors_per_s"]["invitation 5xx"] == [None, 1.0]
    assert charts["errors_per_s"]["invitation 4xx"] == [None, 0.0]
    assert charts["dlq_records"] == {"t.dlq": [None, 2]}


def test_a_restarted_process_and_a_new_worker_count_from_zero_never_negative() -> None:
    history = History(interval_s=1)
    history.observe(10, {}, {}, [beat("connection", 1, 1000, started_at=0)])
    # pid 1 restarted (counters from zero), pid 2 started since the last sample, pid 3 was
    # running before but is heard of for the first time (no baseline: left out this time).
    history.observe(
        12,
        {},
        {},
        [
            beat("connection", 1, 30, started_at=0),
            beat("connection", 2, 10, started_at=11),
            beat("connection", 3, 5000, started_at=5),
        ],
    )
    assert history.columns()["requests_per_s"] == {"connection": [None, 20.0]}  # (30 + 10) / 2


def test_down_processes_leave_the_rates_and_backlog_is_one_stream_per_service() -> None:
    history = History(interval_s=1)
    lag = {"projection": {"t:0": 7, "t:1": 3}}
    stale = {"projection": {"t:0": 50}}  # a former owner's last figure
    history.observe(
        1,
        {},
        {},
        [
            beat("projection", 1, 0, backlog=4, lag=lag),
            beat("projection", 2, 0, backlog=4, lag=stale),
            beat("projection", 3, 0, backlog=99, state="down"),
        ],
    )
    charts = history.columns()
    assert charts["outbox_backlog"] == {"projection": [4]}
    assert charts["lag"] == {"projection": [53]}  # max per partition (50, 3), then summed


def test_p99_interpolates_within_the_bucket_like_prometheus() -> None:
    buckets = {"0.005": 50.0, "0.01": 90.0, "0.025": 100.0, "+Inf": 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.005)
    assert quantile(0.99, buckets) == pytest.approx(0.01 + 0.015 * 0.9)
    assert quantile(0.99, {"0.01": 0.0, "+Inf": 0.0}) is None
    assert quantile(0.99, {"0.01": 1.0, "+Inf": 10.0}) == 0.01  # beyond the last bound


def test_p99_per_service_from_the_histograms_growth() -> None:
    history = History(interval_s=1)
    before = {"0.01": 100.0, "0.1": 100.0, "+Inf": 100.0}
    after = {"0.01": 100.0, "0.1": 200.0, "+Inf": 200.0}  # the last 100 all 10-100 ms
    history.observe(1, {}, {}, [beat("engagement", 1, 100, latency=before)])
    history.observe(2, {}, {}, [beat("engagement", 1, 200, latency=after)])
    assert history.columns()["p99_ms"]["engagement"][1] == pytest.approx(99.1)


def test_only_the_last_window_is_kept() -> None:
    history = History(interval_s=5, window_s=15)
    for n in range(10):
        history.observe(n * 5, {}, {}, [])
    assert history.columns()["t"] == [30, 35, 40, 45]
