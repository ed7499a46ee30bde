"""A member's own counts and pending invitations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.projection import domain
from services.projection.queries.engagement import _ts, engagement_pairs
from services.projection.store import ReadModelStore


async def summary(rm: ReadModelStore, m: str, now: datetime) -> dict[str, Any]:
    ks = await rm.current()
    connections = ks.member("c", m)
    async with rm.redis.pipeline(transaction=False) as pipe:
        pipe.scard(connections)
        for beyond, stopped in (("fw", "fwn"), ("fg", "fgn")):
            # (c - stopped) + beyond, with stopped in c and apart from beyond (steps.lua).
            pipe.scard(ks.member(beyond, m))
            pipe.sintercard(2, [connections, ks.member(beyond, m)])
            pipe.scard(ks.member(stopped, m))
        pipe.hlen(ks.member("ir", m))
        pipe.hlen(ks.member("is", m))
        conns, *follows, received, sent = await pipe.execute()
    followers, following = (
        conns + beyond - both - stopped for beyond, both, stopped in (follows[0:3], follows[3:6])
    )
    pairs = await engagement_pairs(rm, ks, m)
    engaged = sum(rm.scoring.is_engaged(p.stored, p.last, now) for p in pairs)
    return {
        "connections": conns,
        "connections_display": domain.connections_display(conns),
        "followers": followers,
        "following": following,
        "pending_received": received,
        "pending_sent": sent,
        "engaged_connections": engaged,
    }


async def pending(rm: ReadModelStore, m: str, direction: str) -> list[dict[str, Any]]:
    """Pending invitations received or sent, newest first."""
    ks = await rm.current()
    raw = await rm.redis.hgetall(ks.member("ir" if direction == "received" else "is", m))
    items = []
    for inv, value in raw.items():
        other, ts = str(value).split("|", 1)
        at = _ts(ts)
        items.append(
            {
                "invitation_id": inv,
                ("from" if direction == "received" else "to"): other,
                "sent_at": at.isoformat() if at else None,
            }
        )
    return sorted(items, key=lambda i: (i["sent_at"] or "", i["invitation_id"]), reverse=True)
