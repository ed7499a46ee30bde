"""Connection state on the kit's command loop, laid out in slot groups so that the service
runs on Redis Cluster: a member's aggregate, lists and connections index in the member's
group, a pair's aggregate in the pair's group, each commit in one of them. The sagas that
span a pair and its two members (accept, remove, block, deactivate) run here, one command per
owner, in the order `services.connection.domain` describes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime

from cachetools import LRUCache
from pydantic import BaseModel

from services.connection import domain
from services.connection.domain import Lists, Member, Pair, Slice
from shared import events as ev
from shared.commands import (
    Change,
    CommandLoop,
    IndexOp,
    IndexOpName,
    Outcome,
    Plan,
    Rows,
    StateStore,
    Steps,
)
from shared.directory import Directory
from shared.events import Envelope
from shared.groups import KeyLayout, tag
from shared.settings import ConnectionSettings
from shared.topics import pair_key

Aggregates = dict[str, tuple[str, type[BaseModel]]]
# Industries whose first spelling a process keeps (an industry is a handful of bytes; the
# bound stops a client that names endless new ones from growing the process).
INDUSTRY_SPELLINGS_KEPT = 10_000


class ConnectionStore(CommandLoop[Slice, domain.Command]):
    producer = ConnectionSettings.service  # whose answers the invitation service knows
    layout = KeyLayout.SLOT_GROUPS

    def __init__(self, store: StateStore, settings: ConnectionSettings) -> None:
        super().__init__(store, self)
        self.groups = settings.groups
        # Every key carries its owner's group tag: a member's keys, or a pair's.
        self.key = lambda kind, owner: settings.key(
            "connection", tag(self.groups.of(owner)), kind, owner
        )
        self.industries = settings.key("connection", "industries")
        # An industry's first spelling, once claimed, is never replaced: a process may keep
        # what Redis answered and spare the round trip on every registration naming it.
        self._spellings: LRUCache[str, str] = LRUCache(maxsize=INDUSTRY_SPELLINGS_KEPT)
        self.directory = Directory.of(settings)
        self.at_once = self.groups.single  # a saga's steps in one commit

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
        """The first spelling seen of this industry's group, so aggregates group by one name.
        Claimed before the command that names it (one key, outside the member's group)."""
        text = " ".join(industry.split())
        group = ev.grouping_key(text)
        spelling = self._spellings.get(group)
        if spelling is None:
            spelling = self._spellings[group] = await self.store.claim(self.industries, group, text)
        return spelling

    # the sagas across a pair and its members ------------------------------------------------
    async def accept(
        self,
        invitation: ev.InvitationAccepted,
        cap: int,
        *,
        causation: Envelope | None = None,
        dedupe_key: str | None = None,
    ) -> Outcome[Slice]:
        """An accepted invitation: both members hold a place (at once), the pair decides,
        both members' sides follow. Each step is keyed by the invitation, so a retry of the
        whole (the consumer's redelivery) repeats them harmlessly."""
        s, r, i = invitation.sender, invitation.recipient, invitation.invitation_id
        if self.at_once:

            def decided(state: Slice) -> list[domain.Command]:
                refusals = tuple(
                    (m, reason)
                    for m in dict.fromkeys((s, r))
                    if (reason := domain.place_refusal(state.member(m), i, cap, state.now))
                )
                return [domain.AcceptConnection(i, s, r, refusals), self._reconcile(s, r, i)]

            steps: Steps[Slice, domain.Command] = Steps(self._sides(s, r), decided)
            hold = domain.HoldPlace((s, r), i, cap)
            return await self.run(hold, then=steps, causation=causation, dedupe_key=dedupe_key)
        why = await self._hold((s, r), i, cap)
        refusals = tuple((m, reason) for m in dict.fromkeys((s, r)) if (reason := why[m]))
        outcome = await self.run(
            domain.AcceptConnection(i, s, r, refusals), causation=causation, dedupe_key=dedupe_key
        )
        await self.settle(s, r, invitation_id=i)
        return outcome

    async def _hold(
        self, members: Sequence[str], invitation_id: str, cap: int
    ) -> dict[str, ev.RejectionReason | None]:
        """Each member holds a place (one commit per group, at once); what each refused."""
        groups = self.groups.split(members)
        held = await asyncio.gather(
            *(self.run(domain.HoldPlace(ms, invitation_id, cap)) for ms in groups)
        )
        why: dict[str, ev.RejectionReason | None] = {}
        for ms, outcome in zip(groups, held, strict=True):
            assert outcome.state is not None
            for m in ms:
                why[m] = domain.place_refusal(
                    outcome.state.member(m), invitation_id, cap, outcome.state.now
                )
        return why

    async def settle(
        self, a: str, b: str, *, invitation_id: str | None = None, touch: bool = True
    ) -> list[Envelope]:
        """Both members' sides of their pair follow the pair (one commit per group, at
        once); a member who was deactivated meanwhile loses the connection. The events this
        published (lists)."""
        groups = self.groups.split((a, b))
        sides = await asyncio.gather(
            *(self.run(domain.Reconcile((a, b), ms, invitation_id, touch)) for ms in groups)
        )
        envelopes = [e for side in sides for e in side.envelopes]
        for ms, side in zip(groups, sides, strict=True):
            state = side.state
            for member in ms:
                other = b if member == a else a
                who = state.member(member) if state else None
                if state and who and not who.active and state.pair(member, other).connected:
                    return envelopes + await self.end(member, other)
        return envelopes

    async def end(self, member_id: str, other: str) -> list[Envelope]:
        """A deactivated member's connection ends, then both sides follow."""
        return await self._then_sides(domain.EndConnection(member_id, other), member_id, other)

    async def remove(self, actor: str, other: str) -> list[Envelope]:
        return await self._then_sides(domain.RemoveConnection(actor, other), actor, other)

    async def block(self, actor: str, other: str) -> list[Envelope]:
        return await self._then_sides(domain.Block(actor, other), actor, other)

    async def _then_sides(self, command: domain.Command, a: str, b: str) -> list[Envelope]:
        """The pair's command, then both members' sides: in its commit with one group, else
        as the next steps of a saga (when the pair changed)."""
        if self.at_once:
            sides: Steps[Slice, domain.Command] = Steps(
                self._sides(a, b), lambda _: [self._reconcile(a, b)]
            )
            return (await self.run(command, then=sides)).envelopes
        outcome = await self.run(command)
        if outcome.first(ev.ConnectionRemoved) is None:
            return outcome.envelopes  # the pair stays as it was: so do its sides
        return outcome.envelopes + await self.settle(a, b)

    def _sides(self, a: str, b: str) -> Plan:
        """What both members' sides read beside their pair's command (one group)."""
        members = {k: v for m in (a, b) for k, v in (self._member(m) | self._lists(m)).items()}
        indexed = {f"indexed:{m}": self._indexed(m, o) for m, o in ((a, b), (b, a))}
        return Plan(members | self._pair(a, b), indexed, group=self.groups.of(""))

    @staticmethod
    def _reconcile(a: str, b: str, invitation_id: str | None = None) -> domain.Reconcile:
        return domain.Reconcile((a, b), (a, b), invitation_id, touch=False)

    async def deactivate(self, member_id: str) -> list[Envelope]:
        """The member first (out of the directory at once), then each connection ends."""
        deactivated = await self.run(domain.DeactivateMember(member_id))
        return deactivated.envelopes + await self.end_connections(member_id)

    async def end_connections(self, member_id: str) -> list[Envelope]:
        envelopes: list[Envelope] = []
        for other in await self.connections(member_id):
            envelopes += await self.end(member_id, other)
        return envelopes

    async def fold(self, event: Change, at: datetime) -> None:
        """A replay folds the pair's event, then each member's side of it, each in its group;
        and claims an industry's first spelling as the API did."""
        industry = getattr(event, "industry", None)
        if isinstance(event, ev.MemberRegistered | ev.MemberProfileUpdated) and industry:
            await self.store.claim(self.industries, ev.grouping_key(industry), industry)
        await super().fold(event, at)
        if isinstance(event, ev.Event):
            for side in domain.member_sides(event):
                await super().fold(side, at)

    # the loop's WriteModel -----------------------------------------------------------------
    async def plan(self, command: domain.Command | None, observed: ev.Event | None) -> Plan:
        d = self.directory
        actor = domain.actor_of(command) if command is not None else None
        checks = {"actor_known": d.is_active(actor)} if actor else {}
        match command:
            case (
                domain.RegisterMember(member_id=m)
                | domain.UpdateProfile(member_id=m)
                | domain.DeactivateMember(member_id=m)
            ):
                return Plan(self._member(m), checks, group=self.groups.of(m))
            case domain.HoldPlace(members=ms):
                members = {k: v for m in ms for k, v in self._member(m).items()}
                return Plan(members, group=self.groups.of(ms[0]))
            case domain.Reconcile(pair=(a, b), members=ms):
                sides = {k: v for m in ms for k, v in (self._member(m) | self._lists(m)).items()}
                return Plan(
                    sides,
                    {f"indexed:{m}": self._indexed(m, command.other(m)) for m in ms},
                    group=self.groups.of(ms[0]),
                    reads=self._pair(a, b),
                )
            case (
                domain.ListConnection(owner=m, other=o) | domain.UnlistConnection(owner=m, other=o)
            ):
                indexed = {f"indexed:{m}": self._indexed(m, o)}
                return Plan(
                    self._member(m) | self._lists(m), checks | indexed, group=self.groups.of(m)
                )
            case (
                domain.AcceptConnection(sender=a, recipient=b)
                | domain.EndConnection(member_id=a, other=b)
                | domain.RemoveConnection(actor=a, other=b)
                | domain.Unblock(actor=a, other=b)
                | domain.Unfollow(actor=a, other=b)
            ):
                return Plan(self._pair(a, b), checks, group=self.groups.of(pair_key(a, b)))
            case domain.Block(actor=a, other=b) | domain.Follow(actor=a, other=b):
                known = {"other_known": d.is_active(b)}
                return Plan(self._pair(a, b), checks | known, group=self.groups.of(pair_key(a, b)))
        raise TypeError(f"unknown command {command!r}")

    def plan_event(self, event: Change) -> Plan:
        """The owner a change of this service belongs to (a replay folds each in its group)."""
        match event:
            case (
                ev.MemberRegistered(member_id=m)
                | ev.MemberProfileUpdated(member_id=m)
                | ev.MemberDeactivated(member_id=m)
                | domain.MemberConnected(member_id=m)
                | domain.MemberDisconnected(member_id=m)
            ):
                return Plan(self._member(m), group=self.groups.of(m))
            case ev.ConnectionListed(owner=o) | ev.ConnectionUnlisted(owner=o):
                return Plan(self._lists(o), group=self.groups.of(o))
            case (
                ev.ConnectionAccepted(member_a=a, member_b=b)
                | ev.ConnectionRemoved(member_a=a, member_b=b)
                | ev.ConnectionRejected(sender=a, recipient=b)
                | ev.MemberBlocked(blocker=a, blocked=b)
                | ev.MemberUnblocked(blocker=a, blocked=b)
                | ev.FollowStarted(follower=a, followee=b)
                | ev.FollowStopped(follower=a, followee=b)
            ):
                return Plan(self._pair(a, b), group=self.groups.of(pair_key(a, b)))
        return Plan()  # another service's event: nothing of ours changes

    def slice(self, command: domain.Command | None, rows: Rows, now: datetime) -> Slice:
        by_kind: dict[str, dict[str, BaseModel | None]] = {"member": {}, "pair": {}, "lists": {}}
        for name, value in rows.aggregates.items():
            kind, _, ident = name.partition(":")
            by_kind[kind][ident] = value
        return Slice(
            now=now,
            actor_known=rows.checks.get("actor_known", True),
            other_known=rows.checks.get("other_known", True),
            indexed=frozenset(
                name.removeprefix("indexed:")
                for name, found in rows.checks.items()
                if name.startswith("indexed:") and found
            ),
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

    def index_ops(self, events: Sequence[Change], now: datetime) -> list[IndexOp]:
        """The connections index (each member's side, in their group), and the member
        directory other services read (a member's entry in theirs, a block in the pair's)."""
        ops: list[IndexOp] = []
        d = self.directory
        for e in events:
            match e:
                case domain.MemberConnected(member_id=m, other=o):
                    ops.append(IndexOp("SADD", self.key("connections", m), o))
                case domain.MemberDisconnected(member_id=m, other=o):
                    ops.append(IndexOp("SREM", self.key("connections", m), o))
                case ev.MemberRegistered(member_id=m) | ev.MemberDeactivated(member_id=m):
                    op: IndexOpName = "SADD" if isinstance(e, ev.MemberRegistered) else "SREM"
                    ops.append(IndexOp(op, *d.is_active(m)))
                case (
                    ev.MemberBlocked(blocker=a, blocked=b)
                    | ev.MemberUnblocked(blocker=a, blocked=b)
                ):
                    op = "SADD" if isinstance(e, ev.MemberBlocked) else "SREM"
                    ops.append(IndexOp(op, *d.blocks_from(a, b)))
        return ops

    def _indexed(self, member: str, other: str) -> tuple[str, str]:
        """A set-membership check: `other` is in `member`'s connections index."""
        return self.key("connections", member), other

    def _member(self, m: str) -> Aggregates:
        return {f"member:{m}": (self.key("member", m), Member)}

    def _lists(self, owner: str) -> Aggregates:
        return {f"lists:{owner}": (self.key("lists", owner), Lists)}

    def _pair(self, a: str, b: str) -> Aggregates:
        p = pair_key(a, b)
        return {f"pair:{p}": (self.key("pair", p), Pair)}
