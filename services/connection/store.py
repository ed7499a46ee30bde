"""Connection state on the kit's command loop: the members, pairs and lists a command
touches, and the connections index its events keep."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from pydantic import BaseModel

from services.connection import domain
from services.connection.domain import Lists, Member, Pair, Slice
from shared import events as ev
from shared.commands import CommandLoop, IndexOp, IndexOpName, Plan, Rows, StateStore
from shared.directory import Directory
from shared.groups import KeyLayout
from shared.settings import ConnectionSettings
from shared.topics import pair_key


class ConnectionStore(CommandLoop[Slice, domain.Command]):
    producer = "connection"
    # One commit spans a pair, both members and the directory: one Redis node (issue #17).
    layout = KeyLayout.ONE_NODE

    def __init__(self, store: StateStore, settings: ConnectionSettings) -> None:
        super().__init__(store, self)
        self.key = lambda *parts: settings.key("connection", *parts)
        self.directory = Directory.of(settings)

    async def member(self, member_id: str) -> Member | None:
        [row] = (await self.store.load([self.key("member", member_id)])).rows
        return Member.model_validate(row.state) if row.state else None

    async def profile(self, member_id: str, viewer: str | None) -> Member | None:
        """The member as `viewer` may see them: None when not active or blocked either way."""
        d = self.directory
        checks = (
            [d.blocks_from(member_id, viewer), d.blocks_from(viewer, member_id)] if viewer else []
        )
        snapshot = await self.store.load([self.key("member", member_id)], checks)
        [row] = snapshot.rows
        member = Member.model_validate(row.state) if row.state else None
        if member is None or not member.active or any(snapshot.checks):
            return None
        return member

    async def connections(self, member_id: str) -> list[str]:
        return sorted(await self.store.set_members(self.key("connections", member_id)))

    async def canonical_industry(self, industry: str) -> str:
        """The first spelling seen of this industry's group, so aggregates group by one name."""
        text = " ".join(industry.split())
        return await self.store.claim(self.key("industries"), ev.grouping_key(text), text)

    # the loop's WriteModel -----------------------------------------------------------------
    async def plan(self, command: domain.Command | None, observed: ev.Event | None) -> Plan:
        members, pairs, lists = slice_of(command)
        actor = domain.actor_of(command) if command is not None else None
        return Plan(
            {f"member:{m}": (self.key("member", m), Member) for m in members}
            | {f"pair:{pair_key(a, b)}": (self.key("pair", pair_key(a, b)), Pair) for a, b in pairs}
            | {f"lists:{o}": (self.key("lists", o), Lists) for o in lists},
            {"actor_known": self.directory.is_active(actor)} if actor else {},
        )

    def plan_event(self, event: ev.Event) -> Plan:
        members, pairs, lists = touched_by(event)
        return Plan(
            {f"member:{m}": (self.key("member", m), Member) for m in members}
            | {f"pair:{pair_key(a, b)}": (self.key("pair", pair_key(a, b)), Pair) for a, b in pairs}
            | {f"lists:{o}": (self.key("lists", o), Lists) for o in lists}
        )

    def slice(self, command: domain.Command | None, rows: Rows, now: datetime) -> Slice:
        by_kind: dict[str, dict[str, BaseModel | None]] = {"member": {}, "pair": {}, "lists": {}}
        for name, value in rows.aggregates.items():
            kind, _, ident = name.partition(":")
            by_kind[kind][ident] = value
        return Slice(
            now=now,
            actor_known=rows.checks.get("actor_known", True),
            members=by_kind["member"],  # type: ignore[arg-type]
            pairs={k: v or Pair() for k, v in by_kind["pair"].items()},  # type: ignore[misc]
            lists={k: v or Lists() for k, v in by_kind["lists"].items()},  # type: ignore[misc]
        )

    def aggregates(self, state: Slice) -> Mapping[str, BaseModel | None]:
        return (
            {f"member:{m}": v for m, v in state.members.items()}
            | {f"pair:{k}": v for k, v in state.pairs.items()}
            | {f"lists:{o}": v for o, v in state.lists.items()}
        )

    decide = staticmethod(domain.decide)
    evolve = staticmethod(domain.evolve)

    def index_ops(self, events: Sequence[ev.Event], now: datetime) -> list[IndexOp]:
        """The connections index, and the member directory other services read."""
        ops: list[IndexOp] = []
        d = self.directory
        for e in events:
            match e:
                case ev.ConnectionAccepted(member_a=a, member_b=b):
                    ops += [IndexOp("SADD", self.key("connections", a), b)]
                    ops += [IndexOp("SADD", self.key("connections", b), a)]
                case ev.ConnectionRemoved(member_a=a, member_b=b):
                    ops += [IndexOp("SREM", self.key("connections", a), b)]
                    ops += [IndexOp("SREM", self.key("connections", b), a)]
                case ev.MemberRegistered(member_id=m) | ev.MemberDeactivated(member_id=m):
                    op: IndexOpName = "SADD" if isinstance(e, ev.MemberRegistered) else "SREM"
                    ops.append(IndexOp(op, *d.is_active(m)))
                case (
                    ev.MemberBlocked(blocker=a, blocked=b)
                    | ev.MemberUnblocked(blocker=a, blocked=b)
                ):
                    op = "SADD" if isinstance(e, ev.MemberBlocked) else "SREM"
                    ops.append(IndexOp(op, *d.blocks_from(a, b)))
            # The first spelling of an industry names its group (claimed by the API before
            # the command; kept here too, so a replay of the log claims the same).
            industry = getattr(e, "industry", None)
            if isinstance(e, ev.MemberRegistered | ev.MemberProfileUpdated) and industry:
                claim = IndexOp("HSETNX", self.key("industries"), industry)
                ops.append(replace(claim, field=ev.grouping_key(industry)))
        return ops


def touched_by(
    event: ev.Event,
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The members, pairs and lists an event of this service changes (a replay's plan)."""
    match event:
        case ev.MemberRegistered(member_id=m) | ev.MemberProfileUpdated(member_id=m):
            return (m,), (), ()
        case ev.MemberDeactivated(member_id=m):
            return (m,), (), ()
        case (
            ev.ConnectionAccepted(member_a=a, member_b=b)
            | ev.ConnectionRemoved(member_a=a, member_b=b)
        ):
            return (a, b), ((a, b),), ()
        case ev.ConnectionRejected(sender=a, recipient=b):
            return (), ((a, b),), ()
        case ev.MemberBlocked(blocker=a, blocked=b) | ev.MemberUnblocked(blocker=a, blocked=b):
            return (), ((a, b),), ()
        case ev.FollowStarted(follower=a, followee=b) | ev.FollowStopped(follower=a, followee=b):
            return (), ((a, b),), ()
        case ev.ConnectionListed(owner=o) | ev.ConnectionUnlisted(owner=o):
            return (), (), (o,)
    return (), (), ()  # another service's event: nothing of ours changes


def slice_of(
    command: domain.Command | None,
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
