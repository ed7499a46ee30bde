"""The three write services' stores, whole, on the in-memory state store: commands through
the kit's loop (plan, load, decide, evolve, commit) with no broker and no Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.connection import domain as cd
from services.connection.store import ConnectionStore
from services.engagement import domain as ed
from services.engagement.store import EngagementStore
from services.invitation import domain as idom
from services.invitation.consumers import expire_due
from services.invitation.main import rules_from
from services.invitation.store import InvitationStore
from shared import events as ev
from shared.commands import (
    AggregateWrite,
    CommitResult,
    IndexOp,
    InMemoryStateStore,
    Plan,
    Steps,
)
from shared.directory import Directory
from shared.domain import Conflict, Forbidden, NotFound, RateLimited
from shared.events import Envelope
from shared.settings import ConnectionSettings, EngagementSettings, InvitationSettings


def types(store: InMemoryStateStore) -> list[str]:
    return [e.type for e in store.outbox]


async def invitations(*members: str) -> tuple[InvitationStore, InMemoryStateStore]:
    state = InMemoryStateStore()
    settings = InvitationSettings()
    store = InvitationStore(state, settings, rules_from(settings))
    await directory(state, *members)
    return store, state


async def directory(state: InMemoryStateStore, *active: str, blocks: str = "") -> None:
    """What the connection service keeps in the member directory."""
    d = Directory.of(InvitationSettings())
    ops = [IndexOp("SADD", *d.is_active(m)) for m in active]
    ops += [IndexOp("SADD", *d.blocks_from(*pair.split(">"))) for pair in blocks.split() if pair]
    await state.commit([], [], index_ops=ops)


async def test_invite_accept_and_the_pending_indexes() -> None:
    store, state = await invitations("ann", "bob")
    sent = await store.run(idom.SendInvitation("i1", "ann", "bob", "hi"))
    assert sent.state is not None and sent.state.invitation is not None
    assert await store.pending_of("bob") == ["i1"]
    accepted = await store.run(idom.Accept("i1", "bob"))
    assert accepted.state.invitation.status == "accepted"  # type: ignore[union-attr]
    assert await store.pending_of("bob") == [] and await store.pending_of("ann") == []
    assert types(state) == ["InvitationSent", "InvitationAccepted"]
    with pytest.raises(Conflict):
        await store.run(idom.SendInvitation("i2", "ann", "bob"))


async def test_unknown_recipient_and_concurrent_invitations_for_one_pair() -> None:
    store, state = await invitations("ann", "bob")
    with pytest.raises(NotFound):
        await store.run(idom.SendInvitation("i0", "ann", "zed"))
    results = await asyncio.gather(
        *(store.run(idom.SendInvitation(f"i{n}", "ann", "bob")) for n in range(10)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, Exception))
    assert types(state) == ["InvitationSent"]


async def test_a_block_observed_from_the_connection_service_cancels_the_pending_invitation() -> (
    None
):
    store, state = await invitations("ann", "bob")
    await store.run(idom.SendInvitation("i1", "ann", "bob"))
    blocked = ev.MemberBlocked(blocker="bob", blocked="ann")
    cause = Envelope.wrap(blocked, producer="connection")
    await store.run(idom.React(blocked), observed=blocked, causation=cause, dedupe_key="seen:1")
    again = await store.run(idom.React(blocked), observed=blocked, dedupe_key="seen:1")
    assert again.duplicate
    inv = await store.invitation("i1")
    assert inv is not None and (inv.status, inv.reason) == ("cancelled", "blocked")
    assert inv.seen_by("ann").status == "pending"  # the blocked sender is not told
    assert types(state) == ["InvitationSent", "InvitationWithdrawn"]
    assert state.outbox[-1].causation_id == str(cause.event_id)
    with pytest.raises(NotFound):
        await store.run(idom.SendInvitation("i2", "ann", "bob"))
    # It stays due for expiry, so the sender sees it expire like an unanswered one.
    assert await store.pending_of("ann") == ["i1"]


async def test_expiry_sweep_expires_only_what_is_due() -> None:
    store, state = await invitations("ann", "bob", "cy")
    now = datetime.now(UTC)
    await store.run(idom.SendInvitation("old", "ann", "bob"), now=now - timedelta(days=181))
    await store.run(idom.SendInvitation("new", "ann", "cy"), now=now)
    assert await expire_due(store, now) == 1
    assert types(state)[-1] == "InvitationExpired"
    assert await store.pending_of("ann") == ["new"]


async def test_a_sender_who_is_no_member_and_a_block_in_the_directory_refuse() -> None:
    store, _ = await invitations("bob", "cy")
    with pytest.raises(Forbidden) as info:
        await store.run(idom.SendInvitation("i1", "ghost", "bob"))
    assert info.value.code == "not_allowed"
    state = store.store
    assert isinstance(state, InMemoryStateStore)
    await directory(state, "ann", blocks="bob>ann")
    with pytest.raises(NotFound) as missing:
        await store.run(idom.SendInvitation("i2", "ann", "bob"))
    assert missing.value.code == "member_not_found"


async def test_connection_register_connect_and_block() -> None:
    state = InMemoryStateStore()
    # In four groups: the fake, like Redis, refuses a commit that writes outside its group.
    store = ConnectionStore(state, ConnectionSettings(slot_groups=4))
    for m in ("ann", "bob"):
        industry = await store.canonical_industry("Tech")  # as the API claims it first
        await store.run(cd.RegisterMember(member_id=m, name=m, industry=industry))
    accepted = ev.InvitationAccepted(invitation_id="i1", sender="ann", recipient="bob")
    outcome = await store.accept(accepted, cap=30_000)
    assert outcome.first(ev.ConnectionAccepted) is not None
    assert await store.connections("ann") == ["bob"]
    bob = await store.member("bob")
    assert bob is not None and bob.connections == 1 and bob.places == {}
    d = Directory.of(ConnectionSettings(slot_groups=4))
    assert all(m in state.sets[d.is_active(m)[0]] for m in ("ann", "bob"))
    await store.block("bob", "ann")
    key, entry = d.blocks_from("bob", "ann")
    assert state.sets[key] == {entry}
    assert await store.connections("ann") == []
    assert (await store.member("bob")).connections == 0  # type: ignore[union-attr]
    # The first spelling registered names the group, whoever spells it later.
    assert await store.canonical_industry(" tech ") == "Tech"
    assert await store.canonical_industry("TECH") == "Tech"


async def test_a_command_writes_only_the_aggregates_it_changed() -> None:
    # An accept reads both members' lists (a disconnect would unlist) and the sender's
    # window: left as they were, they are checked, not written (no empty placeholders).
    state = InMemoryStateStore()
    store = ConnectionStore(state, ConnectionSettings())
    for m in ("ann", "bob"):
        await store.run(cd.RegisterMember(member_id=m, name=m, industry="Tech"))
    await store.accept(ev.InvitationAccepted(invitation_id="i1", sender="ann", recipient="bob"), 10)
    assert [k for k in state.aggregates if ":lists:" in k] == []
    assert {k.rsplit(":", 2)[-2] for k in state.aggregates} == {"member", "pair"}
    invites, istate = await invitations("ann", "bob")
    await invites.run(idom.SendInvitation("i1", "ann", "bob"))
    sender = next(k for k in istate.aggregates if ":sender:" in k)
    version = istate.aggregates[sender][0]
    await invites.run(idom.Accept("i1", "bob"))
    assert istate.aggregates[sender][0] == version  # read, not changed: not rewritten


async def test_engagement_limits_and_known_members() -> None:
    state = InMemoryStateStore()
    store = EngagementStore(state, EngagementSettings(per_actor_per_minute=2))
    with pytest.raises(Forbidden):  # ann is no member yet
        await store.run(ed.RecordEngagement("ann", "bob", "like"))
    await directory(state, "ann", "bob")
    for _ in range(2):
        await store.run(ed.RecordEngagement("ann", "bob", "like"))
    with pytest.raises(RateLimited):
        await store.run(ed.RecordEngagement("ann", "bob", "like"))
    await directory(state, blocks="bob>ann")
    with pytest.raises(NotFound):
        await store.run(ed.RecordEngagement("ann", "bob", "comment"))
    assert types(state) == ["EngagementRecorded", "EngagementRecorded"]


class CountingStore(InMemoryStateStore):
    """Counts commits: what a request costs in Redis round trips."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0

    async def commit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.commits += 1
        return await super().commit(*args, **kwargs)


