"""Configuration: one pydantic-settings class per service, all sharing the infrastructure fields.

Shared fields read the unprefixed names operators expect (`KAFKA_BOOTSTRAP_SERVERS`,
`REDIS_URL`, `RAPPORT_API_TOKENS`); service fields read `RAPPORT_<SERVICE>_<FIELD>`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.topics import TopicNames

DEFAULT_KAFKA = "127.0.0.1:19092"
DEFAULT_REDIS = "redis://127.0.0.1:16379/0"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAPPORT_", extra="ignore", populate_by_name=True)

    service: ClassVar[str] = "rapport"

    host: str = "127.0.0.1"
    port: int = 8000
    kafka_bootstrap_servers: str = Field(
        DEFAULT_KAFKA, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS")
    )
    redis_url: str = Field(DEFAULT_REDIS, validation_alias=AliasChoices("REDIS_URL"))
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("RAPPORT_API_TOKENS")
    )
    # Prefix of every topic and Redis key; lets tests and parallel stacks share infrastructure.
    namespace: str = Field("", validation_alias=AliasChoices("RAPPORT_NAMESPACE"))
    # Retries of a consumer handler before the event goes to the DLQ.
    consumer_max_attempts: int = Field(
        5, validation_alias=AliasChoices("RAPPORT_CONSUMER_MAX_ATTEMPTS")
    )
    consumer_backoff_s: float = Field(
        0.2, validation_alias=AliasChoices("RAPPORT_CONSUMER_BACKOFF_S")
    )
    dedupe_ttl_s: int = Field(30 * 24 * 3600, validation_alias=AliasChoices("RAPPORT_DEDUPE_TTL_S"))
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
    # How long a batch consumer waits for records before it polls again. FastStream sleeps
    # as long again after an empty poll, so this bounds the wake-up delay of an idle consumer.
    consumer_batch_timeout_ms: int = Field(
        5, validation_alias=AliasChoices("RAPPORT_CONSUMER_BATCH_TIMEOUT_MS")
    )
    log_level: str = Field("info", validation_alias=AliasChoices("RAPPORT_LOG_LEVEL"))

    def consumer_options(self) -> dict[str, int]:
        """The Kafka consumer options every batch subscriber of this service uses."""
        return {
            "session_timeout_ms": self.kafka_session_timeout_ms,
            "heartbeat_interval_ms": self.kafka_heartbeat_interval_ms,
            "fetch_max_wait_ms": self.kafka_fetch_max_wait_ms,
            "batch_timeout_ms": self.consumer_batch_timeout_ms,
        }

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.namespace)

    def key(self, *parts: str) -> str:
        """A Redis key under this deployment's namespace."""
        return ":".join((f"{self.namespace}rapport", *parts))


class InvitationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RAPPORT_INVITATION_", extra="ignore")
    service: ClassVar[str] = "invitation"
    port: int = 8001
    message_max_chars: int = 300
    weekly_limit: int = 100
    reinvite_cooldown_days: int = 21
    expiry_days: int = 180
    report_threshold: int = 3
    expiry_sweep_interval_s: float = 60.0


class ConnectionSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RAPPORT_CONNECTION_", extra="ignore")
    service: ClassVar[str] = "connection"
    port: int = 8002
    connection_cap: int = 30_000


class EngagementSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RAPPORT_ENGAGEMENT_", extra="ignore")
    service: ClassVar[str] = "engagement"
    port: int = 8003
    per_actor_per_minute: int = 30
    per_target_per_day: int = 20


class ProjectionSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RAPPORT_PROJECTION_", extra="ignore")
    service: ClassVar[str] = "projection"
    port: int = 8004
    batch_max_records: int = 2000
    # The read models' keys are laid out for Redis Cluster (hash tag per member); set this
    # to talk to one (REDIS_URL then names any node).
    redis_cluster: bool = False
    suggestions_cache_ttl_s: int = 600
    after_wait_max_ms: int = 10_000
    # Active viewers' 2nd-degree networks, cached in Redis within this many bytes (LRU).
    viewer_cache_bytes: int = 256 * 2**20
    # People you may know from at most this many of a member's connections (the most engaged,
    # then the most recent), so a member with a huge network costs a bounded amount.
    suggestions_sample: int = 200
    # How often the background refresh recomputes stale suggestions of active viewers.
    suggestions_refresh_s: float = 5.0
    # Paths considered before ranking the shortest ones by engagement.
    paths_scan_cap: int = 2000


SETTINGS_BY_SERVICE: dict[str, type[ServiceSettings]] = {
    cls.service: cls
    for cls in (InvitationSettings, ConnectionSettings, EngagementSettings, ProjectionSettings)
}
