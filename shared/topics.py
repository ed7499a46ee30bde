"""Topic names, partition counts and partition-key rules, in one place."""

from __future__ import annotations

MEMBERS = "rapport.members"
INVITATIONS = "rapport.invitations"
CONNECTIONS = "rapport.connections"
ENGAGEMENTS = "rapport.engagements"

ALL_TOPICS = (MEMBERS, INVITATIONS, CONNECTIONS, ENGAGEMENTS)

# Enough partitions to spread a consumer group over a few replicas; DLQs are low volume.
# (The local stack on one machine takes fewer: see `TopicNames.partitions`.)
PARTITIONS = {MEMBERS: 6, INVITATIONS: 12, CONNECTIONS: 12, ENGAGEMENTS: 12}
DLQ_PARTITIONS = 1


def pair_key(a: str, b: str) -> str:
    """The unordered pair `a|b` with a < b, so both directions of a pair share a partition."""
    return f"{a}|{b}" if a < b else f"{b}|{a}"


def dlq(topic: str) -> str:
    return f"{topic}.dlq"


class TopicNames:
    """Topic names under an optional namespace, so tests and parallel stacks never collide."""

    def __init__(self, namespace: str = "") -> None:
        self.namespace = namespace

    def __call__(self, topic: str) -> str:
        return f"{self.namespace}{topic}"

    def logical(self, physical: str) -> str:
        """The catalog name of a namespaced topic (what events declare as their topic)."""
        return physical.removeprefix(self.namespace)

    @property
    def all(self) -> list[str]:
        return [self(t) for t in ALL_TOPICS]

    def partitions(self, per_topic: int | None = None) -> dict[str, int]:
        """Every topic Rapport needs (with DLQs) and its partition count: `PARTITIONS`, or
        `per_topic` for every event topic (the local stack: as many as its replicas, since
        a broker pays for every partition on every fetch, and one machine gains nothing
        from partitions no consumer of its own needs)."""
        counts = {self(t): per_topic or n for t, n in PARTITIONS.items()}
        counts.update({dlq(self(t)): DLQ_PARTITIONS for t in ALL_TOPICS})
        return counts
