"""Hypothesis strategies for the event catalog, derived from the models' own field types."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, get_args, get_origin

from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from shared.events import EVENT_TYPES, ID_PATTERN, Event

ids = st.from_regex(ID_PATTERN, fullmatch=True)
texts = st.text(max_size=60)


def _field_strategy(name: str, annotation: Any, metadata: list[Any]) -> st.SearchStrategy[Any]:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        return st.none() | st.one_of(*(_field_strategy(name, a, metadata) for a in options))
    if origin is typing.Annotated:
        base, *extra = get_args(annotation)
        return _field_strategy(name, base, [*metadata, *extra])
    if origin is Literal:
        return st.sampled_from(get_args(annotation))
    if annotation is bool:
        return st.booleans()
    if annotation is str:
        pattern = next(
            (getattr(m, "pattern", None) for m in metadata if getattr(m, "pattern", None)), None
        )
        if pattern:
            return ids
        max_len = next(
            (getattr(m, "max_length", None) for m in metadata if getattr(m, "max_length", None)), 60
        )
        min_len = next(
            (getattr(m, "min_length", None) for m in metadata if getattr(m, "min_length", None)), 0
        )
        return st.text(min_size=min_len or 0, max_size=min(max_len, 60))
    raise TypeError(f"no strategy for {name}: {annotation!r}")


def event_strategy(cls: type[Event]) -> st.SearchStrategy[Event]:
    fields = {
        name: _field_strategy(name, info.annotation, list(info.metadata))
        for name, info in cls.model_fields.items()
    }
    # Field by field, then only what the model accepts (a pair event needs two members).
    return st.fixed_dictionaries(fields).map(_validated(cls)).filter(lambda e: e is not None)


def _validated(cls: type[Event]) -> Any:
    def build(values: dict[str, Any]) -> Event | None:
        try:
            return cls(**values)
        except ValidationError:
            return None

    return build


any_event: st.SearchStrategy[BaseModel] = st.one_of(
    *(event_strategy(cls) for cls in EVENT_TYPES.values())
)
