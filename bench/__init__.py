"""Benchmarks of Rapport beside its peers (`make bench`)."""

from __future__ import annotations

from rapport.localstack import EMBEDDED_BROKER_TUNING

TOKEN = "bench-token"


def service_env(bootstrap: str, redis_url: str, namespace: str, **extra: str) -> dict[str, str]:
    """Environment of a service process under benchmark, on the bench's own infrastructure."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "REDIS_URL": redis_url,
        "RAPPORT_API_TOKENS": TOKEN,
        "RAPPORT_NAMESPACE": namespace,
        "RAPPORT_LOG_LEVEL": "warning",
        **EMBEDDED_BROKER_TUNING,
        **extra,
    }
