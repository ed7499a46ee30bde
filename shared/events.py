"""The event catalog: one frozen pydantic model per domain event, and the envelope they travel in.

Evolution rule: add optional fields only. A breaking change bumps the class's `schema_version`
and registers an upcaster from the previous version, so old records on the topics still load.
Forward compatible: a consumer that does not know a field yet ignores it (a newer producer may
add one during a rolling deploy), and the envelope keeps unknown fields when it is re-sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from shared.text import fold
from shared.topics import CONNECTIONS, ENGAGEMENTS, INVITATIONS, MEMBERS, pair_key

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# The longest invitation message an event carries (`message_max_chars` may not exceed it).
MESSAGE_MAX_CHARS = 2000
MemberId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
EntityId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
ShortText = Annotated[str, StringConstraints(max_length=200)]
ListName = Annotated[str, StringConstraints(pattern=ID_PATTERN)]

EngagementKind = Literal[
    "like", "comment", "share", "message", "congratulate", "endorse", "recommend"
]
MilestoneKind = Literal["work_anniversary", "promotion", "new_job"]
RejectionReason = Literal["cap_reached", "blocked", "deactivated", "unknown_member"]
RemovalReason = Literal["removed", "blocked", "deactivated"]


class Event(BaseModel):
    """Base of every domain event: frozen, keyed for partitioning. A field this code does not
    know is ignored (added by a newer producer), never a reason to refuse the event."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    topic: ClassVar[str]
    schema_version: ClassVar[int] = 1

    @property
    def partition_key(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} must define its partition key")


class MemberEvent(Event):
    topic: ClassVar[str] = MEMBERS
    member_id: MemberId

    @property
    def partition_key(self) -> str:
        return self.member_id


class PairEvent(Event):
    """Events about two members, keyed by the unordered pair so both sides land in order."""

    @property
    def _pair(self) -> tuple[str, str]:
        raise NotImplementedError

    @model_validator(mode="after")
    def _two_members(self) -> PairEvent:
        a, b = self._pair
        if a == b:
            raise ValueError(f"a pair needs two different members, not {a!r} twice")
        return self

    @property
    def partition_key(self) -> str:
        return pair_key(*self._pair)


# --- rapport.members -------------------------------------------------------------------------


# The profile fields a member has, in this order wherever a profile is listed or stored.
PROFILE_FIELDS = ("name", "industry", "headline", "location", "employer", "title")


def grouping_key(text: str) -> str:
    """Grouping key of free profile text (an industry, a filter): case and spacing do not
    make a new value, nor do look-alike Unicode forms or invisible characters."""
    return fold(text)


class MemberRegistered(MemberEvent):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    industry: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    headline: ShortText | None = None
    location: ShortText | None = None
    employer: ShortText | None = None
    title: ShortText | None = None


class MemberProfileUpdated(MemberEvent):
    """Carries only the fields that changed; `None` means unchanged."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    industry: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    headline: ShortText | None = None
    location: ShortText | None = None
    employer: ShortText | None = None
    title: ShortText | None = None
    previous_industry: Annotated[str, StringConstraints(max_length=100)] | None = None


class MemberDeactivated(MemberEvent):
    pass


# --- rapport.invitations ---------------------------------------------------------------------


class InvitationEvent(PairEvent):
    topic: ClassVar[str] = INVITATIONS
    invitation_id: EntityId
    sender: MemberId
    recipient: MemberId

    @property
    def _pair(self) -> tuple[str, str]:
        return (self.sender, self.recipient)

    @property
    def hidden_from_sender(self) -> bool:
        """This outcome is kept from the sender: they go on seeing the invitation pending
        until it expires or they withdraw it (a decline, or the recipient's block)."""
        return False


class InvitationSent(InvitationEvent):
    message: Annotated[str, StringConstraints(max_length=MESSAGE_MAX_CHARS)] | None = None


class InvitationAccepted(InvitationEvent):
    pass


class InvitationDeclined(InvitationEvent):
    reported: bool = False

    @property
    def hidden_from_sender(self) -> bool:
        return True


class InvitationWithdrawn(InvitationEvent):
    """Withdrawn by the sender, or cancelled by the system (`reason`) when a block or a
    deactivation makes the invitation moot."""

    reason: Literal["blocked", "deactivated"] | None = None
    # Who blocked (with reason "blocked"): it decides who is shown what (never "cancelled").
    blocker: MemberId | None = None

    @property
    def hidden_from_sender(self) -> bool:
        return self.reason == "blocked" and self.blocker == self.recipient


class InvitationExpired(InvitationEvent):
    pass


# --- rapport.connections ---------------------------------------------------------------------


class ConnectionEvent(PairEvent):
    topic: ClassVar[str] = CONNECTIONS


class ConnectionAccepted(ConnectionEvent):
    """The two members are connected, and from now on each follows the other (no
    FollowStarted comes with it; FollowStopped ends a follow as usual)."""

    member_a: MemberId
    member_b: MemberId
    invitation_id: EntityId | None = None

    @property
    def _pair(self) -> tuple[str, str]:
        return (self.member_a, self.member_b)


class ConnectionRemoved(ConnectionEvent):
    member_a: MemberId
    member_b: MemberId
    removed_by: MemberId
    reason: RemovalReason = "removed"

    @property
    def _pair(self) -> tuple[str, str]:
        return (self.member_a, self.member_b)


class ConnectionRejected(ConnectionEvent):
    invitation_id: EntityId
    sender: MemberId
    recipient: MemberId
    reason: RejectionReason

    @property
    def _pair(self) -> tuple[str, str]:
        return (self.sender, self.recipient)


class BlockEvent(ConnectionEvent):
    blocker: MemberId
    blocked: MemberId

    @property
    def _pair(self) -> tuple[str, str]:
        return (self.blocker, self.blocked)


class MemberBlocked(BlockEvent):
    pass


class MemberUnblocked(BlockEvent):
    pass


class FollowEvent(ConnectionEvent):
    follower: MemberId
    followee: MemberId

    @property
    def _pair(self) -> tuple[str, str]:
        return (self.follower, self.followee)


class FollowStarted(FollowEvent):
    pass


class FollowStopped(FollowEvent):
    pass


class ListEvent(ConnectionEvent):
    owner: MemberId
    list_name: ListName
    member_id: MemberId

    @property
    def _pair(self) -> tuple[str, str]:
        return (self.owner, self.member_id)


class ConnectionListed(ListEvent):
    pass


class ConnectionUnlisted(ListEvent):
    pass


# --- rapport.engagements ---------------------------------------------------------------------


class EngagementRecorded(Event):
    topic: ClassVar[str] = ENGAGEMENTS
    actor: MemberId
    target: MemberId
    kind: EngagementKind
    ref: Annotated[str, StringConstraints(max_length=200)] | None = None

    @property
    def partition_key(self) -> str:
        return self.actor


class MilestoneAnnounced(Event):
    topic: ClassVar[str] = ENGAGEMENTS
    member_id: MemberId
    kind: MilestoneKind
    detail: ShortText | None = None

    @property
    def partition_key(self) -> str:
        return self.member_id


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        MemberRegistered,
        MemberProfileUpdated,
        MemberDeactivated,
        InvitationSent,
        InvitationAccepted,
        InvitationDeclined,
        InvitationWithdrawn,
        InvitationExpired,
        ConnectionAccepted,
        ConnectionRemoved,
        ConnectionRejected,
        MemberBlocked,
        MemberUnblocked,
        FollowStarted,
        FollowStopped,
        ConnectionListed,
        ConnectionUnlisted,
        EngagementRecorded,
        MilestoneAnnounced,
    )
}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
# (type, from_version) -> function turning a payload of that version into the next version.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a payload migration from `from_version` to `from_version + 1`."""

    def register(fn: Upcaster) -> Upcaster:
        UPCASTERS[(event_type, from_version)] = fn
        return fn

    return register


