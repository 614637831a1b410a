"""The package layout is the architecture: the core and the services import no operator tool
and no test harness, and start without the optional dependencies (boto3, pyarrow, rich).

    services (gatherer, deduplicator, simulator) ─┐
    tools (kalshi_data.tools) ────────────────────┼──> core (kalshi_data, kalshi_data.kalshi)
    testing (kalshi_data.testing) ────────────────┘

Only ``kalshi_data.cli`` (the entry point, which imports every subcommand's module by name when
it runs) sits above all of them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UPPER = ("kalshi_data.tools", "kalshi_data.testing")
#: Optional dependencies (pyproject extras): no service or core module may need them to import.
OPTIONAL = ("boto3", "botocore", "pyarrow", "rich")
SERVICES = ("gatherer", "deduplicator", "simulator")
ENTRY_POINT = "kalshi_data.cli"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: str) -> list[tuple[str, Path]]:
    return sorted((_module_name(p), p) for p in (ROOT / package).rglob("*.py"))


def _core() -> list[tuple[str, Path]]:
    return [
        (name, path)
        for name, path in _modules("kalshi_data")
        if name != ENTRY_POINT and not name.startswith(UPPER)
    ]


def _lower() -> list[tuple[str, Path]]:
    """The core and the services: everything that must not reach up."""
    return _core() + [m for pkg in SERVICES for m in _modules(pkg)]


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement names (module level or inside a function)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # ``from kalshi_data import tools`` names the package in the alias
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_the_walk_sees_the_core_and_the_services():
    names = {name for name, _ in _lower()}
    assert {"kalshi_data.config", "kalshi_data.kalshi.parse", "kalshi_data.migrate"} <= names
    assert {"gatherer.service", "deduplicator.sync", "simulator.session"} <= names
    assert not any(n.startswith(UPPER) or n == ENTRY_POINT for n in names)


def test_core_and_services_import_no_tool_and_no_test_harness():
    """Not even lazily, inside a function: a service host need not ship either."""
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {mod}"
        for _, path in _lower()
        for line, mod in _imports(path)
        if mod == "kalshi_data.tools"
        or mod == "kalshi_data.testing"
        or mod.startswith(tuple(f"{u}." for u in UPPER))
    ]
    assert bad == []


def test_the_check_catches_an_upward_import(tmp_path: Path):
    """The AST walk sees a function-level import of a tool (the rule can fail)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    from kalshi_data.tools.export import main\n    return main\n"
        "from kalshi_data import testing\n"
    )
    assert {m for _, m in _imports(probe)} >= {"kalshi_data.tools.export", "kalshi_data.testing"}


@pytest.mark.parametrize("group", ["core", *SERVICES])
def test_importing_leaves_out_tools_testing_and_optional_dependencies(group: str):
    """Import every module of the group in a fresh interpreter: none of the tools, the harness
    or the optional dependencies is loaded (config imports boto3 only for a secretsmanager:
    reference, when it is resolved)."""
    names = [n for n, _ in (_core() if group == "core" else _modules(group))]
    assert names
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {OPTIONAL!r}"
        f" or m.startswith({UPPER!r}))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == []
