"""The projection's Redis read models: applying batches, and every query over them.

Keys live under a keyspace *version* (`rapport:p:<v>:`), and `rapport:p:current` names the
version readers use, so a rebuild fills a new version and flips readers atomically. Per-member
keys carry the member in a hash tag (`c:{ann}`), so one member's keys share a slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from services.projection import domain
from services.projection.domain import Filters, PairEngagement
from shared.scoring import ScoringModel
from shared.settings import ProjectionSettings


def _lua(name: str) -> str:
    return resources.files("services.projection").joinpath(name).read_text()


SUGGESTION_CANDIDATE_CAP = 200_000
MEMBERS_PER_CALL = 200  # single node: members per apply script call
# Which of these events are applied already (their marks share the `{g}` tag with KEYS[1]).
SEEN_LUA = """
local out = {}
for i, eid in ipairs(cjson.decode(ARGV[2])) do
  out[i] = redis.call('EXISTS', ARGV[1] .. 'seen{g}:' .. eid)
end
return out
"""
NETWORK_SCAN_CAP = 50_000


def _canonical(value: Any) -> Any:
    """Numbers to 9 significant digits: float sums may differ in the last bits by order."""
    try:
        return f"{float(value):.9g}"
    except (TypeError, ValueError):
        return value


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value not in (None, "", "0") else None


@dataclass(frozen=True)
class Keyspace:
    """Key names of one version. Hash tags keep one member's keys in one slot (`{m}`), one
    industry's in one slot (`{i:name}`), and the batch bookkeeping in one (`{g}`)."""

    prefix: str

    def member(self, kind: str, m: str) -> str:
        return f"{self.prefix}{kind}:{{{m}}}"

    def industry(self, name: str) -> str:
        return f"{self.prefix}iz:{{i:{name}}}"

    def industry_sum(self, name: str) -> str:
        return f"{self.prefix}isum:{{i:{name}}}"

    def seen(self, event_id: str) -> str:
        return f"{self.prefix}seen{{g}}:{event_id}"

    @property
    def clock(self) -> str:
        return f"{self.prefix}clock{{g}}"

    @property
    def pos(self) -> str:
        return f"{self.prefix}pos{{g}}"

    @property
    def stats(self) -> str:
        return f"{self.prefix}stats{{g}}"

    @property
    def inds(self) -> str:
        return f"{self.prefix}inds{{g}}"


