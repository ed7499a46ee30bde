"""Engagement views of a member's connections: engaged, top, stale, reach out, congratulate."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from services.projection import domain
from services.projection.domain import PairEngagement
from services.projection.store import READ_CHUNK, Keyspace, ReadModelStore


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value not in (None, "", "0") else None


async def engagement_pairs(rm: ReadModelStore, ks: Keyspace, m: str) -> list[PairEngagement]:
    async with rm.redis.pipeline(transaction=False) as pipe:
        pipe.smembers(ks.member("c", m))
        pipe.hgetall(ks.member("es", m))
        pipe.hgetall(ks.member("el", m))
        pipe.hgetall(ks.member("ca", m))
        conns, scores, lasts, since = await pipe.execute()
    return [
        PairEngagement(
            other=o,
            stored=float(scores.get(o, 0.0)),
            last=_ts(lasts.get(o)),
            connected_at=_ts(since.get(o)),
        )
        for o in sorted(conns)
    ]


async def engagement(rm: ReadModelStore, m: str, now: datetime) -> dict[str, Any]:
    ks = await rm.current()
    views: dict[str, Any] = domain.classify(await engagement_pairs(rm, ks, m), rm.scoring, now)
    views["congratulate"] = await congratulate(rm, ks, m, now)
    return views


async def congratulate(
    rm: ReadModelStore, ks: Keyspace, m: str, now: datetime
) -> list[dict[str, Any]]:
    """Milestones of connections in the window that this member has not congratulated."""
    since = (now - timedelta(days=rm.scoring.congratulate_window_days)).timestamp()
    conns = sorted(await rm.connections(ks, m))
    congratulated = await rm.redis.hgetall(ks.member("cg", m))
    prompts = []
    for start in range(0, len(conns), READ_CHUNK):
        chunk = conns[start : start + READ_CHUNK]
        async with rm.redis.pipeline(transaction=False) as pipe:
            for c in chunk:
                pipe.zrangebyscore(ks.member("ms", c), since, "+inf", withscores=True)
            rows = await pipe.execute()
        for c, milestones in zip(chunk, rows, strict=True):
            for raw, ts in milestones:
                if float(congratulated.get(c, 0)) >= ts:
                    continue
                event_id, kind, detail = json.loads(raw)
                prompts.append(
                    {
                        "member_id": c,
                        "milestone": kind,
                        "detail": detail or None,
                        "announced_at": datetime.fromtimestamp(ts, UTC).isoformat(),
                        "event_id": event_id,
                    }
                )
    return sorted(prompts, key=lambda p: p["announced_at"], reverse=True)
