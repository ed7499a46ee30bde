"""The ops dashboard: a static page (no CDN, works offline) polling one JSON snapshot.

The page itself carries no data and needs no token; `GET /dashboard/data` does. The page
reads the token from the URL fragment (`/dashboard#token=...`, never sent to the server
or written to access logs) or asks for it, and keeps it in the tab's sessionStorage.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from redis.asyncio import Redis

from services.projection import queries
from services.projection.api import ENDS_DEADLINE_S
from services.projection.deps import ProjectionDep
from services.projection.domain import SIZE_BUCKETS, average
from services.projection.history import History
from services.projection.rebuild import TopicEnds
from shared.api import MemberPath
from shared.auth import Operator, Reader
from shared.domain import unknown_member
from shared.errors import ApiError
from shared.events import PROFILE_FIELDS
from shared.instances import read_instances
from shared.topics import ALL_TOPICS, dlq

router = APIRouter(tags=["ops"])

# Only these files are served; anything else is a 404 (no path handling at all). The
# charting and graph-drawing libraries are vendored (static/vendor/<name>-<version>, each with
# its licence) so the page works with no internet.
ASSETS = {
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "uPlot.iife.min.js": (
        "vendor/uplot-1.6.32/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
    ),
    "uPlot.min.css": ("vendor/uplot-1.6.32/uPlot.min.css", "text/css; charset=utf-8"),
    "cytoscape.min.js": (
        "vendor/cytoscape-3.35.0/cytoscape.min.js",
        "text/javascript; charset=utf-8",
    ),
}


def _static(name: str) -> bytes:
    return resources.files("services.projection").joinpath("static", *name.split("/")).read_bytes()


def _partition_order(tp: str) -> tuple[str, int]:
    topic, partition = tp.rsplit(":", 1)
    return topic, int(partition)


def _distribution(industries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"bucket": label, "members": sum(i["distribution"][label] for i in industries)}
        for _, _, label in SIZE_BUCKETS
    ]


async def sample(ends: TopicEnds, history: History, shared: Redis, instances: str) -> None:
    """One point of the charts (a background loop of every projection replica); the
    services' instance records are on the `shared` Redis."""
    (topic_ends, _), (dead, _) = await asyncio.gather(
        ends.within(ENDS_DEADLINE_S), ends.within(ENDS_DEADLINE_S, [dlq(t) for t in ALL_TOPICS])
    )
    history.observe(time.time(), topic_ends, dead, await read_instances(shared, instances))


