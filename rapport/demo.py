"""`rapport demo`: a realistic demo network, built through the public HTTP APIs.

Degrees follow a power law (Pareto draws, heavy tail), calibrated per industry so that the
industries' average network sizes come out near the figures below times `scale`; the edges
are a configuration-model pairing of those degrees (no self-loops, no duplicates).
"""

from __future__ import annotations

import asyncio
import heapq
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rapport.client import (
    Conflict,
    NotFound,
    RapportClient,
    RapportError,
    RateLimited,
    Unavailable,
)

T = TypeVar("T")

# Average connections per industry at scale 1 (what the dashboard should show, times scale).
INDUSTRY_AVERAGES = {
    "Technology": 673,
    "Media & Communications": 612,
    "Financial Services": 588,
    "Consumer Goods": 579,
    "Manufacturing": 567,
    "Healthcare": 553,
}
DEFAULT_SCALE = 0.03
DEFAULT_MEMBERS = 1000
PARETO_ALPHA = 2.3  # degree tail exponent: most have a few connections, a few have many

FIRST = [
    "Ada",
    "Grace",
    "Alan",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Radia",
    "Tim",
    "Frances",
    "Edsger",
    "Hedy",
    "John",
    "Katherine",
    "Donald",
    "Sophie",
    "Vint",
    "Joan",
    "Guido",
    "Anita",
    "Bjarne",
    "Shafi",
    "Leslie",
    "Fei-Fei",
    "Yukihiro",
]
LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Perlman",
    "Berners-Lee",
    "Allen",
    "Dijkstra",
    "Lamarr",
    "McCarthy",
    "Johnson",
    "Knuth",
    "Wilson",
    "Cerf",
    "Clarke",
    "Rossum",
    "Borg",
    "Stroustrup",
    "Goldwasser",
    "Lamport",
    "Li",
    "Matsumoto",
]
LOCATIONS = [
    "Berlin",
    "London",
    "New York",
    "San Francisco",
    "Paris",
    "Bangalore",
    "Toronto",
    "Singapore",
    "Sydney",
    "São Paulo",
    "Amsterdam",
    "Austin",
]
EMPLOYERS = {
    "Technology": ["Initech", "Hooli", "Pied Piper", "Globex Software"],
    "Media & Communications": ["Daily Planet", "Wayne Media", "Channel 9", "Bugle Press"],
    "Financial Services": ["Gringotts", "Monarch Capital", "Iron Bank", "Fidelis Trust"],
    "Consumer Goods": ["Acme", "Duff", "Soylent", "Vandelay Industries"],
    "Manufacturing": ["Stark Industries", "Cyberdyne", "Tyrell", "Weyland"],
    "Healthcare": ["Sacred Heart", "Mercy General", "Umbrella Health", "Seattle Grace"],
}
TITLES = [
    "Engineer",
    "Analyst",
    "Manager",
    "Director",
    "Designer",
    "Consultant",
    "Product Manager",
    "Nurse",
    "Editor",
    "Recruiter",
    "Founder",
    "Data Scientist",
]


@dataclass(frozen=True)
class Member:
    member_id: str
    name: str
    industry: str
    location: str
    employer: str
    title: str


@dataclass
class DemoNetwork:
    members: list[Member]
    # (sender, recipient): oriented so that nobody sends more than the weekly invite limit.
    edges: list[tuple[str, str]]
    targets: dict[str, float]

    def degrees(self) -> dict[str, int]:
        deg = {m.member_id: 0 for m in self.members}
        for a, b in self.edges:
            deg[a] += 1
            deg[b] += 1
        return deg

    def industry_averages(self) -> dict[str, float]:
        deg = self.degrees()
        sums: dict[str, list[int]] = {}
        for m in self.members:
            sums.setdefault(m.industry, []).append(deg[m.member_id])
        return {name: sum(d) / len(d) for name, d in sums.items()}


