"""systemd units: `systemd-analyze verify` is clean, exposure scores stay low, policy holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.ops.tools import REPO, require_tool, run

UNITS = REPO / "systemd"
# The application services (sandboxed, scored). Templates are verified as instance g1.
SERVICES = [
    "kalshi-gatherer.service",
    "kalshi-dedup.service",
    "kalshi-export.service",
    "kalshi-audit.service",
    "kalshi-retention@.service",
]
# kalshi-bootstrap@ is the provisioner: root, no sandbox by design (docs/operations.md).
ALL_UNITS = [
    *SERVICES,
    "kalshi-export.timer",
    "kalshi-audit.timer",
    "kalshi-retention@.timer",
    "kalshi-bootstrap@.service",
]
INSTALL_PREFIX = "/opt/kalshi-data/"
# Highest accepted `systemd-analyze security` overall exposure (0 = locked down, 10 = exposed).
MAX_EXPOSURE = 2.0
EXEC_START = {
    "kalshi-gatherer.service": (
        "/opt/kalshi-data/.venv/bin/kalshi-data gatherer --config /etc/kalshi-data/gatherer.yaml"
    ),
    "kalshi-dedup.service": (
        "/opt/kalshi-data/.venv/bin/kalshi-data dedup --config /etc/kalshi-data/dedup.yaml"
    ),
    "kalshi-export.service": (
        "/opt/kalshi-data/.venv/bin/kalshi-data export --config /etc/kalshi-data/export.yaml"
    ),
    "kalshi-audit.service": (
        "/opt/kalshi-data/.venv/bin/kalshi-data audit --config /etc/kalshi-data/audit.yaml"
    ),
    "kalshi-retention@.service": (
        "/opt/kalshi-data/.venv/bin/kalshi-data retention --gatherer-id %i "
        "--gatherer-dsn file:%d/gatherer-dsn --production-dsn file:%d/production-dsn --keep 7d"
    ),
}


def instance(name: str, instance_id: str = "g1") -> str:
    """``kalshi-retention@.service`` -> ``kalshi-retention@g1.service`` (others unchanged)."""
    return name.replace("@.", f"@{instance_id}.")


def parse_unit(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys may repeat)."""
    out: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not an assignment: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def values(path: Path, section: str, key: str) -> list[str]:
    """Every value assigned to ``section.key`` in the unit file."""
    return [v for s, k, v in parse_unit(path) if s == section and k == key]


@pytest.fixture
def staged_units(tmp_path: Path) -> Path:
    """Copies of the units whose ExecStart points at a stub executable under tmp_path.

    `systemd-analyze verify` insists that ExecStart's binary exists; the real one lives in
    /opt/kalshi-data on deployed hosts only.
    """
    prefix = tmp_path / "opt" / "kalshi-data"
    stub = prefix / ".venv" / "bin" / "kalshi-data"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    staged = tmp_path / "units"
    staged.mkdir()
    for name in ALL_UNITS:
        text = (UNITS / name).read_text().replace(INSTALL_PREFIX, f"{prefix}/")
        (staged / name).write_text(text)
        if "@." in name:  # a template and the instance verify and security look at
            (staged / instance(name, "gatherer" if "bootstrap" in name else "g1")).write_text(text)
    return staged


def test_units_verify_without_warnings(staged_units: Path) -> None:
    """systemd-analyze verify accepts every unit and prints no warning at all."""
    tool = require_tool("systemd-analyze")
    names = [instance(n, "gatherer" if "bootstrap" in n else "g1") for n in ALL_UNITS]
    result = run([tool, "verify", *(str(staged_units / n) for n in names)])
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_verify_reports_a_misspelled_directive(staged_units: Path) -> None:
    """The verify check can fail: a misspelled key produces a warning naming it."""
    tool = require_tool("systemd-analyze")
    unit = staged_units / "kalshi-gatherer.service"
    unit.write_text(unit.read_text().replace("Restart=always", "Restrat=always"))
    result = run([tool, "verify", str(unit)])
    assert "Restrat" in result.stderr


def exposure(tool: str, unit: Path) -> float:
    """The overall exposure level `systemd-analyze security --offline=yes` gives ``unit``."""
    result = run([tool, "security", "--offline=yes", str(unit)])
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:]
    return float(match.group(1))


@pytest.mark.parametrize("name", SERVICES)
def test_exposure_score_below_threshold(staged_units: Path, name: str) -> None:
    """Each service's offline security exposure is at most MAX_EXPOSURE (documented score)."""
    tool = require_tool("systemd-analyze")
    score = exposure(tool, staged_units / instance(name))
    assert score <= MAX_EXPOSURE, f"{name}: exposure {score} > {MAX_EXPOSURE}"
    documented = (REPO / "docs" / "operations.md").read_text()
    assert f"| `{name}` | {score} |" in documented, f"docs/operations.md lacks {name} {score}"


def test_exposure_rises_without_hardening(staged_units: Path) -> None:
    """The score check can fail: stripping the sandbox pushes exposure over the threshold."""
    tool = require_tool("systemd-analyze")
    unit = staged_units / "kalshi-gatherer.service"
    text = unit.read_text()
    bare = text[: text.index("# Hardening")] + "\n[Install]\nWantedBy=multi-user.target\n"
    unit.write_text(bare)
    assert exposure(tool, unit) > MAX_EXPOSURE


