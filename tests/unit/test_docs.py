"""`make docs`: the AsyncAPI event contract and the OpenAPI documents match the code."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from rapport.docs import build_asyncapi, example_envelope, write_docs
from shared import events as ev

REPO = Path(__file__).resolve().parents[2]


def test_every_event_is_documented_on_its_topic_with_a_valid_example() -> None:
    doc = build_asyncapi()
    assert doc["asyncapi"].startswith("3.")
    for name, cls in ev.EVENT_TYPES.items():
        channel = next(c for c in doc["channels"].values() if c["address"] == cls.topic)
        assert name in channel["messages"], name
        example = doc["components"]["messages"][name]["examples"][0]["payload"]
        # The example is accepted by the code that consumes events…
        envelope, event = ev.decode(json.dumps(example))
        assert type(event) is cls and envelope.key == event.partition_key
        # …and by the published JSON schemas of the envelope and of this payload.
        for ref in ("#/components/schemas/Envelope", f"#/components/schemas/{name}Payload"):
            instance = example if ref.endswith("Envelope") else example["payload"]
            jsonschema.validate(instance, {**doc, "$ref": ref})


def test_the_published_schema_rejects_what_the_code_rejects() -> None:
    doc = build_asyncapi()
    bad = example_envelope(ev.InvitationSent)["payload"] | {"sender": "not an id!"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, {**doc, "$ref": "#/components/schemas/InvitationSentPayload"})
    with pytest.raises(ev.InvalidEvent):
        ev.decode(json.dumps(example_envelope(ev.InvitationSent) | {"payload": bad}))


def test_committed_docs_are_what_make_docs_generates(tmp_path: Path) -> None:
    generated = write_docs(tmp_path)
    for path in generated:
        committed = REPO / "docs" / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `make docs`"
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run `make docs`"
    assert yaml.safe_load((REPO / "docs" / "asyncapi.yaml").read_text()) == json.loads(
        json.dumps(build_asyncapi())
    )


def test_every_api_operation_has_tags_and_documented_errors() -> None:
    for spec_path in sorted((REPO / "docs" / "openapi").glob("*.json")):
        spec = json.loads(spec_path.read_text())
        for path, operations in spec["paths"].items():
            for method, op in operations.items():
                where = f"{spec_path.stem} {method.upper()} {path}"
                assert op.get("tags"), where
                assert op.get("summary"), where
                if path in ("/healthz", "/readyz", "/metrics", "/dashboard"):
                    continue
                assert {"401", "422", "503"} <= set(op["responses"]), where
                error = op["responses"]["401"]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/ErrorResponse"}, where
