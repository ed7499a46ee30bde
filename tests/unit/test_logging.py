"""An outage retried many times a second writes one log line per window, not a flood."""

from __future__ import annotations

import logging

import pytest

from shared.observability import RepeatFilter


def test_a_repeated_warning_is_logged_once_per_window_with_a_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("shared.observability.time.monotonic", lambda: clock[0])
    handler = logging.Handler()
    lines: list[str] = []
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    handler.addFilter(RepeatFilter(window_s=10))
    log = logging.getLogger("test.repeat")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        for attempt in range(140):  # a second of retries against a broker that is down
            log.error("broker unavailable (%r); retrying", f"attempt {attempt}")
        log.info("an info line is never held back")
        log.warning("another message is its own")
        clock[0] += 11
        log.error("broker unavailable (%r); retrying", "attempt 140")
    finally:
        log.removeHandler(handler)
    assert lines == [
        "broker unavailable ('attempt 0'); retrying",
        "an info line is never held back",
        "another message is its own",
        "broker unavailable ('attempt 140'); retrying [139 more like this in the last 10s]",
    ]


async def test_sigusr1_writes_where_each_task_waits(capfd: pytest.CaptureFixture[str]) -> None:
    import asyncio
    import os
    import signal

    from shared.observability import dump_tasks_on_signal

    started, release = asyncio.Event(), asyncio.Event()

    async def waits_for_the_coordinator() -> None:
        started.set()  # the task runs on to the await below before this test resumes
        await release.wait()

    async def consumer_loop() -> None:
        await waits_for_the_coordinator()

    task = asyncio.create_task(consumer_loop(), name="consumer")
    await started.wait()
    dump_tasks_on_signal()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        err = ""
        async with asyncio.timeout(5):
            while "task consumer:" not in err:  # the loop runs the handler on a later turn
                await asyncio.sleep(0)
                err += capfd.readouterr().err
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
        release.set()
        await task
    dumped = err[err.index("task consumer:") :]
    assert "consumer_loop" in dumped and "waits_for_the_coordinator" in dumped