class UnknownEventType(ValueError):
    pass


class UnsupportedSchemaVersion(ValueError):
    pass


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """The one wire format of every event (JSON); `type` is also copied into a Kafka header."""

    model_config = ConfigDict(frozen=True, extra="allow")  # unknown fields kept

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    schema_version: int = Field(ge=1)
    occurred_at: datetime = Field(default_factory=_utcnow)
    producer: Annotated[str, StringConstraints(max_length=100)]
    key: Annotated[str, StringConstraints(max_length=200)]
    correlation_id: str | None = None
    causation_id: str | None = None
    payload: dict[str, Any]

    @classmethod
    def wrap(
        cls,
        event: Event,
        *,
        producer: str,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Envelope:
        return cls(
            type=type(event).__name__,
            schema_version=type(event).schema_version,
            occurred_at=occurred_at or _utcnow(),
            producer=producer,
            key=event.partition_key,
            correlation_id=correlation_id,
            causation_id=causation_id,
            payload=event.model_dump(mode="json", exclude_none=True),
        )

    @classmethod
    def wrap_all(
        cls,
        events: list[Event],
        *,
        producer: str,
        occurred_at: datetime,
        causation: Envelope | None = None,
        correlation_id: str | None = None,
    ) -> list[Envelope]:
        """Envelopes for the events one decision produced, caused by `causation` if any."""
        return [
            cls.wrap(
                e,
                producer=producer,
                occurred_at=occurred_at,
                correlation_id=correlation_id or (causation.correlation_id if causation else None),
                causation_id=str(causation.event_id) if causation else None,
            )
            for e in events
        ]

    @property
    def topic(self) -> str:
        return event_class(self.type).topic

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Envelope:
        envelope = cls.model_validate_json(raw)
        if envelope.occurred_at.tzinfo is None:
            raise ValueError("occurred_at must carry a timezone (UTC)")
        return envelope

    def event(self) -> Event:
        """The typed event, upcast to the current schema version. Raises on anything invalid."""
        cls = event_class(self.type)
        payload = dict(self.payload)
        version = self.schema_version
        if version > cls.schema_version:
            raise UnsupportedSchemaVersion(
                f"{self.type} v{version} is newer than this consumer (v{cls.schema_version})"
            )
        while version < cls.schema_version:
            step = UPCASTERS.get((self.type, version))
            if step is None:
                raise UnsupportedSchemaVersion(f"no upcaster for {self.type} v{version}")
            payload = step(payload)
            version += 1
        event = cls.model_validate(payload)
        if event.partition_key != self.key:
            raise ValueError(f"envelope key {self.key!r} does not match the event's key")
        return event


def event_class(event_type: str) -> type[Event]:
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        raise UnknownEventType(f"unknown event type {event_type!r}") from None


def decode(raw: bytes | str) -> tuple[Envelope, Event]:
    """Parse wire bytes into envelope + typed event; raises `InvalidEvent` with a reason."""
    try:
        envelope = Envelope.from_bytes(raw)
        return envelope, envelope.event()
    except (ValidationError, ValueError) as exc:
        raise InvalidEvent(_reason(exc)) from exc


class InvalidEvent(ValueError):
    """An event that can never be processed: it goes to the DLQ with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return f"invalid: {where}: {first.get('msg')} ({exc.error_count()} error(s))"
    if isinstance(exc, UnknownEventType):
        return f"unknown_type: {exc}"
    if isinstance(exc, UnsupportedSchemaVersion):
        return f"unsupported_version: {exc}"
    return f"invalid: {exc}"