def _calibrated_degrees(count: int, mean: float, cap: int, rng: random.Random) -> list[int]:
    """`count` power-law degrees whose sum is round(count * mean), each in [1, cap]."""
    weights = [rng.paretovariate(PARETO_ALPHA) for _ in range(count)]
    want = round(count * mean)
    scaled = [w * want / sum(weights) for w in weights]
    degrees = [min(cap, max(1, int(x))) for x in scaled]
    # Hand out what rounding and capping took away, to members still under the cap,
    # most to those whose fraction was largest (keeps the shape).
    order = sorted(range(count), key=lambda i: scaled[i] - int(scaled[i]), reverse=True)
    i = 0
    while sum(degrees) < want and i < 10 * count:
        j = order[i % count]
        if degrees[j] < cap:
            degrees[j] += 1
        i += 1
    return degrees


def build_network(
    members: int = DEFAULT_MEMBERS,
    scale: float = DEFAULT_SCALE,
    seed: int = 7,
    tag: str = "demo",
    invite_limit: int = 100,
) -> DemoNetwork:
    rng = random.Random(seed)
    names = list(INDUSTRY_AVERAGES)
    targets = {name: avg * scale for name, avg in INDUSTRY_AVERAGES.items()}
    if max(targets.values()) >= members / len(names):
        raise ValueError("too few members for these averages: raise --members or lower --scale")
    people: list[Member] = []
    for i in range(members):
        industry = names[i % len(names)]
        first, last = rng.choice(FIRST), rng.choice(LAST)
        people.append(
            Member(
                member_id=f"{first}-{last}-{tag}{i}".lower().replace(" ", ""),
                name=f"{first} {last}",
                industry=industry,
                location=rng.choice(LOCATIONS),
                employer=rng.choice(EMPLOYERS[industry]),
                title=rng.choice(TITLES),
            )
        )
    cap = max(2, members // 4)
    wanted: dict[str, int] = {}
    for name in names:
        group = [m for m in people if m.industry == name]
        degrees = _calibrated_degrees(len(group), targets[name], cap, rng)
        wanted.update((m.member_id, d) for m, d in zip(group, degrees, strict=True))
    oriented = _orient(_pair(wanted, rng), invite_limit)
    busiest = max(Counter(sender for sender, _ in oriented).values(), default=0)
    if busiest > invite_limit:
        raise ValueError(
            f"this network needs {busiest} invitations from one member but the invitation "
            f"service allows {invite_limit} a week: lower --scale, or raise "
            "RAPPORT_INVITATION_WEEKLY_LIMIT and pass the same --invite-limit"
        )
    return DemoNetwork(people, oriented, targets)


def _pair(wanted: dict[str, int], rng: random.Random) -> set[tuple[str, str]]:
    """Configuration model: pair degree stubs at random; collisions are re-paired."""
    stubs = [m for m, d in wanted.items() for _ in range(d)]
    edges: set[tuple[str, str]] = set()
    for _ in range(50):
        rng.shuffle(stubs)
        leftover: list[str] = []
        for a, b in zip(stubs[0::2], stubs[1::2], strict=False):
            pair = (a, b) if a < b else (b, a)
            if a == b or pair in edges:
                leftover += [a, b]
            else:
                edges.add(pair)
        if len(stubs) % 2:
            leftover.append(stubs[-1])
        if len(leftover) < 2 or len(set(leftover)) < 2:
            break
        stubs = leftover
    return edges


def _orient(edges: set[tuple[str, str]], limit: int) -> list[tuple[str, str]]:
    """Who invites whom, keeping everyone under the weekly invite limit: peel members in
    degeneracy order (fewest remaining connections first); each sends to those left.
    Nobody then sends more than the graph's degeneracy, far below the hubs' degrees."""
    adjacency: dict[str, set[str]] = {}
    for a, b in edges:
        adjacency.setdefault(a, set()).add(b)
        adjacency.setdefault(b, set()).add(a)
    heap = [(len(n), m) for m, n in adjacency.items()]
    heapq.heapify(heap)
    removed: set[str] = set()
    out: list[tuple[str, str]] = []
    while heap:
        size, m = heapq.heappop(heap)
        if m in removed or size != len(adjacency[m]):
            continue  # a stale heap entry
        removed.add(m)
        for other in sorted(adjacency[m]):
            out.append((m, other))
            adjacency[other].discard(m)
            heapq.heappush(heap, (len(adjacency[other]), other))
        adjacency[m].clear()
    return out


@dataclass
class DemoResult:
    registered: int = 0
    connected: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


class DemoLoader:
    """Posts the network through the typed client with bounded concurrency and polite
    retries (a 404 right after a registration, a 429 or a 503 are waited out)."""

    RETRY = (NotFound, RateLimited, Unavailable)

    def __init__(
        self, urls: dict[str, str], token: str, concurrency: int = 16, max_attempts: int = 40
    ) -> None:
        self.urls = urls
        self.token = token
        self.concurrency = concurrency
        self.max_attempts = max_attempts

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(self.max_attempts):
            try:
                return await call()
            except self.RETRY as exc:
                if attempt == self.max_attempts - 1:
                    raise
                wait = min(float(exc.retry_after or 0.05 * 2 ** min(attempt, 5)), 2.0)
                await asyncio.sleep(wait)  # backoff before a retry, not synchronisation
        raise AssertionError("unreachable")

    async def _each(
        self, items: list[Any], work: Callable[[Any], Any], advance: Callable[[], None]
    ) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)

        async def worker() -> None:
            while not queue.empty():
                item = queue.get_nowait()
                await work(item)
                advance()

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def load(
        self,
        network: DemoNetwork,
        on_member: Callable[[], None] = lambda: None,
        on_edge: Callable[[], None] = lambda: None,
    ) -> DemoResult:
        result = DemoResult()
        # Many members write at once: each call is its own read-your-writes chain.
        async with RapportClient(self.urls, self.token, timeout=30, read_your_writes=False) as api:

            async def register(m: Member) -> None:
                details = {"location": m.location, "employer": m.employer, "title": m.title}
                try:
                    await self._retrying(
                        lambda: api.register(m.member_id, m.name, m.industry, **details)
                    )
                    result.registered += 1
                except Conflict:
                    result.skipped += 1
                except RapportError as exc:
                    result.errors.append(f"register {m.member_id}: {exc}")

            async def connect(edge: tuple[str, str]) -> None:
                sender, recipient = edge
                try:
                    sent = await self._retrying(lambda: api.invite(sender, recipient))
                    if sent.status != "accepted":  # accepted: they had invited us already
                        await self._retrying(lambda: api.accept(recipient, sent.invitation_id))
                    result.connected += 1
                except Conflict:
                    result.skipped += 1
                except RapportError as exc:
                    result.errors.append(f"connect {edge}: {exc}")

            await self._each(network.members, register, on_member)
            await self._each(network.edges, connect, on_edge)
        return result


async def wait_for_projection(
    urls: dict[str, str], token: str, members: set[str], timeout_s: float = 120.0
) -> list[dict[str, Any]]:
    """Poll `/industries` until the demo industries stop changing and cover every member."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    last: list[dict[str, Any]] = []
    async with RapportClient(urls, token) as api:
        while asyncio.get_running_loop().time() < deadline:
            status = await api.status()
            rows = [i.model_dump() for i in (await api.industries()).industries]
            ours = [r for r in rows if r["industry"] in INDUSTRY_AVERAGES]
            covered = sum(r["members"] for r in ours) >= len(members)
            if status.total_lag == 0 and covered and ours == last:
                return ours
            last = ours
            await asyncio.sleep(1.0)  # polling another service's progress
    return last
