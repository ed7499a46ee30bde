"""Lua scripts, one way: every script is a file in its package's `lua/` folder, registered on
a client by name. The kit's own scripts live in `shared/lua/`, a service's in
`services/<name>/lua/`."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis


@cache
def lua_source(package: str, name: str) -> str:
    return resources.files(package).joinpath("lua", f"{name}.lua").read_text()


def register(redis: Redis, package: str, name: str) -> Any:
    """A callable script (EVALSHA, falling back to EVAL) for `<package>/lua/<name>.lua`."""
    return redis.register_script(lua_source(package, name))
