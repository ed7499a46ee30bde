"""Two replicas of every service (`rapport run --replicas 2`: two processes behind each port,
each with its own consumers, outbox relays and sweeps), every service's keys on a real
three-node Redis Cluster (the write services' in slot groups, the projection's by member),
under the races the single-process tests hold: one invitation per pair, the connection cap,
accept against withdraw; then 10,000 accepted invitations (some refused at the cap), after
which the read models must equal a clean rebuild."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rapport.client import RapportClient, RapportError
from services.invitation.api import InvitationPublic
from tests.e2e.conftest import Stack, running_stack
from tests.e2e.driver import agrees_with_a_rebuild
from tests.helpers import ADMIN_TOKEN, OPS_TOKEN, TOKEN, Infra, random_id

pytestmark = pytest.mark.e2e

CAP = 50  # the connection cap of this stack, small enough to reach over HTTP
SLOT_GROUPS = 12  # the write services' groups, spread over the cluster's three primaries
# Accepted invitations of the busy-network test, among 500 members (some refused at the cap):
# about 4 minutes here, most of it the client's 20,000 requests on the same two cores.
CONNECTIONS = 10_000


@pytest.fixture(scope="module")
def replicated(
    infra: Infra, redis_cluster_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    logs = Path(tmp_path_factory.mktemp("replica-logs"))
    on_cluster = {
        "REDIS_URL": redis_cluster_url,
        "READ_MODEL_REDIS_URL": redis_cluster_url,
        "RAPPORT_REDIS_CLUSTER": "1",  # every service
        "RAPPORT_SLOT_GROUPS": str(SLOT_GROUPS),
        "RAPPORT_CONNECTION_CONNECTION_CAP": str(CAP),
    }
    with running_stack(infra, logs, workers=2, extra_env=on_cluster) as stack:
        # The client reads the read models' digest on the cluster.
        yield replace(stack, env={**stack.env, "CLUSTER_URL": redis_cluster_url})


async def members(rapport: RapportClient, n: int) -> list[str]:
    names = [f"r{random_id(8)}" for _ in range(n)]
    for m in names:
        await rapport.register(m, m, "Technology")
    return names


async def outcome(call: Awaitable[InvitationPublic]) -> tuple[int, str | None]:
    """The HTTP status an invitation write got (2xx as 200, a refusal as its status) and
    the event it led to."""
    try:
        return 200, (await call).event_id
    except RapportError as exc:
        return exc.status, None


@pytest.mark.timeout(120)
async def test_fifty_concurrent_invitations_for_one_pair_make_one(replicated: Stack) -> None:
    async with RapportClient(replicated.urls, TOKEN, timeout=30) as rapport:
        a, b = await members(rapport, 2)
        answers = await asyncio.gather(*(outcome(rapport.invite(a, b)) for _ in range(50)))
        assert Counter(status for status, _ in answers) == {200: 1, 409: 49}
        sent = next(event for _, event in answers if event)
        pending = await rapport.pending(b, "received", after=sent)
        assert [i.from_ for i in pending.items] == [a]


@pytest.mark.timeout(180)
async def test_the_cap_holds_under_concurrent_accepts(replicated: Stack) -> None:
    async with RapportClient(replicated.urls, TOKEN, timeout=30) as rapport:
        hub, *others = await members(rapport, 2 * CAP + 1)
        sent = [await rapport.invite(m, hub) for m in others]
        accepted = await asyncio.gather(*(rapport.accept(hub, s.invitation_id) for s in sent))
        # `after` each acceptance: the connection (or the refusal) it leads to is applied.
        degrees = [
            (await rapport.degree(hub, m, after=done.event_id, wait_ms=10_000)).degree
            for m, done in zip(others, accepted, strict=True)
        ]
        assert degrees.count(1) == CAP
        summary = await rapport.summary(hub, after=accepted[-1].event_id)
        assert summary.connections == CAP


@pytest.mark.timeout(180)
async def test_accept_against_withdraw_one_wins_and_the_network_agrees(
    replicated: Stack,
) -> None:
    async with RapportClient(replicated.urls, TOKEN, timeout=30) as rapport:
        people = await members(rapport, 40)
        pairs = list(zip(people[::2], people[1::2], strict=True))
        sent = [await rapport.invite(a, b) for a, b in pairs]
        races = [
            asyncio.gather(
                outcome(rapport.accept(b, s.invitation_id)),
                outcome(rapport.withdraw(a, s.invitation_id)),
            )
            for (a, b), s in zip(pairs, sent, strict=True)
        ]
        results = await asyncio.gather(*races)
        assert all(sorted(s for s, _ in r) == [200, 409] for r in results), results
        for (a, b), ((accepted, e1), (_, e2)) in zip(pairs, results, strict=True):
            seen = await rapport.degree(a, b, after=e1 or e2, wait_ms=10_000)
            assert seen.degree == (1 if accepted == 200 else None), (a, b)


# 12 minutes alone on a slow 2-core machine; the bound is against a hang.
@pytest.mark.timeout(1800)
async def test_ten_thousand_accepted_invitations_on_two_replicas_equal_a_rebuild(
    replicated: Stack,
) -> None:
    rng = random.Random(3)
    async with RapportClient(replicated.urls, TOKEN, timeout=60) as rapport:
        people = await members(rapport, 500)
        pairs: set[tuple[str, ...]] = set()
        while len(pairs) < CONNECTIONS:
            pairs.add(tuple(sorted(rng.sample(people, 2))))
        gate = asyncio.Semaphore(32)

        async def connect(a: str, b: str) -> None:
            async with gate:
                sent = await rapport.invite(a, b)
                await rapport.accept(b, sent.invitation_id)

        await asyncio.gather(*(connect(a, b) for a, b in pairs))
    await asyncio.to_thread(
        agrees_with_a_rebuild,
        replicated.urls,
        replicated.env["KAFKA_BOOTSTRAP_SERVERS"],
        replicated.env["CLUSTER_URL"],
        OPS_TOKEN,
        ADMIN_TOKEN,
        replicated.namespace,
        cluster=True,
    )
