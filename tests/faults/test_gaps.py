"""Offsets that hold no record: retention moved a log's start past a stored position, or a
transaction marker or compaction left a hole. The projection rewinds once (its consumer may
just have run ahead), then goes past the gap, applies what follows and reports what was
missing; a rebuild reading from the log start goes past at once. Either way the read models
equal a clean rebuild of what the log holds.

The embedded broker can make neither kind of gap (Tansu answers neither DeleteRecords nor
InitProducerId for transactions: both were tried), so the records here are handed to the
projection's applier as its consumer would, with real Redis behind it.
"""

from __future__ import annotations

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from services.projection.main import create_app as projection_app
from services.projection.queries.status import digest
from shared import events as ev
from shared.events import Envelope
from shared.topics import MEMBERS, TopicNames
from tests.helpers import Infra, auth, running_app

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("service_env")]


def record(topic: str, offset: int, event: ev.Event) -> ConsumerRecord[bytes, bytes]:
    envelope = Envelope.wrap(event, producer="crm")
    value = envelope.to_bytes()
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=envelope.key.encode(),
        value=value,
        checksum=None,
        serialized_key_size=len(envelope.key),
        serialized_value_size=len(value),
        headers=[("type", envelope.type.encode())],
    )


async def test_a_gap_is_rewound_once_then_gone_past_and_reported(
    infra: Infra, namespace: str
) -> None:
    topic = TopicNames(namespace)(MEMBERS)
    tp = TopicPartition(topic, 0)
    # Offsets 0..2 are gone (retention); 3 and 4 are what the log still holds.
    held = [
        record(topic, 3, ev.MemberRegistered(member_id="ann", name="Ann", industry="Tech")),
        record(topic, 4, ev.MemberRegistered(member_id="bob", name="Bob", industry="Tech")),
    ]
    app = projection_app()
    async with running_app(app) as client:
        applier = app.state.wired.applier
        first = await applier.process(held)  # maybe the consumer ran ahead: rewind to 0
        second = await applier.process(held)  # from 0 the log still starts at 3: a gap
        status = (await client.get("/projection/status", headers=auth())).json()
        # A rebuild reads from the log start: the gap is gone past at once.
        version = status["version"] + 1
        rebuild = await applier.process(held, version=version, contiguous=True)
        rebuilt_positions = await app.state.wired.store.positions(version)
        metrics = (await client.get("/metrics")).text
        store = app.state.wired.store
        live, rebuilt = await digest(store, version - 1), await digest(store, version)

    assert first == {tp: 0}
    assert second == {}
    assert status["gaps"] == {f"{topic}:0": 3}
    assert status["positions"][f"{topic}:0"] == 5
    assert status["events_applied"] == 2
    assert rebuild == {} and rebuilt_positions[f"{topic}:0"] == 5
    assert f'rapport_projection_offsets_skipped_total{{topic="{topic}"}} 6.0' in metrics
    assert rebuilt == live  # what the log still holds, applied once either way


async def test_a_log_that_began_again_is_applied_not_skipped_and_reported(
    infra: Infra, namespace: str
) -> None:
    topic = TopicNames(namespace)(MEMBERS)
    tp = TopicPartition(topic, 0)
    before = [
        record(topic, n, ev.MemberRegistered(member_id=f"m{n}", name="M", industry="Tech"))
        for n in range(10)
    ]
    # The broker lost its log and began again: new events, at offsets the old log had used.
    after = [
        record(topic, n, ev.MemberRegistered(member_id=f"new{n}", name="N", industry="Tech"))
        for n in range(2)
    ]
    app = projection_app()
    async with running_app(app) as client:
        applier = app.state.wired.applier
        await applier.process(before, highwaters={tp: 10})
        # A re-delivery of old records (the log is intact: its end is past them) is skipped...
        redelivered = await applier.process(before[:3], highwaters={tp: 10})
        status_before = (await client.get("/projection/status", headers=auth())).json()
        # ...but records of a log that ends before the stored position are new.
        await applier.process(after, highwaters={tp: 2})
        status = (await client.get("/projection/status", headers=auth())).json()
        # A clean rebuild of both logs as they came (the old, then the new one) agrees.
        version = status["version"] + 1
        await applier.process(before, version=version, contiguous=True)
        await applier.process(after, version=version, highwaters={tp: 2})
        store = app.state.wired.store
        live, rebuilt = await digest(store, version - 1), await digest(store, version)

    assert redelivered == {} and status_before["events_applied"] == 10
    assert status["events_applied"] == 12  # not skipped as "applied before"
    assert status["positions"][f"{topic}:0"] == 2  # where the new log is
    assert status["log_resets"] == {f"{topic}:0": 1}
    assert status_before["log_resets"] == {}
    assert rebuilt == live