@router.get("/dashboard", response_class=HTMLResponse, summary="The ops dashboard (HTML)")
async def dashboard() -> HTMLResponse:
    """Industry table and chart, network-size distribution, throughput, lag, DLQ, rebuild
    state; the page polls `/dashboard/data` every two seconds."""
    return HTMLResponse(_static("dashboard.html"), headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/assets/{name}", include_in_schema=False)
async def dashboard_asset(name: str) -> Response:
    if name not in ASSETS:
        raise ApiError(404, "not_found", "no such dashboard asset")
    path, media_type = ASSETS[name]
    return Response(_static(path), media_type=media_type, headers={"Cache-Control": "no-cache"})


@router.get(
    "/dashboard/explore/{member_id}",
    summary="Network explorer: a member's summary, neighbourhood (sampled) and suggestions",
)
async def explore_member(
    member_id: MemberPath, projection: ProjectionDep, _auth: Operator
) -> dict[str, Any]:
    """For operators (ops or admin token): any member, read-only."""
    store, now = projection.store, datetime.now(UTC)
    ks = await store.current()
    profile = await store.profile(ks, member_id)
    if not profile:
        raise unknown_member(member_id)
    views = await queries.engagement.engagement(store, member_id, now)
    return {
        "member_id": member_id,
        "profile": {k: profile.get(k) for k in (*PROFILE_FIELDS, "active")},
        "summary": await queries.members.summary(store, member_id, now),
        "engaged": views["engaged"][:20],
        "stale": views["stale"][:20],
        "neighbourhood": await queries.explore.neighbourhood(store, ks, member_id),
        "suggestions": (await queries.suggestions.suggestions(store, member_id, 10))["items"],
    }


@router.get(
    "/dashboard/explore/{member_id}/{other}",
    summary="Network explorer: how two members are connected",
)
async def explore_pair(
    member_id: MemberPath, other: MemberPath, projection: ProjectionDep, _auth: Operator
) -> dict[str, Any]:
    """Degree, mutual connections and up to 3 shortest paths (ranked by engagement)."""
    store = projection.store
    ks = await store.current()
    for m in (member_id, other):
        if not await store.profile(ks, m):
            raise unknown_member(m)
    answer = await queries.degree.degree(store, ks, member_id, other)
    total, mutual, _ = await queries.degree.mutual_page(store, ks, member_id, other, None, 20)
    found = await queries.paths.paths(store, ks, member_id, other, 3)
    on_paths = sorted({n for p in found for n in p.members} | set(mutual))
    names = {m: p.get("name") for m, p in (await store.profiles(ks, on_paths)).items()}
    return {
        "degree": answer.degree,
        "mutual": {"total": total, "items": mutual},
        "paths": [{"members": p.members, "score": round(p.score, 3)} for p in found],
        "names": names,
    }


@router.get("/dashboard/data", summary="Everything the dashboard shows, in one snapshot")
async def dashboard_data(projection: ProjectionDep, _auth: Reader) -> dict[str, Any]:
    industries = await queries.industries.industries(projection.store)
    status = await queries.status.status(projection.store)
    # Every consumer's dead letters, not only the projection's: what the DLQ topics hold.
    # Both reads share one deadline, so a broker outage costs it once.
    (ends, ends_read_at), (dead, _) = await asyncio.gather(
        projection.ends.within(ENDS_DEADLINE_S),
        projection.ends.within(ENDS_DEADLINE_S, [dlq(t) for t in ALL_TOPICS]),
    )
    dlq_records: dict[str, int] = {}
    for tp, end in dead.items():
        topic = tp.rsplit(":", 1)[0]
        dlq_records[topic] = dlq_records.get(topic, 0) + end
    positions = status["positions"]
    # Tansu's ListOffsets can answer a little behind what was already fetched; a partition
    # is never shown applied past its end.
    ends = {tp: max(end, positions.get(tp, 0)) for tp, end in ends.items()}
    behind = queries.status.lag(ends, positions)
    lag = [
        {
            "topic": tp.rsplit(":", 1)[0],
            "partition": int(tp.rsplit(":", 1)[1]),
            "end": end,
            "position": positions.get(tp, 0),
            "lag": behind[tp],
        }
        for tp, end in sorted(ends.items(), key=lambda kv: _partition_order(kv[0]))
    ]
    rates = projection.throughput.observe(ends, time.monotonic())
    members = sum(i["members"] for i in industries)
    connections = sum(i["connections"] for i in industries)
    return {
        "generated_at": datetime.now(UTC).isoformat(),
        # Older than generated_at while the broker does not answer (lag is then as of it).
        "ends_as_of": datetime.fromtimestamp(ends_read_at, UTC).isoformat()
        if ends_read_at
        else None,
        "totals": {
            "members": members,
            # Each connection counts once per side in the industry sums.
            "connections": connections // 2,
            "average_connections": average(connections, members),
        },
        "industries": [
            {k: i[k] for k in ("industry", "members", "average_connections", "median_connections")}
            for i in sorted(industries, key=lambda i: -i["average_connections"])
        ],
        "distribution": _distribution(industries),
        "throughput": [{"topic": t, "events_per_s": r} for t, r in rates.items()],
        "lag": lag,
        "total_lag": sum(p["lag"] for p in lag),
        "dlq": [{"topic": t, "records": n} for t, n in sorted(dlq_records.items())],
        "dlq_total": sum(dlq_records.values()),
        "quota_refused": await projection.store.quota_refused(),
        "history": projection.history.columns(),
        "instances": await read_instances(
            projection.shared_redis, projection.store.settings.key("instances")
        ),
        "projection": {
            "version": status["version"],
            "events_applied": status["events_applied"],
            "last_event_time": status["last_event_time"],
            "rebuild": status["rebuild"],
        },
    }
