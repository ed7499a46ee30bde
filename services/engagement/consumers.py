"""What the engagement service does with other services' events: keep the members and
blocks its rules need."""

from __future__ import annotations

from services.engagement.store import EngagementStore
from shared import events as ev
from shared.consumer import ConsumedEvent, Subscription
from shared.topics import CONNECTIONS, MEMBERS


class EngagementConsumers:
    def __init__(self, store: EngagementStore) -> None:
        self.store = store

    def subscriptions(self) -> list[Subscription]:
        fold = self.fold_member_or_block
        return [
            Subscription(
                "rules",
                [MEMBERS, CONNECTIONS],
                {
                    ev.MemberRegistered: fold,
                    ev.MemberDeactivated: fold,
                    ev.MemberBlocked: fold,
                    ev.MemberUnblocked: fold,
                },
            )
        ]

    async def fold_member_or_block(self, consumed: ConsumedEvent) -> None:
        await self.store.fold(consumed.event, consumed.dedupe_key)
