"""Subscribers of the engagement service: the members and blocks its rules need."""

from __future__ import annotations

from services.engagement.store import EngagementStore
from shared.consumer import ConsumedEvent
from shared.service import Runtime
from shared.settings import EngagementSettings
from shared.topics import CONNECTIONS, MEMBERS


def register(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, EngagementSettings)
    store = EngagementStore(runtime.redis, runtime.outbox, settings)
    runtime.store = store

    async def fold_members_and_blocks(events: list[ConsumedEvent]) -> None:
        for consumed in events:
            await store.fold(consumed.event, consumed.dedupe_key)

    runtime.consumer("rules", fold_members_and_blocks, [MEMBERS, CONNECTIONS])
