"""The write path through real processes: POST /invitations and accept at a fixed
concurrency, and freshness (accept's 2xx until the projection answers degree 1)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import TOKEN, service_env
from bench.queries import percentiles
from rapport.localstack import free_port
from rapport.supervisor import SERVICES, ServiceProcess, Supervisor
from shared.kafka import ensure_topics
from shared.topics import TopicNames


@dataclass
class WriteResults:
    invitations: int
    concurrency: int
    invite_rps: float
    invite_ms: tuple[float, float]
    accept_rps: float
    accept_ms: tuple[float, float]
    fresh_ms: tuple[float, float]
    errors: int
    error_codes: dict[int, int]


def _headers(member: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "X-Member-Id": member}


async def _load(
    calls: list,
    concurrency: int,  # list of zero-arg coroutine factories
) -> tuple[float, list[float], list[httpx.Response]]:
    queue = list(enumerate(calls))
    latencies: list[float] = []
    responses: list[httpx.Response] = [None] * len(calls)  # type: ignore[list-item]

    async def worker() -> None:
        while queue:
            i, call = queue.pop()
            started = time.perf_counter()
            try:
                responses[i] = await call()
            except httpx.HTTPError as exc:  # counted as a failed request, the run goes on
                responses[i] = httpx.Response(599, text=repr(exc))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, responses


async def run_writes(
    bootstrap: str, redis_url: str, logs: Path, invitations: int, concurrency: int = 32
) -> WriteResults:
    namespace = f"w{time.time_ns()}."
    await ensure_topics(bootstrap, TopicNames(namespace).partitions())
    env = service_env(bootstrap, redis_url, namespace, RAPPORT_INVITATION_WEEKLY_LIMIT="100000")
    procs = [ServiceProcess(name, free_port(), env, logs) for name in SERVICES]
    supervisor = Supervisor(procs)
    await asyncio.to_thread(supervisor.start_all)
    url = {p.name: p.url for p in procs}
    rng = random.Random(5)
    members = [f"w{i:06d}" for i in range(max(200, invitations // 5))]
    limits = httpx.Limits(max_connections=concurrency * 2)
    try:
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            await _load(
                [
                    (
                        lambda m=m: http.post(
                            f"{url['connection']}/members",
                            json={"name": m, "industry": "Technology"},
                            headers=_headers(m),
                        )
                    )
                    for m in members
                ],
                concurrency,
            )
            last = members[-1]
            for _ in range(300):  # the invitation service learns members from the topic
                r = await http.post(
                    f"{url['invitation']}/invitations",
                    json={"to": last},
                    headers=_headers(members[0]),
                )
                if r.status_code != 404:
                    break
                await asyncio.sleep(0.05)
            pairs: set[tuple[str, str]] = set()
            while len(pairs) < invitations:
                a, b = rng.sample(members, 2)
                if (a, b) not in pairs and (b, a) not in pairs and {a, b} != {members[0], last}:
                    pairs.add((a, b))
            ordered = sorted(pairs)
            took, invite_lat, sent = await _load(
                [
                    (
                        lambda a=a, b=b: http.post(
                            f"{url['invitation']}/invitations", json={"to": b}, headers=_headers(a)
                        )
                    )
                    for a, b in ordered
                ],
                concurrency,
            )
            errors = sum(r.status_code != 201 for r in sent)
            codes = Counter(r.status_code for r in sent if r.status_code != 201)
            invite_rps = len(ordered) / took
            accepts = [
                (r.json()["invitation_id"], b, a)
                for r, (a, b) in zip(sent, ordered, strict=True)
                if r.status_code == 201
            ]
            fresh: list[float] = []
            accept_lat: list[float] = []

            async def accept_and_wait(
                inv: str, recipient: str, sender: str, measure: bool
            ) -> httpx.Response:
                started = time.perf_counter()
                r = await http.post(
                    f"{url['invitation']}/invitations/{inv}/accept", headers=_headers(recipient)
                )
                accept_lat.append(time.perf_counter() - started)
                if measure and r.status_code == 200:
                    started = time.perf_counter()
                    while time.perf_counter() - started < 30:
                        d = await http.get(
                            f"{url['projection']}/members/{sender}/degree/{recipient}",
                            headers=_headers(sender),
                        )
                        if d.status_code == 200 and d.json()["degree"] == 1:
                            fresh.append(time.perf_counter() - started)
                            break
                        await asyncio.sleep(0.002)  # polling the read side, as a client would
                return r

            measured = set(rng.sample(range(len(accepts)), min(200, len(accepts))))
            took_a, _, answered = await _load(
                [
                    (
                        lambda i=i, inv=inv, rcp=rcp, snd=snd: accept_and_wait(
                            inv, rcp, snd, i in measured
                        )
                    )
                    for i, (inv, rcp, snd) in enumerate(accepts)
                ],
                concurrency,
            )
            errors += sum(r.status_code != 200 for r in answered)
            codes.update(r.status_code for r in answered if r.status_code != 200)
    finally:
        await asyncio.to_thread(supervisor.stop)
    return WriteResults(
        invitations=len(ordered),
        concurrency=concurrency,
        invite_rps=invite_rps,
        invite_ms=percentiles(invite_lat),
        accept_rps=len(accepts) / took_a,
        accept_ms=percentiles(accept_lat),
        fresh_ms=percentiles(fresh) if fresh else (0.0, 0.0),
        errors=errors,
        error_codes=dict(codes),
    )
