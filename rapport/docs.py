"""`make docs`: the event contract (AsyncAPI 3.0) and each service's OpenAPI, from the code.

Everything is generated from `shared.events` (the catalog), `shared.topics` and the service
apps, so the documents cannot drift from what runs. Output is plain YAML/JSON/Markdown:
nothing to fetch from a CDN to read it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from fastapi import FastAPI

from rapport.authorization import render_markdown
from shared import events as ev
from shared.topics import (
    ALL_TOPICS,
    CONNECTIONS,
    DLQ_PARTITIONS,
    ENGAGEMENTS,
    INVITATIONS,
    MEMBERS,
    PARTITIONS,
    dlq,
)

VERSION = "1.0.0"
KEY_RULES = {
    MEMBERS: "member_id",
    INVITATIONS: "unordered pair `a|b` (a < b) of sender and recipient",
    CONNECTIONS: "unordered pair `a|b` (a < b) of the two members",
    ENGAGEMENTS: "the acting member (actor, or member_id for milestones)",
}
TOPIC_SUMMARIES = {
    MEMBERS: "Member lifecycle: registration, profile changes, deactivation.",
    INVITATIONS: "Invitations between two members and how each one ended.",
    CONNECTIONS: "Connections, blocks, follows and custom lists.",
    ENGAGEMENTS: "Engagement between members and milestones they announce.",
}
# Plausible values for the examples, by field name; every example is validated by its model.
SAMPLE_VALUES: dict[str, Any] = {
    "member_id": "ada",
    "sender": "ada",
    "actor": "ada",
    "member_a": "ada",
    "blocker": "ada",
    "follower": "ada",
    "owner": "grace",
    "removed_by": "ada",
    "recipient": "grace",
    "target": "grace",
    "member_b": "grace",
    "blocked": "grace",
    "followee": "grace",
    "invitation_id": "5f0c2a9e8b7d4c3f9a1e2d3c4b5a6978",
    "list_name": "mentors",
    "name": "Ada Lovelace",
    "industry": "Technology",
    "headline": "Analyst of engines",
    "location": "London",
    "employer": "Analytical Engines Ltd",
    "title": "Engineer",
    "message": "We met at the Royal Society",
    "ref": "post-42",
    "detail": "10 years at Analytical Engines",
}
EXAMPLE_TIME = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


def _own_doc(cls: type) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    return " ".join(doc.split())


def _literal_choice(annotation: Any) -> Any:
    if get_origin(annotation) is Literal:
        return get_args(annotation)[0]
    for arg in get_args(annotation):
        if (choice := _literal_choice(arg)) is not None:
            return choice
    return None


def example_event(cls: type[ev.Event]) -> ev.Event:
    """A valid instance of `cls` with every field filled (optional ones too)."""
    values: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        choice = _literal_choice(field.annotation)
        if choice is not None:
            values[name] = choice
        elif name in SAMPLE_VALUES:
            values[name] = SAMPLE_VALUES[name]
        elif name == "previous_industry":
            values[name] = "Finance"
    return cls(**values)


def example_envelope(cls: type[ev.Event]) -> dict[str, Any]:
    envelope = ev.Envelope.wrap(example_event(cls), producer="crm", occurred_at=EXAMPLE_TIME)
    return envelope.model_dump(mode="json", exclude_none=True) | {
        "event_id": "0b4f6a44-5f1e-4d59-9a57-1c1d0f3e2b11"
    }


def _schemas() -> dict[str, Any]:
    """Payload schemas of every event plus the envelope, with refs into components."""
    ref = "#/components/schemas/{model}"
    schemas: dict[str, Any] = {}
    for name, cls in ev.EVENT_TYPES.items():
        schema = cls.model_json_schema(ref_template=ref)
        schemas.update(schema.pop("$defs", {}))
        schema["title"] = f"{name}Payload"
        schemas[f"{name}Payload"] = schema
    envelope = ev.Envelope.model_json_schema(ref_template=ref)
    schemas.update(envelope.pop("$defs", {}))
    envelope["description"] = _own_doc(ev.Envelope)
    schemas["Envelope"] = envelope
    return schemas


def build_asyncapi() -> dict[str, Any]:
    messages: dict[str, Any] = {}
    for name, cls in ev.EVENT_TYPES.items():
        summary = _own_doc(cls) or f"{name} on {cls.topic}."
        messages[name] = {
            "name": name,
            "title": name,
            "summary": summary,
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "const": name, "description": "Kafka header"}
                },
            },
            "payload": {
                "allOf": [
                    {"$ref": "#/components/schemas/Envelope"},
                    {
                        "type": "object",
                        "properties": {
                            "type": {"const": name},
                            "schema_version": {"const": cls.schema_version},
                            "payload": {"$ref": f"#/components/schemas/{name}Payload"},
                        },
                    },
                ]
            },
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": KEY_RULES[cls.topic]},
                    "bindingVersion": "0.5.0",
                }
            },
            "examples": [{"name": f"{name}Example", "payload": example_envelope(cls)}],
        }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in ALL_TOPICS:
        short = topic.removeprefix("rapport.")
        names = [n for n, cls in ev.EVENT_TYPES.items() if cls.topic == topic]
        channels[short] = {
            "address": topic,
            "title": topic,
            "description": f"{TOPIC_SUMMARIES[topic]} Message key: {KEY_RULES[topic]}; "
            "records of one key stay in order.",
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
            "bindings": {"kafka": {"partitions": PARTITIONS[topic], "bindingVersion": "0.5.0"}},
        }
        channels[f"{short}-dlq"] = {
            "address": dlq(topic),
            "title": dlq(topic),
            "description": f"Records of `{topic}` that a consumer could not process, unchanged, "
            "with headers `dlq_reason`, `dlq_consumer`, `source_topic`, `source_partition`, "
            "`source_offset`.",
            "bindings": {"kafka": {"partitions": DLQ_PARTITIONS, "bindingVersion": "0.5.0"}},
        }
        refs = [{"$ref": f"#/channels/{short}/messages/{n}"} for n in names]
        operations[f"publish{short.title()}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{short}"},
            "summary": f"Rapport consumes {topic}: external producers may publish here.",
            "messages": refs,
        }
        operations[f"emit{short.title()}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{short}"},
            "summary": f"Rapport's write services publish {topic} (transactional outbox).",
            "messages": refs,
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Rapport event catalog",
            "version": VERSION,
            "description": (
                "Domain events of Rapport, the connections backend of a professional network. "
                "Every record is a JSON envelope; its `payload` is the event. Evolution rule: "
                "fields are only ever added as optional; a breaking change bumps "
                "`schema_version` and Rapport upcasts old records. Generated by `make docs` "
                "from shared/events.py."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "embedded": {
                "host": "127.0.0.1:19092",
                "protocol": "kafka",
                "description": "`make run`'s embedded broker",
            },
            "compose": {
                "host": "kafka:9092",
                "protocol": "kafka",
                "description": "docker compose (Apache Kafka, KRaft)",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _schemas()},
    }


def _describe(prop: dict[str, Any]) -> str:
    """A field's JSON schema in a few words: type, allowed values, limits."""
    if "anyOf" in prop:
        return " or ".join(_describe(p) for p in prop["anyOf"] if p.get("type") != "null")
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    words = [prop.get("type", "any")]
    if "pattern" in prop:
        words.append(f"matching `{prop['pattern']}`")
    if "minLength" in prop:
        words.append(f"≥ {prop['minLength']} chars")
    if "maxLength" in prop:
        words.append(f"≤ {prop['maxLength']} chars")
    return " ".join(words)


