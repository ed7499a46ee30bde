"""The command loop every write service runs: load -> decide -> evolve -> commit with the outbox.

A write service supplies only what differs (a `WriteModel`): which aggregates a command
touches, how they make the state its pure `decide` sees, and the index operations its events
imply. The loop loads that slice in one round trip, decides, folds the events into the state,
and commits the changed aggregates, the index operations and the events' envelopes in one
atomic step (`StateStore.commit`), guarded by each aggregate's version. A version conflict
means another writer won in between: the loop starts again from the load.

`StateStore` is the storage interface. `RedisStateStore` (shared/outbox.py) is the real one;
`InMemoryStateStore` here is its fake for unit tests; one contract test suite runs on both
(tests/contract), so the fake cannot drift.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

import orjson
from pydantic import BaseModel

from shared.domain import LocalChange
from shared.events import Envelope, Event
from shared.groups import KeyLayout, outside
from shared.observability import COMMAND_CONFLICTS

CommitResult = Literal["ok", "conflict", "duplicate"]
IndexOpName = Literal["ZADD", "ZREM", "SADD", "SREM", "DEL", "HSETNX"]
# What a decision returns and `evolve` folds: catalog events (published) and local changes.
Change = Event | LocalChange


@dataclass(frozen=True)
class Loaded:
    """One aggregate as stored: its version (0 when absent) and its JSON state (None)."""

    version: int
    state: Any


@dataclass(frozen=True)
class AggregateWrite:
    """New state for one aggregate, as JSON, valid only if it is still at `expected_version`.
    Without a state only the version is checked (the decision read the aggregate and left it
    as it was): nothing is written, and an absent aggregate stays absent."""

    key: str
    expected_version: int
    state_json: str | None = None

    @classmethod
    def of(cls, key: str, expected_version: int, state: Any) -> AggregateWrite:
        """A write of JSON data, encoded here."""
        encoded = orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS).decode()
        return cls(key, expected_version, encoded)


@dataclass(frozen=True)
class IndexOp:
    """A change to a secondary index (a set, sorted set or hash), committed with the
    aggregates. HSETNX sets hash `field` to `member` unless it has a value."""

    op: IndexOpName
    key: str
    member: str = ""
    score: float = 0.0
    field: str = ""


@dataclass(frozen=True)
class FollowKey:
    """Load, in the same snapshot, the aggregate at `key_prefix + <id>`, where <id> is the
    string field `field` of the state of `keys[source]` (nothing when absent)."""

    source: int
    field: str
    key_prefix: str


@dataclass(frozen=True)
class Snapshot:
    rows: list[Loaded]
    checks: list[bool]
    followed: list[tuple[str | None, Loaded]] = field(default_factory=list)


class StateStore(Protocol):
    """Aggregates, secondary indexes and the outbox of one write service."""

    async def load(
        self,
        keys: Sequence[str],
        checks: Sequence[tuple[str, str]] = (),
        follows: Sequence[FollowKey] = (),
    ) -> Snapshot:
        """Each aggregate's version and state, whether each (set, member) is a member, and
        each followed aggregate: one consistent snapshot in one round trip."""
        ...

    async def commit(
        self,
        writes: Sequence[AggregateWrite],
        envelopes: Sequence[Envelope],
        *,
        index_ops: Sequence[IndexOp] = (),
        dedupe_key: str | None = None,
        group: str | None = None,
    ) -> CommitResult:
        """All or nothing: `conflict` if any aggregate moved past its expected version,
        `duplicate` if `dedupe_key` was committed before (the causing event was applied).
        `group`: the slot group every key is in; the events go to its outbox."""
        ...

    async def set_members(self, key: str) -> set[str]: ...

    async def lowest(self, key: str, max_score: float, limit: int) -> list[str]:
        """Members of a sorted set with a score up to `max_score`, lowest first."""
        ...

    async def claim(self, key: str, field: str, value: str) -> str:
        """The value of `field` in the hash `key`, set to `value` if it had none (first wins)."""
        ...

    async def backlog(self) -> int:
        """Outbox entries not yet confirmed by the broker."""
        ...


class ContendedWrite(Exception):
    """Optimistic retries ran out: an aggregate is too hot right now; retry shortly."""

    def __init__(self) -> None:
        super().__init__("too many concurrent writes to the same record, retry shortly")


@dataclass(frozen=True)
class Follow:
    """An aggregate a command reads whose id is a field of another one it reads: loaded in
    the same round trip, at `key_prefix + id`, and named `name.format(id=id)` in the rows."""

    source: str
    field: str
    name: str
    key_prefix: str
    model: type[BaseModel]


@dataclass(frozen=True)
class Plan:
    """What a command reads: aggregates by name (key, model), set-membership checks, and
    aggregates found through another one's field. `group`: the slot group (shared.groups)
    of what the command is about, where every aggregate it writes lives and its events go;
    None for a service whose keys are not laid out in groups. `reads`: aggregates loaded in
    the same snapshot but never written back nor guarded by their version (another owner's,
    in another group); a rule that needs one exact makes a reservation there instead."""

    aggregates: Mapping[str, tuple[str, type[BaseModel]]] = field(default_factory=dict)
    checks: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    follows: Sequence[Follow] = ()
    group: str | None = None
    reads: Mapping[str, tuple[str, type[BaseModel]]] = field(default_factory=dict)

    def merged(self, other: Plan) -> Plan:
        """What both plans read, as one plan in their (common) group: an aggregate one of
        them writes is written, whoever else only reads it."""
        if other.group != self.group:
            raise ValueError(f"plans in groups {self.group} and {other.group} cannot merge")
        aggregates = {**self.aggregates, **other.aggregates}
        reads = {n: a for n, a in {**self.reads, **other.reads}.items() if n not in aggregates}
        follows = list(dict.fromkeys([*self.follows, *other.follows]))
        return Plan(aggregates, {**self.checks, **other.checks}, follows, self.group, reads)


@dataclass(frozen=True)
class Rows:
    """The loaded slice: aggregates by name (None when absent) and check results; for each
    aggregate, the key and version it was loaded at, and which of them it may only read."""

    aggregates: Mapping[str, BaseModel | None]
    checks: Mapping[str, bool]
    loaded_at: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    readonly: frozenset[str] = frozenset()

    def get(self, name: str) -> Any:
        return self.aggregates.get(name)


S = TypeVar("S")
C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)


class WriteModel(Protocol[S, C_contra]):
    """What one write service tells the loop."""

    producer: str

    async def plan(self, command: C_contra | None, observed: Event | None) -> Plan: ...

    def plan_event(self, event: Change) -> Plan:
        """The aggregates `event` changes when folded from the log (a replay)."""
        ...

    def slice(self, command: C_contra | None, rows: Rows, now: datetime) -> S:
        """The state `decide` sees, from the loaded rows."""
        ...

    def aggregates(self, state: S) -> Mapping[str, BaseModel | None]:
        """The state's aggregates by plan name, to write back what changed."""
        ...

    def decide(self, state: S, command: C_contra) -> Sequence[Change]: ...

    def evolve(self, state: S, event: Change) -> S: ...

    def index_ops(self, events: Sequence[Change], now: datetime) -> list[IndexOp]: ...


