"""The README's architecture section names every package of the wheel, and only those: adding or
removing a package fails here until the README says what it is for."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The wheel's top-level packages (pyproject's [tool.setuptools.packages.find] include).
ROOTS = ("kalshi_data", "gatherer", "deduplicator", "simulator")


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _documented(section: str) -> list[str]:
    """The package of each list item: ``- `name` — what it is for``."""
    return re.findall(r"^- `([a-z_.]+)` — \S", section, flags=re.MULTILINE)


def _packages() -> set[str]:
    return {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ROOTS
        for init in (ROOT / top).rglob("__init__.py")
    }


def test_readme_lists_every_package_once():
    section = _section((ROOT / "README.md").read_text(), "Architecture")
    listed = _documented(section)
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == _packages()


def test_every_package_is_in_the_diagram():
    section = _section((ROOT / "README.md").read_text(), "Architecture")
    diagram = section[section.index("```") : section.index("```", section.index("```") + 3)]
    missing = [
        p for p in _packages() if not re.search(rf"(?<![\w.]){re.escape(p)}(?![\w])", diagram)
    ]
    assert missing == []


def test_the_check_sees_a_new_package():
    """The walk finds packages by their __init__.py (what setuptools ships), nested ones too."""
    found = _packages()
    assert {"kalshi_data.tools", "kalshi_data.testing", "kalshi_data.kalshi", "gatherer"} <= found
    assert _documented("- `a.b` — one sentence.\n- `c` — another.\n") == ["a.b", "c"]
