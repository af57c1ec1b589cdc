"""The layering rules of STYLE.md, enforced.

* The sans-I/O core imports no I/O: no asyncio, sockets, os, clocks, threads.
* Imports only point down: the core imports nothing above it; transports do not
  import the API layer.
* Integrations (the CLI, benchmarks, examples) use the public API only.
* Every public name is in ``asyncbus.__all__`` and has a docstring.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import asyncbus

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "asyncbus"
FORBIDDEN_IN_CORE = {
    "asyncio",
    "socket",
    "os",
    "time",
    "select",
    "selectors",
    "threading",
    "subprocess",
    "signal",
    "uvloop",
    "anyio",
}


def _imports(path: Path) -> list[tuple[str, int]]:
    """Return (absolute-ish module, level) for every import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))

    return found


def _imported_names(path: Path, level: int) -> list[str]:
    """Return the names imported by ``from <level dots> import ...`` (no module)."""
    tree = ast.parse(path.read_text(), str(path))
    return [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == level and not node.module
        for alias in node.names
    ]


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


@pytest.mark.parametrize("path", _files(PACKAGE / "_core"), ids=lambda p: p.name)
def test_core_does_no_io(path: Path) -> None:
    for module, level in _imports(path):
        top = module.split(".")[0]
        if level == 0:
            assert top not in FORBIDDEN_IN_CORE, f"{path.name} imports {module}"
            assert top != "asyncbus", f"{path.name} imports {module}: use relative imports"
        else:
            # Relative: within _core (level 1) or the exceptions module (level 2) only.
            assert level == 1 or module == "_exceptions", f"{path.name} imports {module}"


@pytest.mark.parametrize("path", _files(PACKAGE / "_transports"), ids=lambda p: p.name)
def test_transports_do_not_import_the_api(path: Path) -> None:
    api = {"_bus", "_subscription", "_adapters", "_message", "cli"}
    for module, level in _imports(path):
        if level:
            assert module.split(".")[0] not in api, f"{path.name} imports {module}"


INTEGRATIONS = [
    *_files(PACKAGE / "cli"),
    PACKAGE / "__main__.py",
    *_files(ROOT / "benchmarks"),
    *_files(ROOT / "examples"),
]


@pytest.mark.parametrize("path", INTEGRATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_integrations_use_the_public_api_only(path: Path) -> None:
    for module, level in _imports(path):
        parts = module.split(".")
        if level == 0 and parts[0] == "asyncbus":
            assert all(not part.startswith("_") for part in parts[1:]), (
                f"{path.name} imports private {module}"
            )
        elif level and (level >= 2 or path.parent == PACKAGE):
            # Relative to asyncbus itself: its private modules are off limits. A level-1
            # import inside a public subpackage (asyncbus/cli/) is of its own modules.
            targets = parts if module else _imported_names(path, level)
            assert all(not part.startswith("_") for part in targets), (
                f"{path.name} imports private {'.' * level}{module}"
            )


def test_public_names_are_exported_and_documented() -> None:
    public = {name for name in dir(asyncbus) if not name.startswith("_")} - {"annotations"}
    modules = {name for name in public if inspect.ismodule(getattr(asyncbus, name))}
    assert public - modules <= set(asyncbus.__all__)
    for name in asyncbus.__all__:
        value = getattr(asyncbus, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"asyncbus.{name} has no docstring"
            for attribute, member in vars(value).items():
                if attribute.startswith("_") or not callable(member):
                    continue

                assert inspect.getdoc(member), f"asyncbus.{name}.{attribute} has no docstring"
