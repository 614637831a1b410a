"""Runbooks can be followed: no password on a command line, every shell variable defined."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.ops.tools import REPO

DOCS = [REPO / "docs" / "operations.md", REPO / "infra" / "terraform" / "README.md"]
# Set by the shell or by systemd, not by the reader.
AMBIENT = {"HOME", "PATH", "CREDENTIALS_DIRECTORY", "PWD"}


def shell_blocks(path: Path) -> list[str]:
    """The ```sh blocks and the `inline` shell snippets of a document."""
    text = path.read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    inline = [m for m in re.findall(r"`([^`\n]+)`", text) if "$" in m]
    return blocks + inline


def defined(text: str) -> set[str]:
    """Names a document assigns: NAME=..., export NAME=..., for NAME in, read NAME."""
    names = set(re.findall(r"(?:^|[\s;(`])(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=", text))
    names |= set(re.findall(r"\bfor\s+([A-Za-z_][A-Za-z0-9_]*)\s+in\b", text))
    return names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_password_on_a_command_line(path: Path) -> None:
    """No secret is expanded into an argument: no password=$X, $(cat *.pw), PGPASSWORD=."""
    for block in shell_blocks(path):
        bad_patterns = (
            r"password=\$",
            r"\$\(cat [^)]*\.pw\)",
            r"PGPASSWORD=",
            r"--secret-string \"\$\(",
        )
        for bad in bad_patterns:
            assert not re.search(bad, block), f"{path.name}: {bad} in {block[:200]!r}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_runbook_variable_is_defined(path: Path) -> None:
    """Each $NAME a shell snippet uses is assigned somewhere in the document."""
    text = path.read_text()
    known = defined(text) | AMBIENT
    used: set[str] = set()
    for block in shell_blocks(path):
        used |= set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", block))
    used -= {"1", "0"}
    missing = sorted(n for n in used - known if not n.isdigit())
    assert missing == [], f"{path.name}: variables used but never defined: {missing}"


def test_variable_check_can_fail(tmp_path: Path) -> None:
    """The check finds an undefined variable."""
    doc = tmp_path / "x.md"
    doc.write_text("```sh\nA=1\necho $A $MASTER_ARN\n```\n")
    used = {n for b in shell_blocks(doc) for n in re.findall(r"\$\{?([A-Za-z_]\w*)", b)}
    assert used - defined(doc.read_text()) == {"MASTER_ARN"}