async def test_with_one_slot_group_a_saga_takes_one_commit() -> None:
    """Send, accept and a connection's acceptance each commit once, members' sides included,
    and leave what the saga over several groups leaves."""
    state = CountingStore()
    settings = InvitationSettings()
    invites = InvitationStore(state, settings, rules_from(settings))
    connections = ConnectionStore(state, ConnectionSettings())
    await directory(state, "ann", "bob")
    for m in ("ann", "bob"):
        await connections.run(cd.RegisterMember(m, m.title(), "Tech"))
    state.commits = 0

    await invites.run(idom.SendInvitation("i1", "ann", "bob"))
    assert state.commits == 1
    assert await invites.pending_of("ann") == ["i1"] == await invites.pending_of("bob")
    accepted = await invites.run(idom.Accept("i1", "bob"))
    assert state.commits == 2 and await invites.pending_of("bob") == []
    assert accepted.state is not None and len(accepted.state.sender.recent) == 1

    invitation = accepted.first(ev.InvitationAccepted)
    assert invitation is not None
    made = await connections.accept(invitation.event(), cap=30_000)  # type: ignore[arg-type]
    assert state.commits == 3 and made.first(ev.ConnectionAccepted) is not None
    assert await connections.connections("ann") == ["bob"]
    ann = await connections.member("ann")
    assert ann is not None and ann.connections == 1 and ann.places == {}


