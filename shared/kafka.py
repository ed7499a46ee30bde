"""Kafka helpers: the broker every service uses, and topic provisioning."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiokafka.admin.client
import aiokafka.client
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import AIOKafkaConnection, CloseReason
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.protocol.metadata import MetadataRequest
from faststream.kafka import KafkaBroker

from shared.events import Envelope
from shared.topics import TopicNames

log = logging.getLogger("rapport.kafka")

# A batch this large says records are coming: with the next one as large, the subscription
# is busy.
BUSY_BATCH_RECORDS = 4


@dataclass
class FetchPacing:
    """A subscription's fetch hold, by its load: `idle_wait_ms` while batches come small (a
    lone record goes on at once), `busy_wait_ms` once two batches in a row came large. A
    broker that holds every fetch for its whole wait (the embedded one) costs CPU per fetch
    on both sides, and a consumer's small batches cost it per batch what large ones would; a
    busy subscription fetches a tenth as often and its records wait a little longer, while an
    idle one keeps the short hop that fresh reads need. Two in a row, so that the burst of
    events one action makes (an accept: the invitation's, the connection's, the follows) does
    not make the next lone event wait the long hold."""

    idle_wait_ms: int
    busy_wait_ms: int
    # A batch of this many records or more is large (BUSY_BATCH_RECORDS unless the
    # subscription says otherwise: the projection reads every topic).
    busy_records: int = BUSY_BATCH_RECORDS
    large_batches: int = 0  # large batches in a row, up to the last one

    def after_batch(self, kafka_consumer: Any, records: int) -> None:
        """Set the hold of the consumer's next fetches from the batch it just handed over.
        aiokafka reads its fetcher's `_fetch_max_wait_ms` for every fetch request it builds
        and has no public setter (pinned version; a fetcher without it is left alone)."""
        self.large_batches = self.large_batches + 1 if records >= self.busy_records else 0
        fetcher = getattr(kafka_consumer, "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            busy = self.large_batches >= 2
            fetcher._fetch_max_wait_ms = self.busy_wait_ms if busy else self.idle_wait_ms


class MetadataWithoutAutoCreate(MetadataRequest):
    """A metadata request that never has the broker create a topic it does not know.

    Topics are created by `ensure_topics`, each with its partition count. aiokafka asks for
    metadata with auto-creation on and has no setting for it, and the embedded broker creates
    a topic it is asked about (with 4 partitions). After the embedded broker restarts empty,
    a consumer's first metadata refresh would create the topics with the wrong partitions
    before the refill creates them right (the refill then timed out, or a consumer was left on
    partitions that do not exist). A client asking about a missing topic is told so, and
    retries until it exists.
    """

    def __init__(self, topics: list[str] | None = None, allow_auto_topic_creation: bool = False):
        super().__init__(topics, allow_auto_topic_creation)


# Every aiokafka client of this process (producers, consumers, admin) builds its metadata
# requests from these names.
aiokafka.client.MetadataRequest = MetadataWithoutAutoCreate  # type: ignore[misc]
aiokafka.admin.client.MetadataRequest = MetadataWithoutAutoCreate  # type: ignore[misc]

_send = AIOKafkaConnection.send


def _send_or_fail_as_broken(
    conn: AIOKafkaConnection, request: Any, expect_response: bool = True
) -> Any:
    """`AIOKafkaConnection.send`, where a write on a connection the broker closed fails as a
    broken connection (KafkaConnectionError, which every caller retries) under uvloop too.

    aiokafka catches the OSError asyncio's own loop raises there; uvloop raises RuntimeError
    ("unable to perform operation on <TCPTransport closed=True ...>"), which escaped and
    ended the client's metadata task for good: the consumer then waited for metadata for
    ever (seen after the embedded broker's restart). aio-libs/aiokafka#1038, still open."""
    try:
        return _send(conn, request, expect_response)
    except RuntimeError as exc:
        conn.close(reason=CloseReason.CONNECTION_BROKEN, exc=exc)
        raise KafkaConnectionError(f"Connection at {conn.host}:{conn.port} broken: {exc}") from exc


AIOKafkaConnection.send = _send_or_fail_as_broken  # type: ignore[method-assign]


def make_broker(bootstrap_servers: str, client_id: str) -> KafkaBroker:
    # acks=all: the outbox deletes an entry only once every in-sync replica has it.
    # Idempotence stays off: the embedded broker has no InitProducerId; dedupe is by event_id.
    return KafkaBroker(
        bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        request_timeout_ms=10_000,
        logger=logging.getLogger(f"rapport.{client_id}.broker"),
    )


async def publish_envelopes(
    bootstrap_servers: str, envelopes: list[Envelope], topics: TopicNames, **producer_options: Any
) -> None:
    """Publish envelopes straight to their topics, keyed and typed as the outbox relay does:
    how external producers, tests and benchmarks feed Rapport."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, **{"acks": "all", **producer_options}
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                topics(e.topic),
                e.to_bytes(),
                key=e.key.encode(),
                headers=[("type", e.type.encode())],
            )
            for e in envelopes
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# The log is the truth: every service's state can be replayed from it, so nothing expires.
KEEP_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}


async def ensure_topics(
    bootstrap_servers: str, partitions: dict[str, int], replication_factor: int = 1
) -> list[str]:
    """Create missing topics with their partition counts, kept forever (`KEEP_FOREVER`), on
    `replication_factor` brokers each; returns the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="rapport-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=n,
                replication_factor=replication_factor,
                topic_configs=KEEP_FOREVER,
            )
            for name, n in partitions.items()
            if name not in existing
        ]
        created = []
        for topic in missing:
            try:
                await admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        await admin.close()


async def wait_for_broker(bootstrap_servers: str, timeout_s: float = 30.0) -> None:
    """Wait until the broker answers metadata requests (it may still be starting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kafka at {bootstrap_servers} not reachable: {exc!r}") from exc
            await asyncio.sleep(0.2)  # the broker is booting; poll its readiness again
        finally:
            await admin.close()
