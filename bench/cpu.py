"""CPU time of each process of the stack over a load run, read from /proc: where a write's
cost goes across the services, Redis and the broker (a two-core machine is saturated by the
whole stack long before one service's process is)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """A process's parent and its CPU seconds (user + system) so far; None once it is gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state, ppid, ... utime (14th field of the line), stime (15th).
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass(frozen=True)
class StackCpu:
    """The processes of the stack by role: each role's root processes (a service's uvicorn,
    found with its worker processes) or the servers whose command line names a port."""

    roots: Mapping[str, int]
    ports: Mapping[str, int]

    def processes(self) -> dict[str, set[int]]:
        pids = [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]
        parent = {pid: st[0] for pid in pids if (st := _stat(pid)) is not None}
        found: dict[str, set[int]] = {role: {root} for role, root in self.roots.items()}
        for pid in parent:
            up = parent.get(pid)
            for role, root in self.roots.items():
                if up == root:
                    found[role].add(pid)
            line = _cmdline(pid) if self.ports else ""
            for role, port in self.ports.items():
                # redis-server shows `host:port`; the broker `--listener-url tcp://host:port`.
                if f":{port} " in f"{line} ":
                    found.setdefault(role, set()).add(pid)
        return found

    def seconds(self, processes: Mapping[str, set[int]]) -> dict[str, float]:
        return {
            role: sum(st[1] for pid in pids if (st := _stat(pid)) is not None)
            for role, pids in processes.items()
        }


def port_of(url: str) -> int:
    """The port of `redis://host:port/db` or of a bootstrap list's first `host:port`: how
    StackCpu finds a server by its command line."""
    return int(url.split(",")[0].rsplit(":", 1)[1].split("/")[0])


def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {role: max(after.get(role, 0.0) - before[role], 0.0) for role in before}


def busy_cores(stack: StackCpu, watched: Mapping[str, set[int]], seconds: float) -> float:
    """How many cores the watched processes used together over the next `seconds`."""
    before = stack.seconds(watched)
    time.sleep(seconds)  # the measuring window itself
    return sum(spent(before, stack.seconds(watched)).values()) / seconds


def settle(stack: StackCpu, idle_cores: float, timeout_s: float = 20.0) -> float:
    """Wait until the stack's processes together use no more than `idle_cores` over a second
    (the consumers worked off what the run before left them), or `timeout_s` passed; the
    cores they used over the last second. The run that follows then measures its own work,
    and a reference run beside it does not share the machine with another run's leftovers."""
    watched = stack.processes()
    deadline = time.monotonic() + timeout_s
    while True:
        busy = busy_cores(stack, watched, 1.0)
        if busy <= idle_cores or time.monotonic() >= deadline:
            return busy
