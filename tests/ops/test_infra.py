"""Infrastructure templates: terraform fmt, template rendering, cfn-lint, bootstrap scripts."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.tools import REPO, require_tool, run

TF = REPO / "infra" / "terraform"
CFN = REPO / "infra" / "cloudformation" / "kalshi-data.yaml"
SCRIPTS = REPO / "infra" / "scripts"
TF_ENV = {"CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}


def terraform() -> str:
    """The terraform binary (skip when absent)."""
    return require_tool("terraform")


def tf_render(tmp_path: Path, expression: str) -> str:
    """Evaluate a Terraform expression offline (`terraform console` in an empty directory)."""
    tool = terraform()
    empty = tmp_path / "console"
    empty.mkdir(exist_ok=True)
    cli_config = tmp_path / "terraformrc"
    cli_config.write_text("")
    env = {**os.environ, **TF_ENV, "TF_CLI_CONFIG_FILE": str(cli_config)}
    result = subprocess.run(
        [tool, "console"],
        input=f"jsonencode({expression})\n",
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered: str = json.loads(json.loads(result.stdout.strip()))
    return rendered


def test_terraform_fmt_is_clean() -> None:
    """`terraform fmt -check -recursive infra/terraform` finds nothing to reformat."""
    tool = terraform()
    result = run([tool, "fmt", "-check", "-recursive", "-no-color", str(TF)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_terraform_fmt_detects_bad_layout(tmp_path: Path) -> None:
    """The fmt check can fail: a misaligned file is reported."""
    tool = terraform()
    bad = tmp_path / "bad.tf"
    bad.write_text('variable "x" {\ntype = string\n  default = "a"\n}\n')
    result = run([tool, "fmt", "-check", "-no-color", str(tmp_path)])
    assert result.returncode != 0


def test_every_variable_and_output_is_documented() -> None:
    """variables.tf and outputs.tf give each block a description (terraform-docs friendly)."""
    for name in ("variables.tf", "outputs.tf"):
        text = (TF / name).read_text()
        blocks = text.count('variable "') + text.count('output "')
        assert blocks > 0
        assert text.count("description") >= blocks, name


def test_terraform_covers_the_required_resources() -> None:
    """The Terraform configuration declares each required building block."""
    text = "\n".join(p.read_text() for p in TF.glob("*.tf"))
    for needle in (
        'resource "aws_vpc"',
        'resource "aws_nat_gateway"',
        'resource "aws_autoscaling_group" "gatherer"',
        'resource "aws_autoscaling_group" "dedup"',
        'health_check_type         = "EC2"',
        'resource "aws_db_instance" "production"',
        "multi_az               = true",
        '"rds.force_ssl"',
        'family = "postgres15"',
        'resource "aws_s3_bucket_public_access_block"',
        'resource "aws_s3_bucket_versioning"',
        'resource "aws_s3_bucket_lifecycle_configuration"',
        'resource "aws_s3_bucket_server_side_encryption_configuration"',
        'resource "aws_secretsmanager_secret"',
        'resource "aws_cloudwatch_metric_alarm"',
        'http_tokens                 = "required"',
    ):
        assert needle in text, needle


def field_names(cls: type) -> set[str]:
    """Field names of a config dataclass."""
    return {f.name for f in dataclasses.fields(cls)}


def check_keys(data: dict[str, Any], cls: type, where: str) -> None:
    """Every key of ``data`` is a field of ``cls`` (recursing into nested dataclasses)."""
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = set(data) - field_names(cls)
    assert not unknown, f"{where}: unknown keys {sorted(unknown)}"
    mod = sys.modules[cls.__module__]
    for key, value in data.items():
        hint = hints[key]
        sub = getattr(mod, hint, None) if isinstance(hint, str) else hint
        if isinstance(value, dict) and dataclasses.is_dataclass(sub):
            check_keys(value, sub, f"{where}.{key}")  # type: ignore[arg-type]


def test_rendered_configs_match_the_application(tmp_path: Path) -> None:
    """The config templates render to YAML whose keys the application's config classes accept."""
    from deduplicator.config import DedupConfig
    from kalshi_data.export import ExportConfig

    tpl = TF / "templates"
    dedup = yaml.safe_load(
        tf_render(
            tmp_path,
            f'templatefile("{tpl}/dedup.yaml.tftpl", '
            '{instance_id = "dedup-a", gatherer_ids = ["g1", "g2", "g3"]})',
        )
    )
    check_keys(dedup, DedupConfig, "dedup.yaml")
    assert [g["id"] for g in dedup["gatherers"]] == ["g1", "g2", "g3"]
    export = yaml.safe_load(
        tf_render(
            tmp_path,
            f'templatefile("{tpl}/export.yaml.tftpl", '
            '{bucket = "b", prefix = "kalshi-data", region = "us-east-1"})',
        )
    )
    check_keys(export, ExportConfig, "export.yaml")
    gatherer = yaml.safe_load(
        tf_render(
            tmp_path,
            f'templatefile("{tpl}/gatherer.yaml.tftpl", {{gatherer_id = "g1", '
            'kalshi_rest_url = "https://r", kalshi_ws_url = "wss://w"})',
        )
    )
    try:
        from gatherer.config import GathererConfig
    except ImportError:  # the gatherer's config module may still be in progress
        assert gatherer["gatherer_id"] == "g1"
    else:
        check_keys(gatherer, GathererConfig, "gatherer.yaml")


