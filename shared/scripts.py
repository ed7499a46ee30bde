"""Lua scripts, one way: every script is a file in its package's `lua/` folder, registered on
a client by name. The kit's own scripts live in `shared/lua/`, a service's in
`services/<name>/lua/`. A script whose first lines say `--! use <name>` gets the functions
of `<name>.lua` (same folder) put before it: Redis scripts cannot import, and one step
written once serves several scripts."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis

USE = "--! use "


@cache
def lua_source(package: str, name: str) -> str:
    text = resources.files(package).joinpath("lua", f"{name}.lua").read_text()
    used = [line.removeprefix(USE).strip() for line in text.splitlines() if line.startswith(USE)]
    return "\n".join([*(lua_source(package, lib) for lib in used), text])


def register(redis: Redis, package: str, name: str) -> Any:
    """A callable script (EVALSHA, falling back to EVAL) for `<package>/lua/<name>.lua`."""
    return redis.register_script(lua_source(package, name))
