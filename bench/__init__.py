"""Benchmarks of Rapport beside its peers (`make bench`)."""

from __future__ import annotations

from rapport.localstack import EMBEDDED_BROKER_TUNING

TOKEN = "bench-token"


def service_env(
    bootstrap: str,
    redis_url: str,
    namespace: str,
    read_models_url: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """Environment of a service process under benchmark, on the bench's own infrastructure
    (the read models on `read_models_url`'s Redis, as `make run` lays them out, if given)."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "REDIS_URL": redis_url,
        **({"READ_MODEL_REDIS_URL": read_models_url} if read_models_url else {}),
        "RAPPORT_API_TOKENS": TOKEN,
        "RAPPORT_NAMESPACE": namespace,
        "RAPPORT_LOG_LEVEL": "warning",
        **EMBEDDED_BROKER_TUNING,
        **extra,
    }