@dataclass(frozen=True)
class Steps(Generic[S, C]):
    """The steps that follow a command in its commit: `widen` loads what they need with the
    command's slice (a followed key can name an owner only once the slice is read), and
    `after` names them from the state the command left."""

    widen: Plan
    after: Callable[[S], Sequence[C]]


@dataclass(frozen=True)
class Outcome(Generic[S]):
    """What a command did: the envelopes it committed (empty for a no-op or a duplicate)
    and the state after it."""

    envelopes: list[Envelope]
    state: S | None = None
    duplicate: bool = False

    @property
    def event_id(self) -> str | None:
        return str(self.envelopes[0].event_id) if self.envelopes else None

    def first(self, event_type: type[Event]) -> Envelope | None:
        return next((e for e in self.envelopes if e.type == event_type.__name__), None)


class CommandLoop(Generic[S, C]):
    # How the service lays out its keys (shared.groups): what its runtime builds on.
    layout: ClassVar[KeyLayout] = KeyLayout.ONE_NODE

    def __init__(
        self,
        store: StateStore,
        model: WriteModel[S, C],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        tries: int = 100,
    ) -> None:
        self.store = store
        self.model = model
        self.clock = clock
        self.tries = tries
        self._covered: set[tuple[type, type]] = set()

    async def run(
        self,
        command: C | None = None,
        *,
        observed: Event | None = None,
        causation: Envelope | None = None,
        correlation_id: str | None = None,
        dedupe_key: str | None = None,
        now: datetime | None = None,
        then: Steps[S, C] | None = None,
    ) -> Outcome[S]:
        """Decide `command` and commit. `observed` is another service's event, folded into
        the state first (and its reactions decided when the command is None). `then`: the
        steps that follow the command in the same group, decided on the state it leaves and
        committed with it (a saga whose owners share one group takes one commit)."""
        for n in range(self.tries):
            result, outcome = await self._attempt(
                command, observed, causation, correlation_id, dedupe_key, now, then
            )
            if result == "duplicate":
                return Outcome([], outcome.state, duplicate=True)
            if result == "ok":
                return outcome
            kind = type(command if command is not None else observed).__name__
            COMMAND_CONFLICTS.labels(self.model.producer, kind).inc()
            # Jittered backoff spreads contenders out; a conflict means someone else just won.
            await asyncio.sleep(random.uniform(0, min(0.001 * 2**n, 0.05)))
        raise ContendedWrite()

    async def _attempt(
        self,
        command: C | None,
        observed: Event | None,
        causation: Envelope | None,
        correlation_id: str | None,
        dedupe_key: str | None,
        now: datetime | None,
        then: Steps[S, C] | None = None,
    ) -> tuple[CommitResult, Outcome[S]]:
        at = now or self.clock()
        plan = await self.model.plan(command, observed)
        if then is not None:
            plan = plan.merged(then.widen)
        rows = await self._load(plan)
        state = self.model.slice(command, rows, at)
        if observed is not None:
            state = self.model.evolve(state, observed)
        events = list(self.model.decide(state, command)) if command is not None else []
        after = state
        for event in events:
            after = self.model.evolve(after, event)
        if then is not None:
            for step in then.after(after):
                if (type(command), type(step)) not in self._covered:
                    await self._covers(rows, step)
                    self._covered.add((type(command), type(step)))
                decided = self.model.decide(after, step)
                events += decided
                for event in decided:
                    after = self.model.evolve(after, event)
        if not events and dedupe_key is None and observed is None:
            return "ok", Outcome([], after)
        writes = self._writes(rows, after)
        envelopes = Envelope.wrap_all(
            [e for e in events if isinstance(e, Event)],
            producer=self.model.producer,
            occurred_at=at,
            causation=causation,
            correlation_id=correlation_id,
        )
        result = await self.store.commit(
            writes,
            envelopes,
            index_ops=self.model.index_ops(events, at),
            dedupe_key=dedupe_key,
            group=plan.group,
        )
        return result, Outcome(envelopes, after)

    async def _covers(self, rows: Rows, step: C) -> None:
        """A step decided in another command's commit must find what it writes written by
        that commit, and what it checks checked, or its changes would be lost. Checked the
        first time each kind of step follows each kind of command: what a plan loads
        depends on the kinds, not on the members."""
        plan = await self.model.plan(step, None)
        readable = {n: key for n, (key, _) in rows.loaded_at.items()}
        writable = {n: key for n, key in readable.items() if n not in rows.readonly}
        stray = [n for n, (key, _) in plan.aggregates.items() if writable.get(n) != key]
        stray += [n for n, (key, _) in plan.reads.items() if readable.get(n) != key]
        stray += [n for n in plan.checks if n not in rows.checks]
        if stray:
            raise ValueError(f"step {step!r} needs what its commit did not load: {stray}")

    async def fold(self, event: Change, at: datetime) -> None:
        """Fold one event read from the log into the state, as it was when it happened: no
        decision, no outbox. Replaying a service's topics this way rebuilds its state."""
        plan = self.model.plan_event(event)
        if not plan.aggregates and not self.model.index_ops([event], at):
            return  # nothing of this service's state changes
        for n in range(self.tries):
            rows = await self._load(plan)
            after = self.model.evolve(self.model.slice(None, rows, at), event)
            writes = self._writes(rows, after)
            index_ops = self.model.index_ops([event], at)
            if await self.store.commit(writes, [], index_ops=index_ops, group=plan.group) == "ok":
                return
            await asyncio.sleep(random.uniform(0, min(0.001 * 2**n, 0.05)))
        raise ContendedWrite()

    async def _load(self, plan: Plan) -> Rows:
        every = {**plan.aggregates, **plan.reads}
        readonly = set(plan.reads)
        names = list(every)
        check_names = list(plan.checks)
        snapshot = await self.store.load(
            [every[n][0] for n in names],
            [plan.checks[n] for n in check_names],
            [FollowKey(names.index(f.source), f.field, f.key_prefix) for f in plan.follows],
        )
        loaded = {n: (every[n], row) for n, row in zip(names, snapshot.rows, strict=True)}
        for f, (ident, row) in zip(plan.follows, snapshot.followed, strict=True):
            if ident is not None:
                name = f.name.format(id=ident)
                loaded.setdefault(name, ((f.key_prefix + ident, f.model), row))
                if f.source in plan.reads:  # found through a read-only aggregate: read-only
                    readonly.add(name)
        return Rows(
            {
                n: model.model_validate(row.state) if row.state else None
                for n, ((_, model), row) in loaded.items()
            },
            dict(zip(check_names, snapshot.checks, strict=True)),
            {n: (key, row.version) for n, ((key, _), row) in loaded.items()},
            frozenset(readonly),
        )

    def _writes(self, rows: Rows, after: S) -> list[AggregateWrite]:
        """Every aggregate of the slice, at the version it was loaded at, changed or not:
        a decision that read an aggregate must fail if that aggregate moved meanwhile. One
        left as loaded (the same object: the fold copies what it changes), or absent and
        still at its defaults, is only checked: nothing to encode or write, and no
        placeholder for an absent one. The plan's `reads` (and what was found through them)
        are another owner's and stay as they are."""
        writes = []
        for name, state in self.model.aggregates(after).items():
            if name in rows.loaded_at and name not in rows.readonly and state is not None:
                key, version = rows.loaded_at[name]
                before = rows.aggregates.get(name)
                # No field set: built with no values (the slice's stand-in for an absent one)
                # and never updated since (a copy with changes sets the fields it changed).
                if state is before or (before is None and not state.model_fields_set):
                    writes.append(AggregateWrite(key, version))
                else:
                    json = state.model_dump_json()
                    writes.append(AggregateWrite(key, version, json))
        return writes


