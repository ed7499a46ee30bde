"""The shape the README's layout section promises, checked on the code itself."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("invitation", "connection", "engagement", "projection")
FRAMEWORKS = ("fastapi", "starlette", "redis", "aiokafka", "faststream")
# What a domain may import besides the standard library: pydantic, the event catalog and its
# topics, the domain errors, and (projection) the scoring model; all of them pure.
DOMAIN_MAY_IMPORT = {
    "pydantic",
    "shared.events",
    "shared.domain",
    "shared.scoring",
    "shared.topics",
}
SERVICE_FILES = ("domain.py", "store.py", "api.py", "consumers.py", "main.py", "deps.py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "shared":  # `from shared import events` imports shared.events
                found.update(f"shared.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_importing_a_domain_loads_no_framework(service: str) -> None:
    code = (
        f"import sys, json; import services.{service}.domain; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    )
    assert not set(loaded) & set(FRAMEWORKS), f"services.{service}.domain loads {loaded}"


@pytest.mark.parametrize("service", SERVICES)
def test_a_domain_imports_only_the_standard_library_pydantic_and_the_events(
    service: str,
) -> None:
    for module in _imports(REPO / "services" / service / "domain.py"):
        top = module.split(".")[0]
        allowed = top in sys.stdlib_module_names or module in DOMAIN_MAY_IMPORT
        assert allowed, f"services/{service}/domain.py imports {module}"


def test_the_kit_imports_no_service_and_no_tooling() -> None:
    for path in (REPO / "shared").rglob("*.py"):
        for module in _imports(path):
            assert not module.startswith(("services", "rapport", "bench", "tests")), (
                f"{path.relative_to(REPO)} imports {module}"
            )


def test_no_service_imports_the_tooling() -> None:
    for path in (REPO / "services").rglob("*.py"):
        for module in _imports(path):
            assert not module.startswith(("rapport", "bench", "tests")), (
                f"{path.relative_to(REPO)} imports {module}"
            )


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_package_has_the_same_files(service: str) -> None:
    present = {p.name for p in (REPO / "services" / service).glob("*.py")}
    assert set(SERVICE_FILES) <= present, f"services/{service} lacks {set(SERVICE_FILES) - present}"


def test_every_lua_script_is_a_file_in_a_lua_folder() -> None:
    """Lua lives one way: `<package>/lua/<name>.lua`, registered by `shared.scripts`."""
    for path in [*(REPO / "shared").rglob("*.py"), *(REPO / "services").rglob("*.py")]:
        text = path.read_text()
        assert "redis.call(" not in text, f"{path.relative_to(REPO)} has inline Lua"
        if path.name != "scripts.py":
            assert "register_script(" not in text, f"{path.relative_to(REPO)} registers Lua"
