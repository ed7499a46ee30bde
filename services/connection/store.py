"""Redis state of the connection service and the one way it changes: load the slice a command
touches, decide, fold, and commit states + outbox events atomically (optimistic versions)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis

from services.connection import domain
from services.connection.domain import Lists, Member, Pair, Slice
from shared import events as ev
from shared.events import Envelope
from shared.outbox import AggregateWrite, CommitResult, IndexOp, Outbox, retry_on_conflict
from shared.settings import ConnectionSettings
from shared.topics import pair_key

PRODUCER = "connection"


@dataclass(frozen=True)
class Outcome:
    envelopes: list[Envelope]
    duplicate: bool = False

    @property
    def event_id(self) -> str | None:
        return str(self.envelopes[0].event_id) if self.envelopes else None

    def first(self, event_type: type[ev.Event]) -> Envelope | None:
        return next((e for e in self.envelopes if e.type == event_type.__name__), None)


class ConnectionStore:
    def __init__(self, redis: Redis, outbox: Outbox, settings: ConnectionSettings) -> None:
        self.redis = redis
        self.outbox = outbox
        self.settings = settings

    # keys ------------------------------------------------------------------------------------
    def member_key(self, member_id: str) -> str:
        return self.settings.key("connection", "member", member_id)

    def pair_key(self, a: str, b: str) -> str:
        return self.settings.key("connection", "pair", pair_key(a, b))

    def lists_key(self, owner: str) -> str:
        return self.settings.key("connection", "lists", owner)

    def connections_key(self, member_id: str) -> str:
        return self.settings.key("connection", "connections", member_id)

    @property
    def industries_key(self) -> str:
        return self.settings.key("connection", "industries")

    # reads -----------------------------------------------------------------------------------
    async def member(self, member_id: str) -> Member | None:
        [loaded] = await self.outbox.load(self.member_key(member_id))
        return Member.model_validate(loaded.state) if loaded.state else None

    async def connections(self, member_id: str) -> list[str]:
        return sorted(str(m) for m in await self.redis.smembers(self.connections_key(member_id)))

    async def canonical_industry(self, industry: str) -> str:
        """The first spelling seen of this industry's group, so aggregates group by one name."""
        text = " ".join(industry.split())
        await self.redis.hsetnx(self.industries_key, domain.normalise_industry(text), text)
        return str(await self.redis.hget(self.industries_key, domain.normalise_industry(text)))

    # writes ----------------------------------------------------------------------------------
    async def execute(
        self,
        command: domain.Command,
        *,
        correlation_id: str | None = None,
        causation: Envelope | None = None,
        dedupe_key: str | None = None,
    ) -> Outcome:
        """Load the slice, decide, and commit; retried from the load on a version conflict."""
        members, pairs, lists = slice_of(command)
        keys = (
            [self.member_key(m) for m in members]
            + [self.pair_key(a, b) for a, b in pairs]
            + [self.lists_key(o) for o in lists]
        )

        async def attempt() -> tuple[CommitResult, list[Envelope]]:
            loaded = await self.outbox.load(*keys)
            it = iter(loaded)
            member_rows = [next(it) for _ in members]
            pair_rows = [next(it) for _ in pairs]
            list_rows = [next(it) for _ in lists]
            state = Slice(
                members={
                    m: Member.model_validate(r.state) if r.state else None
                    for m, r in zip(members, member_rows, strict=True)
                },
                pairs={
                    pair_key(a, b): Pair.model_validate(r.state or {})
                    for (a, b), r in zip(pairs, pair_rows, strict=True)
                },
                lists={
                    o: Lists.model_validate(r.state or {})
                    for o, r in zip(lists, list_rows, strict=True)
                },
            )
            events = domain.decide(state, command)
            if not events:
                return "ok", []
            now = datetime.now(UTC)
            after = domain.fold(state, events, now)
            versions = iter(row.version for row in loaded)
            writes = [
                *(
                    AggregateWrite(self.member_key(m), next(versions), _dump(after.member(m)))
                    for m in members
                ),
                *(
                    AggregateWrite(self.pair_key(a, b), next(versions), _dump(after.pair(a, b)))
                    for a, b in pairs
                ),
                *(
                    AggregateWrite(self.lists_key(o), next(versions), _dump(after.lists_of(o)))
                    for o in lists
                ),
            ]
            # An unknown member stays unknown: no placeholder record for it.
            writes = [w for w in writes if w.state is not None or w.expected_version]
            envelopes = Envelope.wrap_all(
                events,
                producer=PRODUCER,
                occurred_at=now,
                causation=causation,
                correlation_id=correlation_id,
            )
            result = await self.outbox.commit(
                writes,
                envelopes,
                topics=self.settings.topics,
                index_ops=self._index_ops(events),
                dedupe_key=dedupe_key,
            )
            return result, envelopes

        result, envelopes = await retry_on_conflict(attempt)
        return Outcome([] if result == "duplicate" else envelopes, duplicate=result == "duplicate")

    def _index_ops(self, events: list[ev.Event]) -> list[IndexOp]:
        ops: list[IndexOp] = []
        for e in events:
            if isinstance(e, ev.ConnectionAccepted):
                ops.append(IndexOp("SADD", self.connections_key(e.member_a), e.member_b))
                ops.append(IndexOp("SADD", self.connections_key(e.member_b), e.member_a))
            elif isinstance(e, ev.ConnectionRemoved):
                ops.append(IndexOp("SREM", self.connections_key(e.member_a), e.member_b))
                ops.append(IndexOp("SREM", self.connections_key(e.member_b), e.member_a))
        return ops


def slice_of(
    command: domain.Command,
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The members, pairs and lists a command reads and writes."""
    match command:
        case domain.RegisterMember(member_id=m) | domain.UpdateProfile(member_id=m):
            return (m,), (), ()
        case domain.DeactivateMember(member_id=m, connections=conns):
            return (m, *conns), tuple((m, c) for c in conns), (m, *conns)
        case domain.AcceptConnection(sender=s, recipient=r):
            return (s, r), ((s, r),), ()
        case domain.RemoveConnection(actor=a, other=o) | domain.Block(actor=a, other=o):
            return (a, o), ((a, o),), (a, o)
        case domain.Unblock(actor=a, other=o) | domain.Unfollow(actor=a, other=o):
            return (), ((a, o),), ()
        case domain.Follow(actor=a, other=o):
            return (o,), ((a, o),), ()
        case domain.ListConnection(owner=a, other=o) | domain.UnlistConnection(owner=a, other=o):
            return (), ((a, o),), (a,)
    raise TypeError(f"unknown command {command!r}")


def _dump(state: Member | Pair | Lists | None) -> object:
    return state.model_dump(mode="json") if state is not None else None