def test_user_data_carries_files_verbatim(tmp_path: Path) -> None:
    """The cloud-init template is valid YAML and delivers each file's bytes unchanged."""
    import base64

    unit = (REPO / "systemd" / "kalshi-gatherer.service").read_text()
    expression = (
        f'templatefile("{TF}/templates/user-data.yaml.tftpl", {{script = "x.sh", files = {{'
        f'"/etc/kalshi-data/systemd/kalshi-gatherer.service" = {{mode = "0644", '
        f'content = file("{REPO}/systemd/kalshi-gatherer.service")}}}}}})'
    )
    rendered = tf_render(tmp_path, expression)
    assert rendered.startswith("#cloud-config\n")
    doc = yaml.safe_load(rendered)
    (entry,) = doc["write_files"]
    assert entry["path"] == "/etc/kalshi-data/systemd/kalshi-gatherer.service"
    assert base64.b64decode(entry["content"]).decode() == unit
    assert doc["runcmd"] == [["bash", "/opt/kalshi-data-bootstrap/x.sh"]]


def test_cfn_lint_is_clean() -> None:
    """cfn-lint reports nothing (errors, warnings, informational) for the CloudFormation file."""
    tool = require_tool("cfn-lint", Path(sys.executable).parent)
    result = run([tool, str(CFN)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_catches_a_broken_template(tmp_path: Path) -> None:
    """The cfn-lint check can fail: an invalid property value is reported."""
    tool = require_tool("cfn-lint", Path(sys.executable).parent)
    bad = tmp_path / "bad.yaml"
    text = CFN.read_text()
    assert "MultiAZ: true" in text
    bad.write_text(text.replace("MultiAZ: true", "MultiAZ: sometimes", 1))
    result = run([tool, str(bad)])
    assert result.returncode != 0


def test_cfn_matches_terraform_essentials() -> None:
    """The CloudFormation template has the same security-relevant settings as Terraform."""
    text = CFN.read_text()
    for needle in (
        "MultiAZ: true",
        "rds.force_ssl: '1'",
        "Family: postgres15",
        "HttpTokens: required",
        "HealthCheckType: EC2",
        "BlockPublicPolicy: true",
        "ManageMasterUserPassword: true",
        "gatherer-bootstrap.sh",
    ):
        assert needle in text, needle


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_bootstrap_scripts_parse(script: str) -> None:
    """Each bootstrap script is valid bash (`bash -n`) and runs with `set -euo pipefail`."""
    path = SCRIPTS / script
    result = run(["bash", "-n", str(path)])
    assert result.returncode == 0, result.stderr
    assert "set -euo pipefail" in path.read_text()


def test_gatherer_bootstrap_installs_timescaledb_from_vendor_repo() -> None:
    """Gatherer hosts get TimescaleDB from packagecloud, preloaded, and roles via the CLI."""
    text = (SCRIPTS / "gatherer-bootstrap.sh").read_text()
    assert "https://packagecloud.io/timescale/timescaledb/debian/" in text
    assert "timescaledb-2-postgresql-15" in text
    assert "shared_preload_libraries = 'timescaledb'" in text
    assert 'kalshi-data" migrate gatherer --dsn' in text
    assert "create-user --dsn" in text
