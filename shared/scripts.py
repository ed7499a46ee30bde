"""Lua scripts, one way: every script is a file in its package's `lua/` folder, registered on
a client by name. The kit's own scripts live in `shared/lua/`, a service's in
`services/<name>/lua/`. A script whose first lines say `--! use <name>` gets the functions
of `<name>.lua` (same folder) put before it: Redis scripts cannot import, and one step
written once serves several scripts.

A script called often with a large body (the projection's graph queries) is a function
library instead (`library`): Redis defines its functions once, at FUNCTION LOAD, where an
EVALSHA runs the whole body (every definition) on every call."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.redis import AutoPipeline

USE = "--! use "


@cache
def lua_source(package: str, name: str) -> str:
    text = resources.files(package).joinpath("lua", f"{name}.lua").read_text()
    used = [line.removeprefix(USE).strip() for line in text.splitlines() if line.startswith(USE)]
    return "\n".join([*(lua_source(package, lib) for lib in used), text])


def register(redis: Redis, package: str, name: str) -> Any:
    """A callable script (EVALSHA, falling back to EVAL) for `<package>/lua/<name>.lua`."""
    return redis.register_script(lua_source(package, name))


@dataclass(frozen=True)
class Library:
    """A Lua file loaded as a Redis function library, called through its one entry point.
    The file registers its entry as `FUNCTION_NAME`, which is put before it with the name:
    the library and function carry the source's hash, so two versions of a service sharing a
    Redis (a rolling deploy) each call their own. Loaded on first use, and again if the
    server lost it (a restart without persistence, FUNCTION FLUSH). Called through an
    `AutoPipeline`: a query is one call, and most of a lone call's time was redis-py's."""

    calls: AutoPipeline
    name: str
    source: str

    async def __call__(self, keys: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await self.calls.execute("FCALL", self.name, len(keys), *keys, *args)
        except ResponseError as exc:
            if "function not found" not in str(exc).lower():
                raise
        await self.calls.redis.function_load(self.source, replace=True)
        return await self.calls.execute("FCALL", self.name, len(keys), *keys, *args)


@cache
def _library_source(package: str, name: str) -> tuple[str, str]:
    body = lua_source(package, name)
    digest = hashlib.sha1(body.encode()).hexdigest()[:12]
    function = f"rapport_{name}_{digest}"
    head = f"#!lua name={function}\nlocal FUNCTION_NAME = '{function}'\n"
    return function, head + body


def library(calls: AutoPipeline, package: str, name: str) -> Library:
    """`<package>/lua/<name>.lua` as a function library on `calls`' client (see `Library`)."""
    function, source = _library_source(package, name)
    return Library(calls, function, source)