class InMemoryStateStore:
    """The fake `StateStore`: same contract, held in dicts (tests and demos without Redis)."""

    def __init__(self) -> None:
        self.aggregates: dict[str, tuple[int, str]] = {}
        self.sets: dict[str, set[str]] = {}
        self.zsets: dict[str, dict[str, float]] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.dedupe: set[str] = set()
        self.outbox: list[Envelope] = []
        self._lock = asyncio.Lock()

    async def load(
        self,
        keys: Sequence[str],
        checks: Sequence[tuple[str, str]] = (),
        follows: Sequence[FollowKey] = (),
    ) -> Snapshot:
        rows = [self._row(key) for key in keys]
        followed: list[tuple[str | None, Loaded]] = []
        for f in follows:
            state = rows[f.source].state
            ident = state.get(f.field) if isinstance(state, dict) else None
            ident = ident if isinstance(ident, str) else None
            followed.append((ident, self._row(f.key_prefix + ident) if ident else Loaded(0, None)))
        flags = [member in self.sets.get(key, ()) for key, member in checks]
        return Snapshot(rows, flags, followed)

    def _row(self, key: str) -> Loaded:
        version, raw = self.aggregates.get(key, (0, ""))
        return Loaded(version, orjson.loads(raw) if raw else None)

    async def commit(
        self,
        writes: Sequence[AggregateWrite],
        envelopes: Sequence[Envelope],
        *,
        index_ops: Sequence[IndexOp] = (),
        dedupe_key: str | None = None,
        group: str | None = None,
    ) -> CommitResult:
        keys = [w.key for w in writes] + [op.key for op in index_ops]
        if group is not None and (stray := outside(keys, group)):
            raise ValueError(f"a commit in group {group} writes keys outside it: {stray}")
        async with self._lock:
            if dedupe_key and dedupe_key in self.dedupe:
                return "duplicate"
            if any(self.aggregates.get(w.key, (0, ""))[0] != w.expected_version for w in writes):
                return "conflict"
            for w in writes:
                if w.state_json is not None:
                    self.aggregates[w.key] = (w.expected_version + 1, w.state_json)
            self.outbox.extend(envelopes)
            for op in index_ops:
                self._index(op)
            if dedupe_key:
                self.dedupe.add(dedupe_key)
            return "ok"

    def _index(self, op: IndexOp) -> None:
        if op.op == "SADD":
            self.sets.setdefault(op.key, set()).add(op.member)
        elif op.op == "SREM":
            self.sets.get(op.key, set()).discard(op.member)
        elif op.op == "ZADD":
            self.zsets.setdefault(op.key, {})[op.member] = op.score
        elif op.op == "ZREM":
            self.zsets.get(op.key, {}).pop(op.member, None)
        elif op.op == "DEL":
            self.sets.pop(op.key, None)
            self.zsets.pop(op.key, None)
        elif op.op == "HSETNX":
            self.hashes.setdefault(op.key, {}).setdefault(op.field, op.member)

    async def set_members(self, key: str) -> set[str]:
        return set(self.sets.get(key, ()))

    async def lowest(self, key: str, max_score: float, limit: int) -> list[str]:
        scored = sorted((s, m) for m, s in self.zsets.get(key, {}).items() if s <= max_score)
        return [m for _, m in scored[:limit]]

    async def claim(self, key: str, field: str, value: str) -> str:
        return self.hashes.setdefault(key, {}).setdefault(field, value)

    async def backlog(self) -> int:
        return len(self.outbox)
