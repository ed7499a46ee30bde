"""What the engagement service does with other services' events: nothing it must keep.
Its rules need who is an active member and who blocked whom, which it reads from the
member directory the connection service keeps (`shared.directory`) in the same round trip
as its own state, so a member or a block answered 2xx is never contradicted here."""

from __future__ import annotations

from services.engagement.store import EngagementStore
from shared.consumer import Subscription


class EngagementConsumers:
    def __init__(self, store: EngagementStore) -> None:
        self.store = store

    def subscriptions(self) -> list[Subscription]:
        return []
