"""Idempotent batch consumption: decode, dead-letter, dedupe, retry — then let Kafka commit.

`EventConsumer.process(records)` is what a FastStream batch subscriber calls with the records
of one `getmany`. Its contract:
- a record whose `type` header names an event this consumer has no handler for (`wanted`) is
  passed over unread: no decode, no dedupe lookup. The group that handles that type checks
  it (and dead-letters it if it is bad). Our relays write the header from the same outbox
  entry as the value; `admit` refuses a record whose header and envelope disagree;
- an undecodable record, an unknown `type`, a payload that fails validation, an event on a
  topic it does not belong to, a Kafka key other than the envelope's, an implausible time or
  size (`admit`) goes to `<topic>.dlq` with the reason in headers, and the batch goes on;
- events whose `event_id` this consumer already applied are skipped (pre-filter); the handler
  still receives each event's dedupe key and must set it in the same atomic step as its
  effects, so a crash between effect and mark can never apply an event twice;
- infrastructure errors (Redis or the broker gone) are retried with capped backoff for as
  long as they last, because no event is at fault; any other handler error is retried a
  bounded number of times, then the batch is split so that only the failing event goes to
  the DLQ (reason `handler_failed`), never blocking the partition;
- the subscriber commits offsets only after `process` returned (never ACK_FIRST).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.middlewares import AckPolicy
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.events import Envelope, Event, InvalidEvent, decode
from shared.kafka import BUSY_BATCH_RECORDS, FetchPacing
from shared.observability import (
    CONSUMER_LAG,
    DLQ_RECORDS,
    EVENTS_CONSUMED,
    EVENTS_DUPLICATE,
    EVENTS_FAILED,
    count_by_type,
    describe,
)
from shared.redis import AutoPipeline, is_transient
from shared.topics import dlq

log = logging.getLogger("rapport.consumer")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    KafkaError,
    ConnectionError,
    TimeoutError,
)


def transient(exc: BaseException) -> bool:
    """An outage (Redis or the broker unreachable, or Redis answering "not now"): no event is
    at fault, so it is retried for as long as it lasts, never dead-lettered."""
    return isinstance(exc, TRANSIENT_ERRORS) or is_transient(exc)


async def retry_transient(
    call: Callable[[], Awaitable[Any]], who: str, backoff_s: float = 0.1, max_backoff_s: float = 5.0
) -> Any:
    """Run `call` until Redis or the broker answers again: an outage is no event's fault."""
    delay = backoff_s
    while True:
        try:
            return await call()
        except Exception as exc:
            if not transient(exc):
                raise
            log.warning("%s: infrastructure unavailable (%s); retrying", who, describe(exc))
            # Backoff between reconnect attempts; nothing to wait on but time itself.
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)


# What a batch handler is given (`message_itself`): the batch's `KafkaMessage`, its records
# raw. Typed `Any` for FastStream, which refuses to inject a parameter typed as its message
# class; a handler passes it on as the `KafkaMessage` it is.
BatchMessage = Any

# Far more than any valid event (bounded fields); a record above it is refused unread.
MAX_EVENT_BYTES = 64 * 1024
# Times an event may carry: none before this, none more than a day ahead (clock skew).
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_EVENT_AHEAD = timedelta(days=1)


def admit(record: ConsumerRecord[Any, Any], now: datetime | None = None) -> tuple[Envelope, Event]:
    """Decode a consumed record and check that it belongs where it came from: an event type
    of this topic, the Kafka key equal to the envelope key (else per-key order could break),
    a `type` header equal to the envelope's, a plausible time (against `now`, read once per
    batch by a caller that admits many), a plausible size.
    `InvalidEvent` (reason for the DLQ) otherwise."""
    return admit_named(record, type_header(record.headers), now)


def admit_named(
    record: ConsumerRecord[Any, Any], named: str | None, now: datetime | None = None
) -> tuple[Envelope, Event]:
    """`admit` for a caller that read the record's `type` header already (`named`)."""
    value = record.value or b""
    if len(value) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"too_large: {len(value)} bytes (at most {MAX_EVENT_BYTES})")
    envelope, event = decode(value)
    if not record.topic.endswith(event.topic):
        raise InvalidEvent(f"wrong_topic: {envelope.type} belongs on {event.topic}")
    key = record.key.decode(errors="replace") if isinstance(record.key, bytes) else record.key
    if key != envelope.key:
        raise InvalidEvent(f"key_mismatch: record key {key!r} is not {envelope.key!r}")
    if named is not None and named != envelope.type:
        raise InvalidEvent(f"type_mismatch: header type {named!r} is not {envelope.type!r}")
    at = envelope.occurred_at
    if at.tzinfo is None or not (
        EARLIEST_EVENT_TIME <= at <= (now or datetime.now(UTC)) + LATEST_EVENT_AHEAD
    ):
        raise InvalidEvent(f"implausible_time: occurred_at {at.isoformat()}")
    return envelope, event


