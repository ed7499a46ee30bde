"""Wiring of the projection service: read-model store, applier, rebuild, routers."""

from __future__ import annotations

from fastapi import FastAPI

from services.projection import api, consumers, dashboard
from services.projection.apply import BatchApplier
from services.projection.deps import Projection
from services.projection.history import History
from services.projection.queries import suggestions
from services.projection.queries.status import Throughput
from services.projection.rebuild import Rebuilder, TopicEnds
from services.projection.store import ReadModelStore
from shared.consumer import broker_dead_letter_sink
from shared.groups import KeyLayout
from shared.scoring import ScoringModel
from shared.service import Runtime, create_service_app
from shared.settings import ProjectionSettings

# How often every replica looks for a rebuild whose process stopped.
REAP_EVERY_S = 10.0


def create_app(settings: ProjectionSettings | None = None) -> FastAPI:
    settings = settings or ProjectionSettings()

    def wire(runtime: Runtime) -> Projection:
        # The read models may have a Redis of their own (settings.read_model_redis_url);
        # the services' instance records stay on the shared one (runtime.redis).
        read_models = settings.read_models_url
        store = ReadModelStore(runtime.redis_at(read_models), settings, ScoringModel())
        # Batches, rebuilds and refreshes go through a client with a long timeout; queries
        # keep the short one, so a stalled Redis answers them 503 fast.
        background = store.through(runtime.background_redis(read_models))
        applier = BatchApplier(background, broker_dead_letter_sink(runtime.broker))
        ends = TopicEnds(settings.kafka_bootstrap_servers, settings.topics)
        runtime.closers.append(ends.close)
        consumers.subscribe(runtime.broker, applier, settings)
        runtime.closers.insert(0, applier.drain)  # the last chunks, before Redis closes
        runtime.every(
            settings.suggestions_refresh_s,
            lambda: suggestions.refresh_active(background),
            "projection-suggestions-refresh",
        )
        rebuilder = Rebuilder(background, applier, ends)
        runtime.closers.insert(0, rebuilder.stop)  # before the clients it uses close
        runtime.every(REAP_EVERY_S, rebuilder.reap, "projection-rebuild-reaper")
        runtime.every(REAP_EVERY_S, rebuilder.upgrade, "projection-format-upgrade")
        history = History(settings.dashboard_sample_s)
        runtime.every(
            settings.dashboard_sample_s,
            lambda: dashboard.sample(ends, history, runtime.redis, settings.key("instances")),
            "projection-dashboard-history",
        )
        return Projection(store, applier, rebuilder, ends, Throughput(), history, runtime.redis)

    return create_service_app(
        settings,
        title="Rapport projection service",
        description="Redis read models and the query API.",
        routers=[api.router, dashboard.router],
        wire=wire,
        layout=KeyLayout.HASH_TAGGED,
    )