def build_catalog_markdown() -> str:
    lines = [
        "# Rapport event catalog",
        "",
        "Generated by `make docs` from `shared/events.py` (the AsyncAPI document beside this",
        "file is the machine-readable form). Every record is an envelope:",
        "",
        "| field | meaning |",
        "|---|---|",
        "| `event_id` | UUID; consumers drop a second record with the same id |",
        "| `type`, `schema_version` | which event, which version of its payload |",
        "| `occurred_at` | ISO 8601 with a timezone |",
        "| `producer` | the system that wrote it |",
        "| `key` | the Kafka message key (see each topic) |",
        "| `correlation_id`, `causation_id` | optional tracing of what caused it |",
        "| `payload` | the event's fields below |",
        "",
    ]
    for topic in ALL_TOPICS:
        lines += [
            f"## `{topic}`",
            "",
            f"{TOPIC_SUMMARIES[topic]} Key: {KEY_RULES[topic]}. "
            f"{PARTITIONS[topic]} partitions; dead letters on `{dlq(topic)}`.",
            "",
        ]
        for name, cls in ev.EVENT_TYPES.items():
            if cls.topic != topic:
                continue
            doc = _own_doc(cls)
            lines += [f"### {name} (v{cls.schema_version})", ""]
            if doc:
                lines += [doc, ""]
            lines += ["| field | type | required |", "|---|---|---|"]
            schema = cls.model_json_schema()
            for field_name, prop in schema["properties"].items():
                required = "yes" if field_name in schema.get("required", ()) else "no"
                lines.append(f"| `{field_name}` | {_describe(prop)} | {required} |")
            example = json.dumps(example_envelope(cls), indent=2)
            lines += ["", "```json", example, "```", ""]
    return "\n".join(lines)


def build_openapi() -> dict[str, dict[str, Any]]:
    """Each service's OpenAPI document (building an app connects to nothing)."""
    from services.connection.main import create_app as connection
    from services.engagement.main import create_app as engagement
    from services.invitation.main import create_app as invitation
    from services.projection.main import create_app as projection

    apps: dict[str, Callable[[], FastAPI]] = {
        "invitation": invitation,
        "connection": connection,
        "engagement": engagement,
        "projection": projection,
    }
    return {name: make().openapi() for name, make in apps.items()}


def write_docs(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    asyncapi = build_asyncapi()
    path = out / "asyncapi.yaml"
    path.write_text(yaml.safe_dump(asyncapi, sort_keys=False, allow_unicode=True, width=100))
    written.append(path)
    path = out / "events.md"
    path.write_text(build_catalog_markdown())
    written.append(path)
    path = out / "authorization.md"
    path.write_text(render_markdown())
    written.append(path)
    (out / "openapi").mkdir(exist_ok=True)
    for name, spec in build_openapi().items():
        path = out / "openapi" / f"{name}.json"
        path.write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_docs(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(f"wrote {written_path}")
