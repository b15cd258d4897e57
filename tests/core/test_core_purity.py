"""mailnode.core stays pure: no event loop, database, network or DKIM library behind its back."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

import mailnode.core

FORBIDDEN = {"asyncio", "sqlalchemy", "aiohttp", "aiosmtpd", "aiosmtplib", "dns", "dkim"}
# mailnode.errors is the exception tree; it is itself pure (it only uses core.response).
ALLOWED_MAILNODE = ("mailnode.core", "mailnode.errors")
# Libraries that only compute (no sockets, files or threads): templates and cryptography.
ALLOWED_PURE_LIBRARIES = frozenset({"jinja2", "markupsafe", "cryptography"})


def _core_modules() -> list[str]:
    names = ["mailnode.core"]
    for info in pkgutil.walk_packages(mailnode.core.__path__, prefix="mailnode.core."):
        names.append(info.name)
    return names


def _imports(module_name: str) -> set[str]:
    """Every absolute module name the module's source imports, at any depth of its AST."""
    module = importlib.import_module(module_name)
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_walk_finds_the_core_modules() -> None:
    modules = _core_modules()
    for expected in ("address", "headers", "dsn", "message_builder", "response", "retry"):
        assert f"mailnode.core.{expected}" in modules


@pytest.mark.parametrize("module_name", _core_modules())
def test_core_module_imports_no_io_library(module_name: str) -> None:
    roots = {name.split(".")[0] for name in _imports(module_name)}
    assert not roots & FORBIDDEN, f"{module_name} imports {sorted(roots & FORBIDDEN)}"


@pytest.mark.parametrize("module_name", _core_modules())
def test_core_module_imports_only_stdlib_and_core(module_name: str) -> None:
    foreign = {
        name
        for name in _imports(module_name)
        if name.split(".")[0] not in sys.stdlib_module_names
        and not name.startswith(ALLOWED_MAILNODE)
        and name.split(".")[0] not in ALLOWED_PURE_LIBRARIES
        and name != "__future__"
    }
    allowed = "stdlib, mailnode.core and pure compute libraries only"
    assert not foreign, f"{module_name} imports {sorted(foreign)} ({allowed})"
