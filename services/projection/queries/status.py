"""The projection's own state: version, positions, lag, DLQ counts, rebuild, and a digest of
the read models' content to compare two versions."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Mapping
from typing import Any

from services.projection.queries.engagement import _ts
from services.projection.store import ReadModelStore, counts

RATE_WINDOW_S = 10.0


class Throughput:
    """Events/s per topic from successive end-offset samples (one per dashboard poll).

    End offsets count what producers wrote, whichever projection replica consumes it, so
    every replica shows the same rates.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, dict[str, int]]] = deque()

    def observe(self, ends: dict[str, int], now: float) -> dict[str, float]:
        totals: dict[str, int] = {}
        for tp, offset in ends.items():
            topic = tp.rsplit(":", 1)[0]
            totals[topic] = totals.get(topic, 0) + offset
        self.samples.append((now, totals))
        # Keep one sample at least `window_s` old as the base of the rate.
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()
        base_t, base = self.samples[0]
        elapsed = now - base_t
        return {
            topic: round((total - base.get(topic, 0)) / elapsed, 1) if elapsed > 0 else 0.0
            for topic, total in sorted(totals.items())
        }


def _canonical(value: Any) -> Any:
    """Numbers to 9 significant digits: float sums may differ in the last bits by order."""
    try:
        return f"{float(value):.9g}"
    except (TypeError, ValueError):
        return value


def lag(ends: Mapping[str, int], positions: Mapping[str, int]) -> dict[str, int]:
    """Records not yet applied per `topic:partition`. Tansu's ListOffsets can answer a little
    behind what was already fetched, so a partition never shows negative lag."""
    return {tp: max(end - positions.get(tp, 0), 0) for tp, end in sorted(ends.items())}


async def status(rm: ReadModelStore) -> dict[str, Any]:
    version = await rm.version()
    ks = rm.keyspace(version)
    async with rm.redis.pipeline(transaction=False) as pipe:  # one round trip
        for key in (ks.stats, rm.rebuild_key, rm.dlq_key, ks.viewer_cache_stats, ks.gaps):
            pipe.hgetall(key)
        pipe.hgetall(ks.resets)
        pipe.hgetall(ks.pos)
        stats, rebuild, dlq, cache, gaps, resets, positions = await pipe.execute()
    last = _ts(stats.get("last_event_ts"))
    cached = counts(cache)
    return {
        "viewer_cache": {
            name: cached.get(name, 0) for name in ("hits", "misses", "builds", "evictions", "bytes")
        },
        "version": version,
        "events_applied": int(stats.get("applied", 0)),
        "last_event_time": last.isoformat() if last else None,
        "positions": counts(positions),
        "gaps": counts(gaps),
        "log_resets": counts(resets),
        "dlq": counts(dlq),
        "rebuild": rebuild or {"state": "idle"},
    }


async def digest(rm: ReadModelStore, version: int | None = None) -> str:
    """A hash of the read model's content (not its bookkeeping), to compare two versions."""
    version = version if version is not None else await rm.version()
    prefix = rm.keyspace(version).prefix
    # Bookkeeping and caches, which differ between a live model and a rebuilt one.
    skip = (
        *(
            "seen{g}",
            "settled{g}",
            "clock{g}",
            "pos{g}",
            "gaps{g}",
            "resets{g}",
            "stats{g}",
            "n2lru{g}",
            "n2stats{g}",
            "sgactive{g}",
            "chain{g}",
            "format{g}",
        ),
        *("sn:", "sg:", "lc:", "cc:", "n2:", "n2m:", "hw:", "iv:", "iver:", "idg:"),
        *("n2b:", "sgbg:"),  # background work's partial sums, between two of its calls
    )
    entries: list[tuple[str, Any]] = []
    async for key in rm.redis.scan_iter(match=prefix + "*", count=1000):
        name = str(key)[len(prefix) :]
        if name.startswith(skip):
            continue
        kind = await rm.redis.type(key)
        value: Any
        if kind == "set":
            value = sorted(await rm.redis.smembers(key))
        elif kind == "hash":
            value = sorted((k, _canonical(v)) for k, v in (await rm.redis.hgetall(key)).items())
        elif kind == "zset":
            scored: Any = await rm.redis.zrange(key, 0, -1, withscores=True)
            value = sorted((m, _canonical(s)) for m, s in scored)
        else:
            value = _canonical(await rm.redis.get(key))
        entries.append((name, value))
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()