def type_header(headers: Sequence[tuple[str, Any]] | None) -> str | None:
    """A record's `type` header, if it has one."""
    for name, value in headers or ():
        if name == "type" and value is not None:
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return None


@dataclass(frozen=True)
class ConsumedEvent:
    envelope: Envelope
    event: Event
    topic: str
    partition: int
    offset: int
    dedupe_key: str


EventHandler = Callable[[ConsumedEvent], Awaitable[None]]


# Keys of one batch whose events are handled at once (each key's events in order).
CONCURRENT_KEYS = 32


@dataclass(frozen=True)
class Subscription:
    """One consumer group of a service: its topics and the explicit map from event type to
    the handler that reacts to it. Events of other types on those topics are passed over."""

    name: str
    topics: Sequence[str]
    handlers: Mapping[type[Event], EventHandler]
    # Nobody waits on these reactions (no read-your-writes path runs through them): on a
    # broker that holds every fetch for its whole wait (the embedded one) they poll less
    # often, where each poll costs that broker CPU per partition (ServiceSettings).
    background: bool = False

    async def dispatch(self, events: list[ConsumedEvent]) -> None:
        """Each key's events one after another, in log order; different keys at once. A
        handler's work is a round trip or two to Redis, so one event at a time would leave
        the process waiting; events of different keys touching one aggregate (a member's
        count) meet the command loop's version check and retry, as concurrent requests do.
        The batch fails if any handler did, after the others finished (the consumer then
        retries it; what committed is deduped). Order across keys is not kept, as it is not
        across partitions or replicas: two accepts racing for a member's last place may
        land either way (a test that needs one first waits for its outcome)."""
        by_key: dict[str, list[ConsumedEvent]] = {}
        for consumed in events:
            if type(consumed.event) in self.handlers:
                by_key.setdefault(consumed.envelope.key, []).append(consumed)
        gate = asyncio.Semaphore(CONCURRENT_KEYS)

        async def in_order(run: list[ConsumedEvent]) -> None:
            async with gate:
                for consumed in run:
                    await self.handlers[type(consumed.event)](consumed)

        outcomes = await asyncio.gather(*map(in_order, by_key.values()), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome


class BatchHandler(Protocol):
    def __call__(self, events: list[ConsumedEvent]) -> Awaitable[None]: ...


class DeadLetterSink(Protocol):
    def __call__(
        self, topic: str, key: bytes | None, value: bytes, headers: dict[str, str]
    ) -> Awaitable[None]: ...


def broker_dead_letter_sink(broker: KafkaBroker) -> DeadLetterSink:
    async def send(topic: str, key: bytes | None, value: bytes, headers: dict[str, str]) -> None:
        await broker.publish(value, topic=topic, key=key, headers=headers)

    return send


class EventConsumer:
    def __init__(
        self,
        *,
        name: str,
        redis: Redis,
        handler: BatchHandler,
        dead_letter: DeadLetterSink,
        dedupe_prefix: str,
        max_attempts: int = 5,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        wanted: frozenset[str] | None = None,
    ) -> None:
        self.name = name
        # Event type names this consumer handles; None: every type is decoded.
        self.wanted = wanted
        self._calls = AutoPipeline(redis)
        self.handler = handler
        self.dead_letter = dead_letter
        self.dedupe_prefix = dedupe_prefix
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.dead_lettered = 0  # records sent to a DLQ so far

    def dedupe_key(self, event_id: Any) -> str:
        return f"{self.dedupe_prefix}:{event_id}"

    async def process(self, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        decoded: list[ConsumedEvent] = []
        now = datetime.now(UTC)
        for record in records:
            named = type_header(record.headers)
            if self.wanted is not None and named is not None and named not in self.wanted:
                continue  # another group's event; decoding it is most of a record's cost
            try:
                envelope, event = admit_named(record, named, now)
            except InvalidEvent as exc:
                await self.send_to_dlq(record, exc.reason)
                continue
            decoded.append(
                ConsumedEvent(
                    envelope,
                    event,
                    record.topic,
                    record.partition,
                    record.offset,
                    self.dedupe_key(envelope.event_id),
                )
            )
        fresh = await self._unseen(decoded)
        if fresh:
            await self._apply(fresh)

    async def _unseen(self, events: list[ConsumedEvent]) -> list[ConsumedEvent]:
        if not events:
            return []
        seen = await self._with_infra_retry(lambda: self._exists([e.dedupe_key for e in events]))
        fresh, in_batch = [], set()
        for event, already in zip(events, seen, strict=True):
            # The same event twice inside one batch counts as a duplicate too.
            if already or event.dedupe_key in in_batch:
                EVENTS_DUPLICATE.labels(self.name).inc()
                continue
            in_batch.add(event.dedupe_key)
            fresh.append(event)
        return fresh

    async def _exists(self, keys: list[str]) -> list[bool]:
        # Auto-pipelined: a redis-py pipeline per batch was 4% of the invitation service's
        # CPU under accepts (its pooled connection, timeouts and retry wrapper).
        return [bool(n) for n in await self._calls.execute_all(*(("EXISTS", k) for k in keys))]

    async def _apply(self, events: list[ConsumedEvent]) -> None:
        error = await self._attempt(events)
        if error is None:
            return
        if len(events) > 1:
            # Isolate the culprit: apply one by one so good events are not dead-lettered.
            for event in events:
                await self._apply([event])
            return
        await self.send_to_dlq_event(events[0], f"handler_failed: {describe(error)}"[:500])

    async def _attempt(self, events: list[ConsumedEvent]) -> BaseException | None:
        """Run the handler until it succeeds (None) or its bounded retries are used up."""
        attempt = 0
        while True:
            try:
                await self._with_infra_retry(lambda: self.handler(events))
            except Exception as exc:  # a handler bug or a poison event: retried, then isolated
                attempt += 1
                count_by_type(EVENTS_FAILED, self.name, (e.envelope.type for e in events))
                log.warning("%s: handler failed (attempt %d): %r", self.name, attempt, exc)
                if attempt >= self.max_attempts:
                    return exc
                await asyncio.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
                continue
            count_by_type(EVENTS_CONSUMED, self.name, (e.envelope.type for e in events))
            return None

    async def _with_infra_retry(self, call: Callable[[], Awaitable[Any]]) -> Any:
        return await retry_transient(call, self.name, self.backoff_s, self.max_backoff_s)

    async def send_to_dlq(self, record: ConsumerRecord[Any, Any], reason: str) -> None:
        self.dead_lettered += 1
        await dead_letter(
            self.dead_letter,
            self.name,
            DeadLetter.of(record),
            reason,
            retry=self._with_infra_retry,
        )

    async def send_to_dlq_event(self, event: ConsumedEvent, reason: str) -> None:
        self.dead_lettered += 1
        env = event.envelope
        record = DeadLetter(
            event.topic, event.partition, event.offset, env.key.encode(), env.to_bytes()
        )
        await dead_letter(
            self.dead_letter,
            self.name,
            record,
            reason,
            retry=self._with_infra_retry,
            type_=env.type,
            event_id=str(env.event_id),
        )


@dataclass(frozen=True)
class DeadLetter:
    """Where a record came from and what it held, as it goes to `<topic>.dlq`."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()

    @classmethod
    def of(cls, record: ConsumerRecord[Any, Any]) -> DeadLetter:
        return cls(
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.value,
            tuple(record.headers or ()),
        )


async def dead_letter(
    sink: DeadLetterSink,
    consumer: str,
    record: DeadLetter,
    reason: str,
    *,
    retry: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
    type_: str | None = None,
    event_id: str | None = None,
) -> None:
    """Send a record to its topic's DLQ with the reason and its origin in headers; the
    `type` header is kept (from the record's own headers when not given)."""
    headers = {
        "dlq_reason": reason[:500],
        "dlq_consumer": consumer,
        "source_topic": record.topic,
        "source_partition": str(record.partition),
        "source_offset": str(record.offset),
    }
    type_ = type_ or type_header(record.headers)
    if type_ is not None:
        headers["type"] = type_
    if event_id is not None:
        headers["event_id"] = event_id
    DLQ_RECORDS.labels(consumer, record.topic, reason.split(":", 1)[0]).inc()
    log.warning(
        "%s: %s[%d]@%d -> DLQ: %s", consumer, record.topic, record.partition, record.offset, reason
    )
    await retry(lambda: sink(dlq(record.topic), record.key, record.value or b"", headers))


async def first_record_parsed(records: tuple[Any, ...], original: Any) -> Any:
    """Batch parser that lets FastStream parse the first record only (its headers, for the
    message's logging context) and hands over the whole batch as the raw message: its
    per-record header decoding cost as much as a tenth of the projection's decode."""
    parsed = await original(records[:1])
    parsed.raw_message = records
    return parsed


async def message_itself(msg: Any) -> Any:
    """Batch decoder that hands the handler the message itself, records undecoded:
    `EventConsumer` decodes them itself, so FastStream's per-message parse and JSON decode
    (most of a batch's cost) is skipped. The handler takes the message as its one plain
    argument (`BatchMessage`), not as an annotated `KafkaMessage`: fast_depends resolves that
    context field in a worker thread, a thread hop per batch (3% of a consumer's CPU)."""
    return msg


def report_lag(name: str, kafka_consumer: Any, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
    """Set the consumer-lag gauge of each partition in the batch: its high watermark (from the
    fetch, no extra request) minus the position after the batch."""
    after: dict[tuple[str, int], int] = {}
    for r in records:
        after[r.topic, r.partition] = max(after.get((r.topic, r.partition), 0), r.offset + 1)
    for (topic, partition), position in after.items():
        tp = TopicPartition(topic, partition)
        highwater = kafka_consumer.highwater(tp)
        if highwater is not None:
            CONSUMER_LAG.labels(name, tp.topic, str(tp.partition)).set(max(highwater - position, 0))


async def _records_when_they_come(
    self: BatchSubscriber, consumer: AIOKafkaConsumer
) -> tuple[ConsumerRecord[Any, Any], ...]:
    """`BatchSubscriber.get_msg` without its sleep after an empty poll: the poll itself waits
    for records (aiokafka's `getmany` answers as soon as a fetch brings some, or after the
    subscriber's batch timeout), so the sleep only delayed records that came during it and
    woke every idle consumer twice as often. With it gone the timeout can be long: an idle
    consumer's loop wakes a few times a second, not every 10 ms (measured idle with the whole
    stack up: the consume loops were about a third of the connection service's CPU)."""
    batches = await consumer.getmany(timeout_ms=self.batch_timeout_ms, max_records=self.max_records)
    return tuple(record for records in batches.values() for record in records)


# FastStream (pinned 0.7.8) has no setting for it; every batch subscriber of the process.
BatchSubscriber.get_msg = _records_when_they_come  # type: ignore[method-assign,assignment]


def batch_subscriber(
    broker: KafkaBroker,
    topics: Sequence[str],
    *,
    group_id: str,
    max_records: int = 500,
    **options: Any,
) -> Callable[[Callable[[BatchMessage], Awaitable[None]]], Any]:
    """A FastStream batch subscriber that hands over the raw records and commits only when
    the handler acks (never ACK_FIRST), reading from the start of a new group's topics."""
    return broker.subscriber(
        *topics,
        group_id=group_id,
        batch=True,
        max_records=max_records,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        parser=first_record_parsed,
        decoder=message_itself,
        **options,
    )


def records_of(msg: KafkaMessage) -> tuple[ConsumerRecord[Any, Any], ...]:
    raw = msg.raw_message
    return raw if isinstance(raw, tuple) else (raw,)


# A busy subscription commits its offsets at most this often (see `subscribe`).
COMMIT_EVERY_S = 1.0


@dataclass
class OffsetCommits:
    """When a batch subscriber commits its offsets: at most every `every_s`, unless a batch
    asks for it at once. A commit is a broker round trip; what a restart re-reads since the
    last one is skipped by the marks the handler stored with its effects."""

    every_s: float = COMMIT_EVERY_S
    committed_at: float = 0.0  # monotonic

    def due(self, at_once: bool = False) -> bool:
        return at_once or time.monotonic() - self.committed_at >= self.every_s

    async def commit(self, msg: KafkaMessage) -> None:
        await msg.ack()
        self.committed_at = time.monotonic()


def subscribe(
    broker: KafkaBroker,
    consumer: EventConsumer,
    topics: Sequence[str],
    *,
    group_id: str,
    max_records: int = 500,
    pacing: FetchPacing | None = None,
    commit_every_s: float = COMMIT_EVERY_S,
    **options: Any,
) -> Callable[..., Awaitable[None]]:
    """Register `consumer` as a batch subscriber that commits only after success. A busy one
    commits at most once a second: an offset commit is a broker round trip per batch, and
    what a restart re-reads of that second finds its dedupe marks. A small batch (the tail
    of a burst, a lone event) and one that dead-lettered a record commit at once: a record
    in a DLQ has no mark, and a restart must not send it there twice."""
    commits = OffsetCommits(commit_every_s)

    async def handle_batch(msg: BatchMessage) -> None:
        records = records_of(msg)
        dead_before = consumer.dead_lettered
        await consumer.process(records)
        small = len(records) < BUSY_BATCH_RECORDS
        if commits.due(at_once=small or consumer.dead_lettered != dead_before):
            await commits.commit(msg)
        if pacing is not None:
            pacing.after_batch(msg.consumer, len(records))
        report_lag(consumer.name, msg.consumer, records)

    handle_batch.__name__ = f"{consumer.name}_batch"
    batch_subscriber(broker, topics, group_id=group_id, max_records=max_records, **options)(
        handle_batch
    )
    return handle_batch