@pytest.mark.parametrize("name", SERVICES)
def test_service_policy(name: str) -> None:
    """Each service runs the packaged CLI, restarts with limits and keeps the §7 sandbox."""
    unit = UNITS / name
    assert values(unit, "Service", "ExecStart") == [EXEC_START[name]]
    if name in ("kalshi-gatherer.service", "kalshi-dedup.service"):
        # Long-running: restart for ever, 10 s apart; never stop retrying (no start limit).
        assert values(unit, "Service", "Restart") == ["always"]
        assert values(unit, "Service", "RestartSec") == ["10"]
        assert values(unit, "Unit", "StartLimitIntervalSec") == ["0"]
        assert values(unit, "Unit", "StartLimitBurst") == []
    elif name in ("kalshi-export.service", "kalshi-audit.service"):
        assert values(unit, "Service", "Restart") == ["on-failure"]
        assert values(unit, "Unit", "StartLimitBurst")
    else:  # retention: the next daily run retries
        assert values(unit, "Service", "Type") == ["oneshot"]
    # export runs as a static user so node-exporter can read its StateDirectory's textfile.
    user = ("User", "kalshi-export") if name == "kalshi-export.service" else ("DynamicUser", "yes")
    assert values(unit, "Service", user[0]) == [user[1]]
    for key, expected in {
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "ProtectSystem": "strict",
        "SystemCallArchitectures": "native",
    }.items():
        assert values(unit, "Service", key) == [expected], key
    assert "@system-service" in values(unit, "Service", "SystemCallFilter")


def test_gatherer_spool_lives_in_its_state_directory() -> None:
    """The gatherer's StateDirectory is where the example config puts its disk spool."""
    unit = UNITS / "kalshi-gatherer.service"
    (state,) = values(unit, "Service", "StateDirectory")
    config = (REPO / "examples" / "gatherer.yaml").read_text()
    match = re.search(r"^spool_dir:\s*(\S+)", config, re.MULTILINE)
    assert match
    assert match.group(1).startswith(f"/var/lib/{state}/")


@pytest.mark.parametrize("name", SERVICES)
def test_no_secret_in_unit(name: str) -> None:
    """Units carry no secret: no DSN, password or key in Environment=, only LoadCredential=."""
    unit = UNITS / name
    for _, key, value in parse_unit(unit):
        assert "://" not in value or key == "Documentation", f"{key}={value}"
        if key == "Environment":
            assert not re.search(r"PASS|SECRET|DSN|TOKEN|KEY", value, re.IGNORECASE), value
    creds = values(unit, "Service", "LoadCredential")
    assert creds
    for cred in creds:
        cred_name, _, source = cred.partition(":")
        assert re.fullmatch(r"[a-z0-9-]+", cred_name), cred
        assert source.startswith(f"/etc/credstore/{unit.stem.rstrip('@')}/"), cred


def credential_refs(text: str, unit: str) -> set[str]:
    """Credential names a config references as /run/credentials/<unit>/<name>."""
    return set(re.findall(rf"/run/credentials/{re.escape(unit)}/([A-Za-z0-9_.-]+)", text))


@pytest.mark.parametrize(
    ("config", "name"),
    [
        ("examples/gatherer.yaml", "kalshi-gatherer.service"),
        ("examples/dedup.yaml", "kalshi-dedup.service"),
        ("infra/terraform/templates/gatherer.yaml.tftpl", "kalshi-gatherer.service"),
        ("infra/terraform/templates/dedup.yaml.tftpl", "kalshi-dedup.service"),
        ("infra/terraform/templates/export.yaml.tftpl", "kalshi-export.service"),
    ],
)
def test_config_credentials_are_loaded_by_the_unit(config: str, name: str) -> None:
    """Every /run/credentials/<unit>/<name> a config reads is provided by a LoadCredential=."""
    text = (REPO / config).read_text()
    if "${g}" in text:  # Terraform loop variable over the gatherer ids
        text = "\n".join(text.replace("${g}", g) for g in ("g1", "g2", "g3"))
    refs = credential_refs(text, name)
    assert refs, f"{config} references no credential of {name}"
    loaded = {c.partition(":")[0] for c in values(UNITS / name, "Service", "LoadCredential")}
    if name == "kalshi-dedup.service":
        # One per gatherer id, from the bootstrap's drop-in (test_infra checks the drop-in).
        loaded |= {r for r in refs if re.fullmatch(r"gatherer-[a-z0-9-]+-dsn", r)}
    assert refs <= loaded, f"{config} reads {sorted(refs - loaded)} that {name} does not load"


def test_timer_starts_the_export_service() -> None:
    """The timer triggers kalshi-export.service and catches up missed runs after downtime."""
    timer = UNITS / "kalshi-export.timer"
    assert values(timer, "Timer", "Unit") == ["kalshi-export.service"]
    assert values(timer, "Timer", "Persistent") == ["true"]
    assert values(timer, "Timer", "OnCalendar")
