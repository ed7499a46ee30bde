"""Settings are checked when a service starts, so none can make a valid request fail later."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared import events as ev
from shared.groups import KeyLayout, group_of_key
from shared.service import Runtime
from shared.settings import (
    SETTINGS_BY_SERVICE,
    EngagementSettings,
    InvitationSettings,
    ProjectionSettings,
)


def test_a_message_limit_above_what_an_event_carries_is_refused_at_start() -> None:
    assert InvitationSettings(message_max_chars=ev.MESSAGE_MAX_CHARS).message_max_chars == 2000
    with pytest.raises(ValidationError, match="message_max_chars"):
        InvitationSettings(message_max_chars=ev.MESSAGE_MAX_CHARS + 1)


@pytest.mark.parametrize(
    ("settings", "field", "value"),
    [
        (InvitationSettings, "expiry_days", 10**9),  # would overflow a date
        (InvitationSettings, "weekly_limit", 0),
        (InvitationSettings, "gc_young_threshold", 0),
        (EngagementSettings, "per_actor_per_minute", -1),
        (ProjectionSettings, "read_quota_per_minute", 0),
        (ProjectionSettings, "after_wait_max_ms", 10**9),
        (ProjectionSettings, "port", 70_000),
    ],
)
def test_out_of_range_settings_are_refused(settings: type, field: str, value: int) -> None:
    with pytest.raises(ValidationError, match=field):
        settings(**{field: value})


def test_one_token_cannot_hold_two_roles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPPORT_API_TOKENS", "a,b")
    monkeypatch.setenv("RAPPORT_ADMIN_TOKENS", "b")
    with pytest.raises(ValidationError, match="two roles"):
        ProjectionSettings()
    monkeypatch.setenv("RAPPORT_ADMIN_TOKENS", "c")
    settings = ProjectionSettings()
    assert (settings.api_tokens, settings.admin_tokens, settings.ops_tokens) == (
        ["a", "b"],
        ["c"],
        [],
    )


def test_one_switch_puts_every_service_on_a_redis_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPPORT_REDIS_CLUSTER", "1")
    monkeypatch.setenv("RAPPORT_SLOT_GROUPS", "64")
    monkeypatch.setenv("RAPPORT_INVITATION_REDIS_CLUSTER", "0")  # a service's own says otherwise
    assert [cls().redis_cluster for cls in SETTINGS_BY_SERVICE.values()] == [
        False,  # invitation
        True,  # connection
        True,  # engagement
        True,  # projection
    ]
    assert {cls().slot_groups for cls in SETTINGS_BY_SERVICE.values()} == {64}


def test_a_service_whose_keys_span_slots_refuses_a_cluster() -> None:
    cluster = "redis://127.0.0.1:1/0"
    with pytest.raises(ValueError, match="invitation service's keys are not laid out"):
        Runtime.build(InvitationSettings(redis_cluster=True, redis_url=cluster))
    built = Runtime.build(
        EngagementSettings(redis_cluster=True, redis_url=cluster, slot_groups=4),
        KeyLayout.SLOT_GROUPS,
    )
    # One relay per group, and one for the stream of before the groups (drained on upgrade).
    assert [group_of_key(stream) for stream in built.state.streams] == [
        "g0000",
        "g0001",
        "g0002",
        "g0003",
        None,
    ]


def test_background_subscriptions_poll_less_and_the_read_path_keeps_its_wait() -> None:
    """On the embedded broker (10 ms fetch wait) a subscription nobody waits on polls every
    100 ms; the connection service's hop of accept -> degree 1 (its invitations
    subscription) keeps the short wait that the freshness bar needs."""
    from services.connection.consumers import ConnectionConsumers
    from services.invitation.consumers import InvitationConsumers

    settings = InvitationSettings(kafka_fetch_max_wait_ms=10, consumer_batch_timeout_ms=5)
    prompt, background = settings.consumer_options(), settings.consumer_options(background=True)
    assert (prompt["fetch_max_wait_ms"], prompt["batch_timeout_ms"]) == (10, 5)
    assert (background["fetch_max_wait_ms"], background["batch_timeout_ms"]) == (100, 100)
    # A production wait longer than the background poll is kept as it is.
    assert InvitationSettings().consumer_options(background=True)["fetch_max_wait_ms"] == 500

    class OneGroup:
        at_once = True

    invitation = {s.name: s.background for s in InvitationConsumers(OneGroup()).subscriptions()}  # type: ignore[arg-type]
    connection = {
        s.name: s.background
        for s in ConnectionConsumers(OneGroup(), 30_000).subscriptions()  # type: ignore[arg-type]
    }
    assert invitation == {"decisions": True}
    assert connection == {"invitations": False, "own-sagas": True}


def test_a_busy_subscription_holds_its_fetches_longer_and_an_idle_one_goes_on_at_once() -> None:
    """On the embedded broker (10 ms wait, 100 ms when busy): two batches of several records
    in a row make the next fetches wait 100 ms (a tenth as many fetches under load); one such
    batch (the burst of events one action makes) does not; a lone record puts the short wait
    back, so the next event of an idle stack goes on at once. Production's broker answers a
    fetch once records are there: no pacing."""
    from types import SimpleNamespace

    from shared.kafka import BUSY_BATCH_RECORDS

    pacing = InvitationSettings(kafka_fetch_max_wait_ms=10, kafka_fetch_busy_wait_ms=100)
    paced = pacing.fetch_pacing()
    assert paced is not None
    fetcher = SimpleNamespace(_fetch_max_wait_ms=10)
    consumer = SimpleNamespace(_fetcher=fetcher)
    paced.after_batch(consumer, BUSY_BATCH_RECORDS)
    assert fetcher._fetch_max_wait_ms == 10
    paced.after_batch(consumer, BUSY_BATCH_RECORDS)
    assert fetcher._fetch_max_wait_ms == 100
    paced.after_batch(consumer, 500)
    assert fetcher._fetch_max_wait_ms == 100
    paced.after_batch(consumer, 1)
    assert fetcher._fetch_max_wait_ms == 10
    paced.after_batch(consumer, BUSY_BATCH_RECORDS)
    assert fetcher._fetch_max_wait_ms == 10
    assert pacing.fetch_pacing(background=True) is None
    assert InvitationSettings().fetch_pacing() is None


def test_the_projection_stays_on_the_short_hold_through_one_members_few_actions() -> None:
    """The projection reads every topic: register two members, invite, accept is a burst of
    about five events, and two such bursts in a row must not put it on the busy hold (an
    idle stack's `?after=` read then waited out that hold); load does."""
    from types import SimpleNamespace

    from services.projection.consumers import BUSY_BATCH_RECORDS

    paced = ProjectionSettings(
        kafka_fetch_max_wait_ms=10, kafka_fetch_busy_wait_ms=100
    ).fetch_pacing(busy_records=BUSY_BATCH_RECORDS)
    assert paced is not None
    fetcher = SimpleNamespace(_fetch_max_wait_ms=10)
    consumer = SimpleNamespace(_fetcher=fetcher)
    for burst in (5, 5, 5):
        paced.after_batch(consumer, burst)
        assert fetcher._fetch_max_wait_ms == 10
    paced.after_batch(consumer, 25)  # 20-30 records a hold under the bench's write load
    paced.after_batch(consumer, 25)
    assert fetcher._fetch_max_wait_ms == 100


def test_the_read_models_take_their_own_redis_when_one_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://write-side:6379/0")
    monkeypatch.delenv("READ_MODEL_REDIS_URL", raising=False)
    assert ProjectionSettings().read_models_url == "redis://write-side:6379/0"
    monkeypatch.setenv("READ_MODEL_REDIS_URL", "redis://read-models:6379/0")
    assert ProjectionSettings().read_models_url == "redis://read-models:6379/0"
    assert ProjectionSettings().redis_url == "redis://write-side:6379/0"