async def test_a_step_its_commit_did_not_load_is_refused() -> None:
    """A step whose aggregates the command's slice lacks would lose its changes: refused."""
    state = InMemoryStateStore()
    settings = InvitationSettings()
    store = InvitationStore(state, settings, rules_from(settings))
    await directory(state, "ann", "bob")
    settle = idom.SettleSide(("ann", "bob"), "i1", "ann", touch=False)
    unloaded: Steps[idom.Slice, idom.Command] = Steps(
        Plan(group=store.groups.of("")), lambda _: [settle]
    )
    with pytest.raises(ValueError, match="did not load"):
        await store.run(idom.SendInvitation("i1", "ann", "bob"), then=unloaded)
    assert state.outbox == []


class MovedOnce(InMemoryStateStore):
    """The first commit finds an aggregate moved (another request won the race)."""

    moved = False

    async def commit(self, *args: Any, **kwargs: Any) -> CommitResult:
        if self.moved:
            self.moved = False
            return "conflict"
        return await super().commit(*args, **kwargs)


async def test_a_commit_that_met_a_moved_aggregate_is_retried_and_counted() -> None:
    state = MovedOnce()
    store = InvitationStore(state, InvitationSettings(), rules_from(InvitationSettings()))
    await directory(state, "ann", "bob")
    state.moved = True
    labels = {"service": "invitation", "command": "SendInvitation"}
    before = REGISTRY.get_sample_value("rapport_command_conflicts_total", labels) or 0
    sent = await store.run(idom.SendInvitation("i1", "ann", "bob"))
    assert sent.state is not None and sent.state.invitation is not None  # the retry landed
    assert types(state) == ["InvitationSent"]
    assert REGISTRY.get_sample_value("rapport_command_conflicts_total", labels) == before + 1


async def test_pending_lists_written_before_the_sets_are_still_read() -> None:
    """A member's pending list as an earlier version kept it (one JSON aggregate) is read
    beside their set, so an upgrade loses none (a deactivation cancels them all)."""
    store, state = await invitations("ann", "bob", "cat")
    legacy = store.key(store.groups.of("cat"), "pending-of", "cat")
    await state.commit([AggregateWrite.of(legacy, 0, {"ids": ["old1"]})], [])
    await store.run(idom.SendInvitation("i1", "ann", "cat"))
    assert await store.pending_of("cat") == ["i1", "old1"]
    assert await store.pending_of("ann") == ["i1"]