class ReadModel:
    def __init__(self, redis: Redis, settings: ProjectionSettings, scoring: ScoringModel) -> None:
        self.redis = redis
        self.settings = settings
        self.scoring = scoring
        self._member_script = redis.register_script(_lua("member.lua"))
        self._industry_script = redis.register_script(_lua("industry.lua"))
        self._marks_script = redis.register_script(_lua("marks.lua"))
        self._seen_script = redis.register_script(SEEN_LUA)
        self._cluster: bool | None = None
        # Notified after each applied batch, so `?after=` waits wake up at once.
        self.changed = asyncio.Condition()

    # versions ------------------------------------------------------------------------------
    @property
    def current_key(self) -> str:
        return self.settings.key("p", "current")

    @property
    def rebuild_key(self) -> str:
        return self.settings.key("p", "rebuild")

    def keyspace(self, version: int) -> Keyspace:
        return Keyspace(self.settings.key("p", str(version)) + ":")

    async def version(self) -> int:
        return int(await self.redis.get(self.current_key) or 1)

    async def current(self) -> Keyspace:
        return self.keyspace(await self.version())

    # writes --------------------------------------------------------------------------------
    async def cluster_mode(self) -> bool:
        """Whether Redis runs as a cluster (then one member per script call)."""
        if self._cluster is None:
            info = await self.redis.info("cluster")
            self._cluster = bool(int(info.get("cluster_enabled", 0)))
        return self._cluster

    async def apply(
        self, version: int, batch: list[domain.Applied], positions: dict[str, int]
    ) -> int:
        """Apply a batch: member scripts (effects on each member's keys), industry scripts,
        then the batch's applied-marks and positions. Every step can be re-run after a crash
        without changing the outcome, so the re-delivered batch repairs a partial apply."""
        ks = self.keyspace(version)
        ttl = self.settings.dedupe_ttl_s
        fresh = await self._not_yet_applied(ks, batch)
        per_member: dict[str, list[list[Any]]] = {}
        for applied in fresh:
            for m, op in applied.ops:
                per_member.setdefault(m, []).append(op)
        if per_member:
            clock = await self.redis.incr(ks.clock)
            members = list(per_member)
            group = 1 if await self.cluster_mode() else MEMBERS_PER_CALL
            calls = []
            for start in range(0, len(members), group):
                chunk = members[start : start + group]
                payload = json.dumps([[m, per_member[m]] for m in chunk], separators=(",", ":"))
                calls.append(
                    (
                        self._member_script,
                        [ks.member("m", m) for m in chunk],
                        [ks.prefix, payload, clock, ttl],
                    )
                )
            rows = [row for result in await self._run_scripts(calls) for row in result]
            results = {
                m: (str(c), str(n), int(d)) for m, (c, n, d) in zip(members, rows, strict=True)
            }
            moves, recount = domain.industry_moves(results)
            await self._run_scripts(
                [
                    (
                        self._industry_script,
                        [ks.industry(name), ks.industry_sum(name)],
                        [json.dumps(entries)],
                    )
                    for name, entries in moves.items()
                ]
            )
            async with self.redis.pipeline(transaction=False) as pipe:
                if moves:
                    pipe.sadd(ks.inds, *moves)
                for m, now in recount.items():
                    if now:
                        pipe.hset(ks.member("m", m), "ci", now)
                    else:
                        pipe.hdel(ks.member("m", m), "ci")
                await pipe.execute()
        events = json.dumps([[a.event_id, a.ts] for a in fresh])
        return int(
            await self._marks_script(
                keys=[ks.pos, ks.stats], args=[ks.prefix, events, json.dumps(positions), ttl]
            )
        )

    async def _run_scripts(self, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        """Run scripts in order of results: pipelined on one node; on a cluster (where
        pipelines refuse scripts) concurrently, each routed to its own slot's node."""
        if not calls:
            return []
        if await self.cluster_mode():
            return list(await asyncio.gather(*(s(keys=k, args=a) for s, k, a in calls)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            return list(await pipe.execute())

    async def _not_yet_applied(
        self, ks: Keyspace, batch: list[domain.Applied]
    ) -> list[domain.Applied]:
        """Drop events applied before (a relay re-publish) and repeats inside the batch."""
        if not batch:
            return []
        seen = await self._seen_script(
            keys=[ks.pos], args=[ks.prefix, json.dumps([a.event_id for a in batch])]
        )
        fresh, ids = [], set()
        for applied, already in zip(batch, seen, strict=True):
            if not already and applied.event_id not in ids:
                ids.add(applied.event_id)
                fresh.append(applied)
        return fresh

    async def positions(self, version: int) -> dict[str, int]:
        raw = await self.redis.hgetall(self.keyspace(version).pos)
        return {str(k): int(v) for k, v in raw.items()}

    async def applied(self, event_id: str) -> bool:
        ks = await self.current()
        return bool(await self.redis.exists(ks.seen(event_id)))

    async def wait_applied(self, event_id: str, wait_ms: int) -> bool:
        """Wait until `event_id` is in the read model (read-your-writes), up to `wait_ms`.

        Wakes on every batch this process applies; polls too, since another replica's
        consumer may own the event's partition.
        """
        deadline = time.monotonic() + wait_ms / 1000
        while not await self.applied(event_id):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            async with self.changed:
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout=min(remaining, 0.05))
                except TimeoutError:
                    pass
        return True

    # reads ---------------------------------------------------------------------------------
    async def profile(self, ks: Keyspace, m: str) -> dict[str, Any]:
        return {str(k): v for k, v in (await self.redis.hgetall(ks.member("m", m))).items()}

    async def profiles(self, ks: Keyspace, members: Sequence[str]) -> dict[str, dict[str, Any]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in members:
                pipe.hmget(ks.member("m", m), *domain.PROFILE_FIELDS, "active")
            rows = await pipe.execute()
        return {
            m: dict(zip((*domain.PROFILE_FIELDS, "active"), row, strict=True))
            for m, row in zip(members, rows, strict=True)
        }

    async def connections(self, ks: Keyspace, m: str, list_name: str | None = None) -> set[str]:
        key = ks.member("c", m) if list_name is None else f"{ks.member('l', m)}:{list_name}"
        return {str(x) for x in await self.redis.smembers(key)}

    async def exists(self, ks: Keyspace, m: str) -> bool:
        return await self.redis.hget(ks.member("m", m), "active") == "1"

    async def mutual(self, ks: Keyspace, a: str, b: str) -> list[str]:
        """Sorted common connections: the smaller set checked against the larger (O(min))."""
        ca, cb = ks.member("c", a), ks.member("c", b)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.scard(ca)
            pipe.scard(cb)
            na, nb = await pipe.execute()
        small, large = (ca, cb) if na <= nb else (cb, ca)
        members = sorted(str(x) for x in await self.redis.smembers(small))
        if not members:
            return []
        flags = await self.redis.smismember(large, members)
        return [m for m, f in zip(members, flags, strict=True) if f]

    async def degree(self, ks: Keyspace, a: str, b: str) -> tuple[int | None, list[str]]:
        if a == b:
            return 0, []
        if await self.redis.sismember(ks.member("c", a), b):
            return 1, await self.mutual(ks, a, b)
        mutual = await self.mutual(ks, a, b)
        if mutual:
            return 2, mutual
        return (3 if await self._third(ks, a, b) else None), []

    async def _third(self, ks: Keyspace, a: str, b: str) -> bool:
        """Meet in the middle, merged client-side: does the smaller side's 2nd-degree
        neighborhood reach one of the other side's connections? Stops at the first hit."""
        na, nb = (
            await self.redis.scard(ks.member("c", a)),
            await self.redis.scard(ks.member("c", b)),
        )
        near, far = (a, b) if na <= nb else (b, a)
        targets = await self.connections(ks, far)
        if not targets:
            return False
        friends = sorted(await self.connections(ks, near))
        for start in range(0, len(friends), 100):
            async with self.redis.pipeline(transaction=False) as pipe:
                for friend in friends[start : start + 100]:
                    pipe.smembers(ks.member("c", friend))
                for reach in await pipe.execute():
                    if not targets.isdisjoint(reach):
                        return True
        return False

    async def second_degree(self, ks: Keyspace, m: str, cap: int) -> tuple[Counter[str], bool]:
        """Mutual-connection counts of everyone two steps away (client-side merge)."""
        first = await self.connections(ks, m)
        counts: Counter[str] = Counter()
        capped = False
        ordered = sorted(first)
        for start in range(0, len(ordered), 200):
            async with self.redis.pipeline(transaction=False) as pipe:
                for friend in ordered[start : start + 200]:
                    pipe.smembers(ks.member("c", friend))
                for friend_set in await pipe.execute():
                    counts.update(friend_set)
            if len(counts) > cap:
                capped = True
                break
        for x in (*first, m):
            counts.pop(x, None)
        return counts, capped

    async def exclusions(self, ks: Keyspace, m: str) -> set[str]:
        """Blocked either way, and pending invitations either way."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(ks.member("bl", m))
            pipe.smembers(ks.member("blby", m))
            pipe.hvals(ks.member("ir", m))
            pipe.hvals(ks.member("is", m))
            blocked, blocked_by, received, sent = await pipe.execute()
        pending = {v.split("|", 1)[0] for v in (*received, *sent)}
        return {str(x) for x in (*blocked, *blocked_by)} | pending

    async def suggestions(self, m: str, limit: int) -> dict[str, Any]:
        ks = await self.current()
        cache_key = ks.member("sg", m)
        cached = await self.redis.get(cache_key)
        if cached:
            entry = json.loads(cached)
            if entry["limit"] >= limit and await self._unchanged_since(ks, m, entry["clock"]):
                return {"items": entry["items"][:limit], "cached": True}
        clock = int(await self.redis.get(ks.clock) or 0)
        counts, _ = await self.second_degree(ks, m, SUGGESTION_CANDIDATE_CAP)
        for x in await self.exclusions(ks, m):
            counts.pop(x, None)
        # Only the best few hundred by mutual count can make the list after boosts (<= 2x).
        pool = [c for c, _ in counts.most_common(max(limit * 10, 200))]
        profiles = await self.profiles(ks, pool)
        pool_counts = Counter({c: counts[c] for c in pool if profiles[c].get("active") == "1"})
        me = await self.profile(ks, m)
        ranked = domain.rank_suggestions(me, pool_counts, profiles, limit)
        items = [
            {
                "member_id": c,
                "mutual_connections": n,
                "score": round(score, 3),
                "shared": reasons,
                "name": profiles[c].get("name"),
                "headline": profiles[c].get("headline"),
            }
            for c, n, score, reasons in ranked
        ]
        ttl = self.settings.suggestions_cache_ttl_s
        await self.redis.set(
            cache_key, json.dumps({"clock": clock, "limit": limit, "items": items}), ex=ttl
        )
        return {"items": items, "cached": False}

    async def _unchanged_since(self, ks: Keyspace, m: str, clock: int) -> bool:
        """Neither the member nor any of their connections changed after `clock`."""
        members = [m, *await self.connections(ks, m)]
        for start in range(0, len(members), 1000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for x in members[start : start + 1000]:
                    pipe.get(ks.member("lc", x))
                marks = await pipe.execute()
            if any(mark is not None and int(mark) > clock for mark in marks):
                return False
        return True

    async def network(
        self, m: str, degree: int, filters: Filters, cursor: str | None, limit: int
    ) -> dict[str, Any]:
        ks = await self.current()
        first = await self.connections(ks, m)
        second, capped = await self.second_degree(ks, m, NETWORK_SCAN_CAP)
        if degree == 2:
            candidates = set(second)
        else:
            candidates = set()
            ordered = sorted(second)
            for start in range(0, len(ordered), 200):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for x in ordered[start : start + 200]:
                        pipe.smembers(ks.member("c", x))
                    for s in await pipe.execute():
                        candidates.update(s)
                if len(candidates) > NETWORK_SCAN_CAP:
                    capped = True
                    break
            candidates -= second.keys() | first | {m}
        candidates -= await self.exclusions(ks, m)
        page, next_cursor = await self._filtered_page(
            ks, sorted(candidates), filters, cursor, limit
        )
        return {"items": page, "next_cursor": next_cursor, "capped": capped}

    async def _filtered_page(
        self, ks: Keyspace, ordered: list[str], filters: Filters, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        if cursor:
            ordered = [x for x in ordered if x > cursor]
        page: list[dict[str, Any]] = []
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            profiles = await self.profiles(ks, chunk)
            for x in chunk:
                p = profiles[x]
                if p.get("active") == "0" or not filters.match(p):
                    continue
                page.append({"member_id": x, **{f: p.get(f) for f in domain.PROFILE_FIELDS}})
                if len(page) == limit:
                    more = x != ordered[-1]
                    return page, (x if more else None)
        return page, None

    async def connection_page(
        self, m: str, filters: Filters, list_name: str | None, cursor: str | None, limit: int
    ) -> dict[str, Any]:
        ks = await self.current()
        members = sorted(await self.connections(ks, m, list_name))
        page, next_cursor = await self._filtered_page(ks, members, filters, cursor, limit)
        return {"items": page, "next_cursor": next_cursor, "total": len(members)}

    async def pending(self, m: str, direction: str) -> list[dict[str, Any]]:
        ks = await self.current()
        raw = await self.redis.hgetall(ks.member("ir" if direction == "received" else "is", m))
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

    async def engagement_pairs(self, ks: Keyspace, m: str) -> list[PairEngagement]:
        async with self.redis.pipeline(transaction=False) as pipe:
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

    async def engagement(self, m: str, now: datetime) -> dict[str, Any]:
        ks = await self.current()
        views = domain.classify(await self.engagement_pairs(ks, m), self.scoring, now)
        views["congratulate"] = await self._congratulate(ks, m, now)
        return views

    async def _congratulate(self, ks: Keyspace, m: str, now: datetime) -> list[dict[str, Any]]:
        """Milestones of connections in the window that this member has not congratulated."""
        since = (now - timedelta(days=self.scoring.congratulate_window_days)).timestamp()
        conns = sorted(await self.connections(ks, m))
        congratulated = await self.redis.hgetall(ks.member("cg", m))
        prompts = []
        for start in range(0, len(conns), 500):
            chunk = conns[start : start + 500]
            async with self.redis.pipeline(transaction=False) as pipe:
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

    async def summary(self, m: str, now: datetime) -> dict[str, Any]:
        ks = await self.current()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.scard(ks.member("c", m))
            pipe.scard(ks.member("fw", m))
            pipe.scard(ks.member("fg", m))
            pipe.hlen(ks.member("ir", m))
            pipe.hlen(ks.member("is", m))
            conns, followers, following, received, sent = await pipe.execute()
        pairs = await self.engagement_pairs(ks, m)
        engaged = sum(self.scoring.is_engaged(p.stored, p.last, now) for p in pairs)
        return {
            "connections": conns,
            "connections_display": domain.connections_display(conns),
            "followers": followers,
            "following": following,
            "pending_received": received,
            "pending_sent": sent,
            "engaged_connections": engaged,
        }

    async def industries(self) -> list[dict[str, Any]]:
        ks = await self.current()
        names = sorted(str(n) for n in await self.redis.smembers(ks.inds))
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                key = ks.industry(name)
                pipe.zcard(key)
                pipe.get(ks.industry_sum(name))
                for low, high, _ in domain.SIZE_BUCKETS:
                    pipe.zcount(key, low, "+inf" if high is None else high)
            rows = await pipe.execute()
        per = 2 + len(domain.SIZE_BUCKETS)
        out = []
        for i, name in enumerate(names):
            count, total, *buckets = rows[i * per : (i + 1) * per]
            if not count:
                continue
            out.append(
                {
                    "industry": name,
                    "members": count,
                    "connections": int(total or 0),
                    "average_connections": round(int(total or 0) / count, 2),
                    "median_connections": await self._median(ks.industry(name), count),
                    "distribution": {
                        label: n
                        for (_, _, label), n in zip(domain.SIZE_BUCKETS, buckets, strict=True)
                    },
                }
            )
        return out

    async def _median(self, key: str, count: int) -> float:
        middle: Any = await self.redis.zrange(key, (count - 1) // 2, count // 2, withscores=True)
        return domain.median([float(score) for _, score in middle])

    async def digest(self, version: int | None = None) -> str:
        """A hash of the read model's content (not its bookkeeping), to compare two versions."""
        version = version if version is not None else await self.version()
        prefix = self.keyspace(version).prefix
        skip = ("seen{g}", "sn:", "sg:", "clock{g}", "lc:", "pos{g}", "stats{g}")
        entries: list[tuple[str, Any]] = []
        async for key in self.redis.scan_iter(match=prefix + "*", count=1000):
            name = str(key)[len(prefix) :]
            if name.startswith(skip):
                continue
            kind = await self.redis.type(key)
            value: Any
            if kind == "set":
                value = sorted(await self.redis.smembers(key))
            elif kind == "hash":
                value = sorted(
                    (k, _canonical(v)) for k, v in (await self.redis.hgetall(key)).items()
                )
            elif kind == "zset":
                scored: Any = await self.redis.zrange(key, 0, -1, withscores=True)
                value = sorted((m, _canonical(s)) for m, s in scored)
            else:
                value = _canonical(await self.redis.get(key))
            entries.append((name, value))
        return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()

    async def status(self) -> dict[str, Any]:
        version = await self.version()
        ks = self.keyspace(version)
        stats = await self.redis.hgetall(ks.stats)
        rebuild = await self.redis.hgetall(self.rebuild_key)
        dlq = await self.redis.hgetall(self.settings.key("p", "dlq"))
        last = _ts(stats.get("last_event_ts"))
        return {
            "version": version,
            "events_applied": int(stats.get("applied", 0)),
            "last_event_time": last.isoformat() if last else None,
            "positions": await self.positions(version),
            "dlq": {k: int(v) for k, v in dlq.items()},
            "rebuild": rebuild or {"state": "idle"},
        }
