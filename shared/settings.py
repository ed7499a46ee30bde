"""Configuration: one pydantic-settings class per service, all sharing the infrastructure fields.

Shared fields read the unprefixed names operators expect (`KAFKA_BOOTSTRAP_SERVERS`,
`REDIS_URL`, `RAPPORT_API_TOKENS`); service fields read `RAPPORT_<SERVICE>_<FIELD>`.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.events import MESSAGE_MAX_CHARS
from shared.groups import SlotGroups
from shared.kafka import BUSY_BATCH_RECORDS, FetchPacing
from shared.topics import TopicNames

DEFAULT_KAFKA = "127.0.0.1:19092"
DEFAULT_REDIS = "redis://127.0.0.1:16379/0"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAPPORT_", extra="ignore", populate_by_name=True)

    service: ClassVar[str] = "rapport"

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    kafka_bootstrap_servers: str = Field(
        DEFAULT_KAFKA, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS")
    )
    redis_url: str = Field(DEFAULT_REDIS, validation_alias=AliasChoices("REDIS_URL"))
    # Bearer tokens by role (shared.auth): the gateway's, read-only operations, admin.
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("RAPPORT_API_TOKENS")
    )
    ops_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("RAPPORT_OPS_TOKENS")
    )
    admin_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("RAPPORT_ADMIN_TOKENS")
    )
    # Prefix of every topic and Redis key; lets tests and parallel stacks share infrastructure.
    namespace: str = Field("", validation_alias=AliasChoices("RAPPORT_NAMESPACE"))
    # Retries of a consumer handler before the event goes to the DLQ.
    consumer_max_attempts: int = Field(
        5, ge=1, validation_alias=AliasChoices("RAPPORT_CONSUMER_MAX_ATTEMPTS")
    )
    consumer_backoff_s: float = Field(
        0.2, ge=0, validation_alias=AliasChoices("RAPPORT_CONSUMER_BACKOFF_S")
    )
    dedupe_ttl_s: int = Field(
        30 * 24 * 3600, ge=1, validation_alias=AliasChoices("RAPPORT_DEDUPE_TTL_S")
    )
    # Consumer-group liveness. Rebalances on the embedded broker take about one session
    # timeout, so `make run` and the tests lower it; production keeps Kafka's usual 10 s.
    kafka_session_timeout_ms: int = Field(
        10_000, validation_alias=AliasChoices("RAPPORT_KAFKA_SESSION_TIMEOUT_MS")
    )
    kafka_heartbeat_interval_ms: int = Field(
        3_000, validation_alias=AliasChoices("RAPPORT_KAFKA_HEARTBEAT_INTERVAL_MS")
    )
    # How long the broker may hold a fetch with no new record. Apache Kafka answers a held
    # fetch as soon as a record lands; the embedded broker (Tansu) waits out the whole time,
    # so `make run` and the tests lower it to keep each hop fast.
    kafka_fetch_max_wait_ms: int = Field(
        500, validation_alias=AliasChoices("RAPPORT_KAFKA_FETCH_MAX_WAIT_MS")
    )
    # The same hold for a busy subscription (its last batch held BUSY_BATCH_RECORDS or more):
    # records keep coming, so a longer hold costs them little time and saves most fetches,
    # each of which costs the embedded broker and the consumer CPU. None: always the one above
    # (Apache Kafka answers a fetch once it has records, so a busy hold changes nothing there).
    kafka_fetch_busy_wait_ms: int | None = Field(
        None, ge=1, validation_alias=AliasChoices("RAPPORT_KAFKA_FETCH_BUSY_WAIT_MS")
    )
    # How long a batch consumer's poll waits for records before it asks again. It goes on as
    # soon as records come (shared.consumer: no sleep after an empty poll), so this only sets
    # how often an idle consumer's loop wakes.
    consumer_batch_timeout_ms: int = Field(
        250, ge=1, validation_alias=AliasChoices("RAPPORT_CONSUMER_BATCH_TIMEOUT_MS")
    )
    # How often at most an idle background subscription (shared.consumer.Subscription) asks
    # for records. The embedded broker spends CPU per partition on every fetch: measured idle
    # with the whole stack up, 39% of a core with every subscription at a 10 ms wait, 25%
    # with the background ones at 100 ms.
    background_poll_ms: int = Field(
        100, ge=1, validation_alias=AliasChoices("RAPPORT_BACKGROUND_POLL_MS")
    )
    log_level: str = Field("info", validation_alias=AliasChoices("RAPPORT_LOG_LEVEL"))
    # Allocations (net of frees) between two collections of the youngest generation, once
    # the service started (shared.service.settle_garbage_collector); Python's default is 700.
    gc_young_threshold: int = Field(
        10_000, ge=1, validation_alias=AliasChoices("RAPPORT_GC_YOUNG_THRESHOLD")
    )
    # Keep a copy of the log in Redis (shared.archive): the local stack's embedded broker
    # keeps nothing on disk. Off in production (a replicated Kafka holds the log).
    log_archive: bool = Field(False, validation_alias=AliasChoices("RAPPORT_LOG_ARCHIVE"))
    # Talk to a Redis Cluster (REDIS_URL then names any node): `RAPPORT_REDIS_CLUSTER` for
    # every service, or `RAPPORT_<SERVICE>_REDIS_CLUSTER` for one. A service whose keys are
    # not laid out for a cluster refuses to start with it.
    redis_cluster: bool = False
    # How many slot groups a write service's keys and outbox are spread over
    # (shared.groups): fixed when a deployment is created, the same for every service.
    slot_groups: int = Field(
        1, ge=1, le=16384, validation_alias=AliasChoices("RAPPORT_SLOT_GROUPS")
    )

    def fetch_pacing(
        self, background: bool = False, busy_records: int = BUSY_BATCH_RECORDS
    ) -> FetchPacing | None:
        """How a subscription's fetch hold follows its load (None: it does not; a background
        subscription polls rarely anyway); `busy_records`: what a large batch holds."""
        busy = self.kafka_fetch_busy_wait_ms
        if background or busy is None or busy <= self.kafka_fetch_max_wait_ms:
            return None
        return FetchPacing(self.kafka_fetch_max_wait_ms, busy, busy_records)

    def consumer_options(self, background: bool = False) -> dict[str, int]:
        """The Kafka consumer options of this service's batch subscribers; a `background`
        one (whose reactions nobody waits on) polls at most every `background_poll_ms`."""
        wait, batch = self.kafka_fetch_max_wait_ms, self.consumer_batch_timeout_ms
        if background:
            wait, batch = max(wait, self.background_poll_ms), max(batch, self.background_poll_ms)
        return {
            "session_timeout_ms": self.kafka_session_timeout_ms,
            "heartbeat_interval_ms": self.kafka_heartbeat_interval_ms,
            "fetch_max_wait_ms": wait,
            "batch_timeout_ms": batch,
        }

    @model_validator(mode="before")
    @classmethod
    def _cluster_for_every_service(cls, data: Any) -> Any:
        # The deployment-wide switch, unless the service's own setting says otherwise.
        everywhere = os.environ.get("RAPPORT_REDIS_CLUSTER")
        if isinstance(data, dict) and everywhere is not None and "redis_cluster" not in data:
            return {**data, "redis_cluster": everywhere}
        return data

    @field_validator("api_tokens", "ops_tokens", "admin_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @model_validator(mode="after")
    def _one_role_per_token(self) -> ServiceSettings:
        lists = (self.api_tokens, self.ops_tokens, self.admin_tokens)
        if sum(len(t) for t in lists) != len({token for t in lists for token in t}):
            raise ValueError("a token is listed twice or under two roles")
        return self

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.namespace)

    @property
    def groups(self) -> SlotGroups:
        return SlotGroups(self.slot_groups)

    def key(self, *parts: str) -> str:
        """A Redis key under this deployment's namespace."""
        return ":".join((f"{self.namespace}rapport", *parts))


class InvitationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RAPPORT_INVITATION_", extra="ignore")
    service: ClassVar[str] = "invitation"
    port: int = Field(8001, ge=1, le=65535)
    # Bounded by what an InvitationSent may carry, so no setting can make a valid send fail.
    message_max_chars: int = Field(300, ge=1, le=MESSAGE_MAX_CHARS)
    weekly_limit: int = Field(100, ge=1)
    reinvite_cooldown_days: int = Field(21, ge=0, le=3650)
    expiry_days: int = Field(180, ge=1, le=3650)
    report_threshold: int = Field(3, ge=1)
    expiry_sweep_interval_s: float = Field(60.0, gt=0)


class ConnectionSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RAPPORT_CONNECTION_", extra="ignore")
    service: ClassVar[str] = "connection"
    port: int = Field(8002, ge=1, le=65535)
    connection_cap: int = Field(30_000, ge=1)


class EngagementSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RAPPORT_ENGAGEMENT_", extra="ignore")
    service: ClassVar[str] = "engagement"
    port: int = Field(8003, ge=1, le=65535)
    per_actor_per_minute: int = Field(30, ge=1)
    per_target_per_day: int = Field(20, ge=1)


class ProjectionSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RAPPORT_PROJECTION_", extra="ignore")
    service: ClassVar[str] = "projection"
    port: int = Field(8004, ge=1, le=65535)
    # The read models' own Redis (unset: REDIS_URL). Write-side state needs AOF (DESIGN.md);
    # read models do not: they keep their log positions beside them, so a snapshot (RDB)
    # plus the log's tail is the whole state. AOF cost a fifth of Redis' CPU in the apply
    # (README). REDIS_URL keeps what the projection shares with the other services (their
    # instance records, for the dashboard).
    read_model_redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "RAPPORT_PROJECTION_READ_MODEL_REDIS_URL", "READ_MODEL_REDIS_URL"
        ),
    )
    batch_max_records: int = Field(2000, ge=1)
    suggestions_cache_ttl_s: int = Field(600, ge=1)
    after_wait_max_ms: int = Field(10_000, ge=0, le=60_000)
    # Active viewers' 2nd-degree networks, cached in Redis within this many bytes (LRU).
    viewer_cache_bytes: int = Field(256 * 2**20, ge=0)
    # A request that finds no people-you-may-know list computes it: summing the member's
    # connections' sets, the smallest first, at most `suggestions_reach` entries (0: no
    # bound), so it stays within a few ms (5,000 keeps recall@10 >= 0.9 in the bench)...
    suggestions_reach: int = Field(5_000, ge=0)
    # ... but a member with more than `suggestions_sample` connections starts from that many
    # of them (the most engaged, then the most recent) and sums up to
    # `suggestions_sampled_reach` entries, in slices (one short Redis call each).
    suggestions_sample: int = Field(1000, ge=1, le=100_000)
    suggestions_sampled_reach: int = Field(100_000, ge=0)
    # The background refresh of active viewers starts from this many and sums every one of
    # their sets, in slices.
    suggestions_background_sample: int = Field(1000, ge=1, le=100_000)
    # How often the background refresh recomputes stale suggestions of active viewers.
    suggestions_refresh_s: float = Field(5.0, gt=0)
    # Scraping guard: members a member may look up per minute through network search,
    # badges, degree, mutual and paths (a badge call counts its ids, a search its limit).
    read_quota_per_minute: int = Field(3000, ge=1)
    # Paths considered before ranking the shortest ones by engagement.
    paths_scan_cap: int = Field(2000, ge=1, le=1_000_000)
    # The dashboard's charts take one sample this often (and keep the last 15 minutes).
    dashboard_sample_s: float = Field(5.0, ge=0.2, le=60)

    @property
    def read_models_url(self) -> str:
        return self.read_model_redis_url or self.redis_url


SETTINGS_BY_SERVICE: dict[str, type[ServiceSettings]] = {
    cls.service: cls
    for cls in (InvitationSettings, ConnectionSettings, EngagementSettings, ProjectionSettings)
}
