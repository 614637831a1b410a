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

from tests.ops.tools import REPO, require_tool, run, skip_missing

TF = REPO / "infra" / "terraform"
CFN = REPO / "infra" / "cloudformation" / "kalshi-data.yaml"
SCRIPTS = REPO / "infra" / "scripts"
MODULE_FILES = TF / "files"
TF_ENV = {"CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}
# Where a local copy of the AWS provider may live (a filesystem mirror:
# <dir>/registry.terraform.io/hashicorp/aws/<version>/<os_arch>/...). KALSHI_TF_PLUGIN_DIR first.
PLUGIN_DIRS = [
    os.environ.get("KALSHI_TF_PLUGIN_DIR", ""),
    "/opt/tf-plugins",
    str(Path.home() / ".terraform.d" / "plugins"),
    str(Path.home() / ".local" / "share" / "terraform" / "plugins"),
    "/usr/share/terraform/plugins",
]


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
    from kalshi_data.tools.export import ExportConfig

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


def _hosts_files(role: str) -> dict[str, str]:
    """Destination path -> module file, as hosts.tf lists them for ``role`` (parsed from it)."""
    import re

    text = (TF / "hosts.tf").read_text()
    block = text[text.index("common_files = {") : text.index("gatherer_user_data = {")]
    start = "gatherer_user_data = {" if role == "gatherer" else "dedup_user_data = {"
    end = "dedup_user_data = {" if role == "gatherer" else "\n}\n"
    block += text[text.index(start) : text.index(end, text.index(start) + 1)]
    out = {}
    for dest, src in re.findall(
        r'"([^"]+)"\s*=\s*\{ mode = "0\d+", content = file\("([^"]+)"\)', block
    ):
        path = dest.replace("${local.bootstrap}", "/opt/kalshi-data-bootstrap")
        path = path.replace("${local.units}", "/etc/kalshi-data/systemd")
        out[path] = src.replace("${local.files}", str(MODULE_FILES))
    return out


@pytest.mark.parametrize("role", ["gatherer", "dedup"])
def test_user_data_installs_the_ssm_agent_and_retries_the_bootstrap(
    tmp_path: Path, role: str
) -> None:
    """The rendered user-data of each host carries its files byte for byte, installs the SSM agent
    first (Session Manager access) and runs the bootstrap as a retrying oneshot."""
    import base64

    files = _hosts_files(role)
    assert f"/opt/kalshi-data-bootstrap/{role}-bootstrap.sh" in files
    assert "/etc/systemd/system/kalshi-bootstrap@.service" in files
    entries = ", ".join(
        f'"{dest}" = {{mode = "0644", content = file("{src}")}}' for dest, src in files.items()
    )
    expression = (
        f'templatefile("{TF}/templates/user-data.yaml.tftpl", '
        f'{{role = "{role}", files = {{{entries}}}}})'
    )
    rendered = tf_render(tmp_path, expression)
    assert rendered.startswith("#cloud-config\n")
    doc = yaml.safe_load(rendered)
    delivered = {e["path"]: base64.b64decode(e["content"]).decode() for e in doc["write_files"]}
    assert delivered == {dest: Path(src).read_text() for dest, src in files.items()}
    assert doc["runcmd"] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "--no-block", f"kalshi-bootstrap@{role}.service"],
    ]
    script = delivered[f"/opt/kalshi-data-bootstrap/{role}-bootstrap.sh"]
    common = delivered["/opt/kalshi-data-bootstrap/bootstrap-common.sh"]
    steps = [line.split()[0] for line in script.splitlines() if line.strip()]  # dedup: "all"
    assert steps.index("install_ssm_agent") < steps.index("install_app")
    assert 'dpkg -i "$deb"' in common
    assert "systemctl enable --now amazon-ssm-agent" in common
    assert "debian_amd64/amazon-ssm-agent.deb" in common
    unit = delivered["/etc/systemd/system/kalshi-bootstrap@.service"]
    assert "Restart=on-failure" in unit
    assert "StartLimitIntervalSec=0" in unit
    assert "/opt/kalshi-data-bootstrap/%i-bootstrap.sh" in unit
    if role == "gatherer":
        assert "/etc/systemd/system/postgresql@.service.d/kalshi-restart.conf" in delivered
    else:
        assert "/etc/kalshi-data/systemd/kalshi-retention@.timer" in delivered


def test_terraform_module_reads_nothing_outside_itself() -> None:
    """No path of the module leaves it (`../`): it is valid as a copy of infra/terraform alone."""
    for path in [*TF.glob("*.tf"), *(TF / "templates").glob("*")]:
        assert "../" not in path.read_text(), path.name


def test_module_files_are_copies_of_their_sources() -> None:
    """infra/terraform/files holds exact copies of systemd/ and infra/scripts/
    (run `make infra-files` after editing either)."""
    copies = sorted(p for p in MODULE_FILES.rglob("*") if p.is_file())
    assert copies
    for copy in copies:
        rel = copy.relative_to(MODULE_FILES)
        if rel.parts[0] == "scripts":
            source = SCRIPTS / rel.name
        else:
            source = REPO / "systemd" / rel.name.replace(".service.d-", ".service.d/")
        assert source.is_file(), f"{rel}: no source {source}"
        assert copy.read_bytes() == source.read_bytes(), f"{rel} differs: run make infra-files"
    for script in SCRIPTS.glob("*.sh"):
        assert (MODULE_FILES / "scripts" / script.name).is_file(), script.name


def _plugin_mirror() -> Path | None:
    for d in PLUGIN_DIRS:
        if d and (Path(d) / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
            return Path(d)
    return None


def test_terraform_validate_on_the_module_alone(tmp_path: Path) -> None:
    """`terraform init -backend=false` + `validate` on a copy of infra/terraform alone, with the
    AWS provider from a local mirror, against the committed lock file."""
    import shutil

    tool = terraform()
    mirror = _plugin_mirror()
    if mirror is None:
        skip_missing(
            "terraform AWS provider",
            "terraform validate NOT run: no local copy of hashicorp/aws in "
            f"{[d for d in PLUGIN_DIRS if d]} (set KALSHI_TF_PLUGIN_DIR to a filesystem mirror)",
        )
    module = tmp_path / "module"
    shutil.copytree(TF, module, ignore=shutil.ignore_patterns(".terraform"))
    rc = tmp_path / "terraformrc"
    # The mirror is also the plugin cache (same unpacked layout): init links the provider
    # instead of copying its several hundred megabytes.
    rc.write_text(
        f'plugin_cache_dir = "{mirror}"\n'
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path = "{mirror}"\n'
        '    include = ["registry.terraform.io/hashicorp/aws"]\n  }\n'
        '  direct {\n    exclude = ["registry.terraform.io/hashicorp/aws"]\n  }\n}\n'
    )
    env = {**os.environ, **TF_ENV, "TF_CLI_CONFIG_FILE": str(rc)}
    result = None
    for args in (["init", "-backend=false", "-input=false", "-lockfile=readonly"], ["validate"]):
        result = subprocess.run(
            [tool, *args, "-no-color"],
            cwd=module,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert result is not None
    assert "The configuration is valid" in result.stdout


def test_terraform_lock_file_is_committed() -> None:
    """The provider lock file pins the AWS provider (version and hash)."""
    lock = (TF / ".terraform.lock.hcl").read_text()
    assert 'provider "registry.terraform.io/hashicorp/aws"' in lock
    assert "h1:" in lock


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
        "kalshi-bootstrap@gatherer.service",
        "kalshi-bootstrap@dedup.service",
        "RetentionSecretG3",
    ):
        assert needle in text, needle


def test_cfn_user_data_is_pinned_and_retried() -> None:
    """Every CloudFormation launch template fetches the deploy bundle from the stack's artifact
    bucket and checks its sha256 before using it, pins the wheel by sha256, and starts the
    retrying bootstrap unit (whose script installs the SSM agent first); no unpinned URL."""
    doc = yaml.safe_load(CFN.read_text())
    assert "SourceTarballUrl" not in doc["Parameters"]
    assert "AppPackage" not in doc["Parameters"]
    templates = {
        name: r["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
        for name, r in doc["Resources"].items()
        if r["Type"] == "AWS::EC2::LaunchTemplate"
    }
    assert len(templates) == 5
    for name, script in templates.items():
        check = script.index("echo '${DeployBundleSha256}  /var/tmp/kalshi-data-deploy.tar.gz'")
        assert "sha256sum -c" in script[check:].splitlines()[0], name
        assert check < script.index("tar -xzf /var/tmp/kalshi-data-deploy.tar.gz"), name
        assert "APP_WHEEL_SHA256=${AppWheelSha256}" in script, name
        assert "APP_WHEEL_S3_URI=s3://${ArtifactBucket}/${AppWheelKey}" in script, name
        assert "curl -fsSL -o" not in script, name
        role = "gatherer" if "Gatherer" in name else "dedup"
        assert script.rstrip().endswith(f"kalshi-bootstrap@{role}.service"), name


def test_release_bundle_is_reproducible_and_complete(tmp_path: Path) -> None:
    """scripts/build-release.sh --bundle-only packs the module's files reproducibly (same sha256
    twice) and the bundle holds every file the CloudFormation user-data installs from it."""
    import hashlib
    import re
    import tarfile

    if not (REPO / ".git").exists():
        pytest.skip("the release is built from git-tracked files: no git checkout here")
    digests = []
    for run_dir in ("a", "b"):
        result = run(
            [
                "bash",
                str(REPO / "scripts" / "build-release.sh"),
                "--bundle-only",
                str(tmp_path / run_dir),
            ]
        )
        assert result.returncode == 0, result.stderr
        (bundle,) = (tmp_path / run_dir).glob("kalshi-data-deploy-*.tar.gz")
        digests.append(hashlib.sha256(bundle.read_bytes()).hexdigest())
        assert digests[-1] in result.stdout
    assert digests[0] == digests[1]
    (bundle,) = (tmp_path / "b").glob("kalshi-data-deploy-*.tar.gz")
    with tarfile.open(bundle) as tar:
        members = {m.name for m in tar.getmembers() if m.isfile()}
    used = set(re.findall(r"/var/tmp/kalshi-data-deploy/([\w@.-]+/[\w@.*-]+)", CFN.read_text()))
    for path in used:
        if "*" in path:
            assert any(m.startswith(path.split("*")[0]) for m in members), path
        else:
            assert path in members, path


def _source_dedup_bootstrap(tmp_path: Path, function: str, ids: str) -> str:
    """Output of one dedup-bootstrap.sh function, the script sourced with a test bootstrap.env."""
    env_file = tmp_path / "bootstrap.env"
    env_file.write_text(f"GATHERER_IDS='{ids}'\nAWS_REGION=eu-west-3\n")
    result = subprocess.run(
        ["bash", "-c", f'. "{SCRIPTS}/dedup-bootstrap.sh" && {function}'],
        env={
            "PATH": os.environ["PATH"],
            "KALSHI_BOOTSTRAP_ENV": str(env_file),
            "KALSHI_BOOTSTRAP_SOURCE_ONLY": "1",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_dedup_credentials_follow_the_gatherer_ids(tmp_path: Path) -> None:
    """The deduplicator loads one credential per configured gatherer id (any ids, not g1-g3):
    the bootstrap's drop-in plus the unit verify cleanly and cover every DSN dedup.yaml reads."""
    import re

    dropin = _source_dedup_bootstrap(tmp_path, "gatherer_credentials_dropin", "ga gb gz")
    loaded = re.findall(r"^LoadCredential=([a-z0-9-]+):", dropin, re.MULTILINE)
    assert loaded == ["gatherer-ga-dsn", "gatherer-gb-dsn", "gatherer-gz-dsn"]
    rendered = tf_render(
        tmp_path,
        f'templatefile("{TF}/templates/dedup.yaml.tftpl", '
        '{instance_id = "dedup-a", gatherer_ids = ["ga", "gb", "gz"]})',
    )
    refs = set(re.findall(r"/run/credentials/kalshi-dedup.service/([A-Za-z0-9_.-]+)", rendered))
    unit_text = (REPO / "systemd" / "kalshi-dedup.service").read_text()
    unit_creds = set(re.findall(r"^LoadCredential=([a-z0-9-]+):", unit_text, re.MULTILINE))
    assert refs == unit_creds | set(loaded)
    tool = require_tool("systemd-analyze")
    staged = tmp_path / "units"
    (staged / "kalshi-dedup.service.d").mkdir(parents=True)
    stub = tmp_path / "kalshi-data"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    (staged / "kalshi-dedup.service").write_text(
        unit_text.replace("/opt/kalshi-data/.venv/bin/kalshi-data", str(stub))
    )
    (staged / "kalshi-dedup.service.d" / "gatherers.conf").write_text(dropin)
    result = run([tool, "verify", str(staged / "kalshi-dedup.service")])
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


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
    assert "--role retention --user kalshi_retention" in text
    assert "hostssl $DB kalshi_retention $VPC_CIDR scram-sha-256" in text


def test_bootstrap_installs_exactly_the_pinned_wheel() -> None:
    """The app is the wheel from the stack's bucket, checked against its sha256 before pip sees
    it; no pip requirement from a public index is installed as root."""
    common = (SCRIPTS / "bootstrap-common.sh").read_text()
    body = common[common.index("install_app() {") : common.index("s3_get() {")]
    assert 'echo "$APP_WHEEL_SHA256  $wheel" | sha256sum -c --quiet -' in body
    assert body.index("sha256sum -c") < body.index('pip" install')
    assert 'pip" install -q --force-reinstall --no-cache-dir "$wheel$extras"' in body
    # The services need no extra; the dedup host also runs export (archive) and status (tools).
    assert "\ninstall_app\n" in (SCRIPTS / "gatherer-bootstrap.sh").read_text()
    assert "  install_app all " in (SCRIPTS / "dedup-bootstrap.sh").read_text()
    assert "APP_PACKAGE" not in common
    assert 'pip" install -q --upgrade pip' not in common
    tf = "\n".join(p.read_text() for p in TF.glob("*.tf"))
    assert "app_package" not in tf
    assert "APP_WHEEL_SHA256=${local.app_wheel_sha256}" in tf
    assert "filesha256(var.app_wheel_path)" in tf


def test_bootstrap_checksum_rejects_a_changed_wheel(tmp_path: Path) -> None:
    """The very check install_app runs refuses a file whose sha256 is not the pinned one."""
    import hashlib

    wheel = tmp_path / "kalshi_data-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"the built wheel")
    pinned = hashlib.sha256(b"the built wheel").hexdigest()
    check = f'echo "{pinned}  {wheel}" | sha256sum -c --quiet -'
    assert run(["bash", "-c", check]).returncode == 0
    wheel.write_bytes(b"a different wheel")
    assert run(["bash", "-c", check]).returncode != 0


# --- the trade audit's deployment (issue 15): the jobs host runs it, node-exporter reads it.

AUDIT_DSN = "file:/run/credentials/kalshi-audit.service/production-dsn"
DEDUP_TEMPLATES = ("DedupLaunchTemplateA", "DedupLaunchTemplateB")
# Values CloudFormation would substitute into the dedup user-data (Fn::Sub).
CFN_VALUES = {
    "AWS::Region": "eu-west-3",
    "Environment": "prod",
    "ArchiveBucket": "archive-bucket",
    "KalshiRestUrl": "https://external-api.kalshi.com/trade-api/v2",
}


def _cfn_dedup_user_data() -> dict[str, str]:
    """Launch template name -> its user-data script, before substitution."""
    doc = yaml.safe_load(CFN.read_text())
    return {
        name: doc["Resources"][name]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"][
            "Fn::Sub"
        ]
        for name in DEDUP_TEMPLATES
    }


def _cfn_sub(text: str) -> str:
    """Fn::Sub of the parameters a config heredoc uses (an unknown name fails the test)."""
    import re

    def value(m: re.Match[str]) -> str:
        assert m.group(1) in CFN_VALUES, f"no test value for ${{{m.group(1)}}}"
        return CFN_VALUES[m.group(1)]

    return re.sub(r"\$\{([A-Za-z0-9:.]+)\}", value, text)


def _heredoc(script: str, path: str) -> str:
    """The body of ``cat > path <<'TAG'`` ... ``TAG`` in a user-data script."""
    import re

    m = re.search(rf"^cat > {re.escape(path)} <<'(\w+)'\n(.*?)^\1$", script, re.M | re.S)
    assert m, f"user-data writes no {path}"
    return m.group(2)


def _env_lines(script: str) -> dict[str, str]:
    """bootstrap.env as the user-data writes it (values unsubstituted)."""
    body = _heredoc(script, "/etc/kalshi-data/bootstrap.env")
    return dict(line.split("=", 1) for line in body.splitlines() if line)


def _load_audit_yaml(tmp_path: Path, text: str, name: str) -> tuple[dict[str, Any], Any, Any]:
    """(raw YAML, AuditConfig, StatusConfig) through the application's own loaders. The DSN is
    overridden the way an operator runs `status` by hand: the credential file exists only inside
    the unit."""
    from kalshi_data.tools import audit, status

    raw = yaml.safe_load(text)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    env = {"KALSHI_DATA_PRODUCTION__DSN": "host=db user=kalshi_audit"}
    return raw, audit.load(path, env=env), status.load(path, env=env)


def _unit_value(unit: str, key: str) -> str:
    """The single value of ``key`` in a systemd unit of the repository."""
    (value,) = [
        line.split("=", 1)[1]
        for line in (REPO / "systemd" / unit).read_text().splitlines()
        if line.startswith(f"{key}=")
    ]
    return value


def _dedup_main(tmp_path: Path, enable_export: bool) -> dict[str, Any]:
    """Run dedup-bootstrap.sh's main() for real, in a sandbox: the steps that install packages or
    touch the host (apt, SSM agent, wheel, CA, units, systemctl, useradd) are recorded instead,
    secrets come from a stub, and every file the bootstrap writes lands under tmp_path.
    Returns the systemctl calls, the credentials written, the textfile links and the
    node-exporter defaults."""
    root = tmp_path / ("jobs" if enable_export else "standby")
    root.mkdir()
    env_file = root / "bootstrap.env"
    env_file.write_text(
        "\n".join(
            [
                "AWS_REGION=eu-west-3",
                "INSTANCE_ID=dedup-a",
                "RDS_ENDPOINT=db.example.internal",
                "RDS_DB_NAME=kalshi",
                "DEDUP_SECRET_ID=sec-dedup",
                "EXPORT_SECRET_ID=sec-export",
                "AUDIT_SECRET_ID=sec-audit",
                "GATHERER_IDS='g1 g2'",
                "GATHERER_DNS_SUFFIX=prod.kalshi-data.internal",
                "READER_SECRET_PREFIX=sec-reader/",
                "RETENTION_SECRET_PREFIX=sec-retention/",
                f"ENABLE_EXPORT={'true' if enable_export else 'false'}",
                "",
            ]
        )
    )
    sandbox = f"""
. "{SCRIPTS}/dedup-bootstrap.sh"
R="{root}"
for step in apt_https_only install_ssm_agent install_app fetch_ca install_units; do
  eval "$step() {{ echo $step >> \\"\\$R/steps\\"; }}"
done
apt-get() {{ :; }}
systemctl() {{ echo "$*" >> "$R/systemctl"; }}
useradd() {{ echo "$*" >> "$R/useradd"; }}
secret_get() {{ printf 'pw-%s' "$1"; }}
credential_write() {{ mkdir -p "$R/credstore/$1"; cat > "$R/credstore/$1/$2"; }}
TEXTFILE_DIR="$R/textfiles"
NODE_EXPORTER_DEFAULTS="$R/node-exporter.default"
DEDUP_DROPIN_DIR="$R/kalshi-dedup.service.d"
main
"""
    result = subprocess.run(
        ["bash", "-c", sandbox],
        env={
            "PATH": os.environ["PATH"],
            "KALSHI_BOOTSTRAP_ENV": str(env_file),
            "KALSHI_BOOTSTRAP_SOURCE_ONLY": "1",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "deduplicator dedup-a provisioned" in result.stderr
    creds = {
        str(p.relative_to(root / "credstore")): p.read_text()
        for p in (root / "credstore").rglob("*")
        if p.is_file()
    }
    links = {}
    if (root / "textfiles").is_dir():
        links = {p.name: os.readlink(p) for p in (root / "textfiles").iterdir()}
    defaults = root / "node-exporter.default"
    return {
        "systemctl": (root / "systemctl").read_text().splitlines(),
        "credentials": creds,
        "textfile_dir": str(root / "textfiles"),
        "links": links,
        "defaults": defaults.read_text() if defaults.exists() else None,
    }


def test_audit_is_deployed_on_the_jobs_host(tmp_path: Path) -> None:
    """Both templates ship the audit's units and an audit.yaml that the audit's and the status
    command's loaders accept; the dedup role may read the kalshi_audit secret; the bootstrap
    writes that credential, enables kalshi-audit.timer and starts one run on the jobs host only."""
    import re

    from kalshi_data.tools.audit import AuditConfig
    from kalshi_data.tools.status import StatusConfig

    unit_creds = _unit_value("kalshi-audit.service", "LoadCredential")
    assert unit_creds == "production-dsn:/etc/credstore/kalshi-audit/production-dsn"
    # --- Terraform: units, audit.yaml, AUDIT_SECRET_ID, the secret in ReadPasswords.
    files = _hosts_files("dedup")
    for unit in ("kalshi-audit.service", "kalshi-audit.timer"):
        assert files[f"/etc/kalshi-data/systemd/{unit}"] == str(MODULE_FILES / "systemd" / unit)
    hosts = (TF / "hosts.tf").read_text()
    assert '"/etc/kalshi-data/audit.yaml" = { mode = "0644", content = templatefile(' in hosts
    assert '"AUDIT_SECRET_ID=${aws_secretsmanager_secret.auditor.arn}"' in hosts
    secrets = (TF / "secrets.tf").read_text()
    auditor = secrets[secrets.index('resource "aws_secretsmanager_secret" "auditor"') :]
    assert 'name                    = "kalshi-data/${var.environment}/production/audit"' in auditor
    iam = (TF / "iam.tf").read_text()
    dedup_policy = iam[iam.index('data "aws_iam_policy_document" "dedup"') :]
    read_passwords = dedup_policy[: dedup_policy.index('sid       = "ArchiveList"')]
    assert 'sid     = "ReadPasswords"' in read_passwords
    assert "aws_secretsmanager_secret.auditor.arn" in read_passwords
    rendered = tf_render(
        tmp_path,
        f'templatefile("{TF}/templates/audit.yaml.tftpl", {{instance_id = "dedup-a", '
        'gatherer_ids = ["ga", "gb", "gz"], dns_suffix = "prod.kalshi-data.internal", '
        'kalshi_rest_url = "https://external-api.kalshi.com/trade-api/v2"})',
    )
    raw, audit_cfg, status_cfg = _load_audit_yaml(tmp_path, rendered, "tf-audit")
    check_keys(raw, AuditConfig, "audit.yaml")
    check_keys(raw["status"], StatusConfig, "audit.yaml status")
    assert raw["production"]["dsn"] == AUDIT_DSN
    assert audit_cfg.gatherers == ("ga", "gb", "gz")
    assert audit_cfg.kalshi.rest_url == "https://external-api.kalshi.com/trade-api/v2"
    assert [(e.id, e.health_url) for e in status_cfg.gatherers] == [
        (g, f"http://{g}.prod.kalshi-data.internal:8080/health") for g in ("ga", "gb", "gz")
    ]
    # The health port is the one the gatherers listen on.
    assert 'listen: "0.0.0.0:8080"' in (TF / "templates" / "gatherer.yaml.tftpl").read_text()
    # --- CloudFormation: both dedup launch templates; the role reads AuditorSecret.
    doc = yaml.safe_load(CFN.read_text())
    assert doc["Resources"]["AuditorSecret"]["Properties"]["Name"] == {
        "Fn::Sub": "kalshi-data/${Environment}/production/audit"
    }
    (read_stmt,) = [
        st
        for pol in doc["Resources"]["DedupRole"]["Properties"]["Policies"]
        for st in pol["PolicyDocument"]["Statement"]
        if st.get("Sid") == "ReadPasswords"
    ]
    assert {"Ref": "AuditorSecret"} in read_stmt["Resource"]
    for name, script in _cfn_dedup_user_data().items():
        (install,) = [
            line for line in script.splitlines() if line.endswith(" /etc/kalshi-data/systemd/")
        ]
        for unit in ("kalshi-audit.service", "kalshi-audit.timer"):
            assert f"/var/tmp/kalshi-data-deploy/systemd/{unit} " in install, name
        env = _env_lines(script)
        assert env["AUDIT_SECRET_ID"] == "${AuditorSecret}", name
        assert env["ENABLE_EXPORT"] == ("true" if name.endswith("A") else "false"), name
        text = _cfn_sub(_heredoc(script, "/etc/kalshi-data/audit.yaml"))
        raw, audit_cfg, status_cfg = _load_audit_yaml(tmp_path, text, name)
        check_keys(raw, AuditConfig, f"{name} audit.yaml")
        check_keys(raw["status"], StatusConfig, f"{name} audit.yaml status")
        assert raw["production"]["dsn"] == AUDIT_DSN, name
        ids = env["GATHERER_IDS"].strip("'").split()
        suffix = _cfn_sub(env["GATHERER_DNS_SUFFIX"])
        assert audit_cfg.gatherers == tuple(ids), name
        assert [(e.id, e.health_url) for e in status_cfg.gatherers] == [
            (g, f"http://{g}.{suffix}:8080/health") for g in ids
        ], name
    # --- The bootstrap, run: the credential, the timer and one run on the jobs host only.
    jobs = _dedup_main(tmp_path, enable_export=True)
    dsn = jobs["credentials"]["kalshi-audit/production-dsn"]
    assert re.search(r"\buser=kalshi_audit\b", dsn)
    assert "password=pw-sec-audit " in dsn
    assert "sslmode=verify-full" in dsn
    assert "enable --now kalshi-export.timer kalshi-audit.timer" in jobs["systemctl"]
    assert "start --no-block kalshi-audit.service" in jobs["systemctl"]
    standby = _dedup_main(tmp_path, enable_export=False)
    assert not any(c.startswith("kalshi-audit/") for c in standby["credentials"])
    assert not any("kalshi-audit" in call for call in standby["systemctl"])
    assert "restart kalshi-dedup" in standby["systemctl"]


def test_audit_role_and_user_match_the_migration() -> None:
    """The bootstrap's kalshi_audit user is created in a role that production migration 0009
    defines, under the CLI's name for it (`create-user --role auditor`, docs/operations.md)."""
    from kalshi_data.tools.users import ROLES

    migration = (REPO / "kalshi_data" / "migrations" / "production" / "0009_audit.sql").read_text()
    assert ROLES["auditor"] == "kd_auditor"
    assert "CREATE ROLE kd_auditor NOLOGIN" in migration
    ops = (REPO / "docs" / "operations.md").read_text()
    assert "--role auditor --user kalshi_audit --password-file audit.pw" in ops
    put = '--secret-id "kalshi-data/$ENV/production/audit" --secret-string file://audit.json'
    assert put in ops
    assert (
        'dsn_from_secret "$AUDIT_SECRET_ID" kalshi_audit'
        in (SCRIPTS / "dedup-bootstrap.sh").read_text()
    )


def test_node_exporter_reads_both_job_textfiles(tmp_path: Path) -> None:
    """On the jobs host node-exporter's textfile directory links the export's and the audit's
    metrics files, exactly where the configs of both templates write them (in the units' own
    directories), and node-exporter is pointed at that directory; the links can be followed and
    re-created; the standby is left alone."""
    jobs = _dedup_main(tmp_path, enable_export=True)
    assert jobs["defaults"] == f'ARGS="--collector.textfile.directory={jobs["textfile_dir"]}"\n'
    assert "restart prometheus-node-exporter" in jobs["systemctl"]
    export_prom = jobs["links"]["kalshi-export.prom"]
    audit_prom = jobs["links"]["kalshi-audit.prom"]
    assert set(jobs["links"]) == {"kalshi-export.prom", "kalshi-audit.prom"}
    # Where the units keep the files: the export's StateDirectory, the audit's RuntimeDirectory.
    assert Path(export_prom).parent == Path("/var/lib") / _unit_value(
        "kalshi-export.service", "StateDirectory"
    )
    assert Path(audit_prom).parent == Path("/run") / _unit_value(
        "kalshi-audit.service", "RuntimeDirectory"
    )
    # Where the configs of both templates write them.
    tpl = TF / "templates"
    tf_export = yaml.safe_load(
        tf_render(
            tmp_path,
            f'templatefile("{tpl}/export.yaml.tftpl", '
            '{bucket = "b", prefix = "kalshi-data", region = "us-east-1"})',
        )
    )
    tf_audit = yaml.safe_load(
        tf_render(
            tmp_path,
            f'templatefile("{tpl}/audit.yaml.tftpl", {{instance_id = "dedup-a", '
            'gatherer_ids = ["g1"], dns_suffix = "z", kalshi_rest_url = "https://r"})',
        )
    )
    assert tf_export["metrics_textfile"] == export_prom
    assert tf_audit["metrics_textfile"] == audit_prom
    for name, script in _cfn_dedup_user_data().items():
        cfn_export = yaml.safe_load(_cfn_sub(_heredoc(script, "/etc/kalshi-data/export.yaml")))
        cfn_audit = yaml.safe_load(_cfn_sub(_heredoc(script, "/etc/kalshi-data/audit.yaml")))
        assert cfn_export["metrics_textfile"] == export_prom, name
        assert cfn_audit["metrics_textfile"] == audit_prom, name
    # The links work and are idempotent: job_textfiles twice, then read through them.
    real = tmp_path / "real"
    real.mkdir()
    (real / "export.prom").write_text("export_last_success_timestamp_seconds 1\n")
    (real / "audit.prom").write_text("audit_last_run_timestamp_seconds 2\n")
    textfiles = tmp_path / "textfiles-run"
    _source_dedup_bootstrap(
        tmp_path,
        f'EXPORT_PROM="{real}/export.prom" AUDIT_PROM="{real}/audit.prom"; '
        f'job_textfiles "{textfiles}" && job_textfiles "{textfiles}"',
        "g1",
    )
    read = {p.name: p.read_text() for p in sorted(textfiles.glob("*.prom"))}
    assert read == {
        "kalshi-audit.prom": "audit_last_run_timestamp_seconds 2\n",
        "kalshi-export.prom": "export_last_success_timestamp_seconds 1\n",
    }
    standby = _dedup_main(tmp_path, enable_export=False)
    assert standby["links"] == {}
    assert standby["defaults"] is None


def test_dedup_host_reaches_the_exchange_and_gatherer_health() -> None:
    """The deduplicator's security group lets the audit reach the exchange (443) and `status`
    reach each gatherer's /health (8080), in both templates."""
    sec = (TF / "security.tf").read_text()
    https = sec[sec.index('resource "aws_vpc_security_group_egress_rule" "https"') :]
    https = https[: https.index("\n}\n")]
    assert "for_each          = local.host_sgs" in https
    assert "from_port         = 443" in https
    assert 'cidr_ipv4         = "0.0.0.0/0"' in https
    assert "dedup    = aws_security_group.dedup.id" in sec
    for rule, sg, peer in (
        ("aws_vpc_security_group_ingress_rule", "gatherer_health_from_dedup", "dedup"),
        ("aws_vpc_security_group_egress_rule", "dedup_health_to_gatherers", "gatherer"),
    ):
        block = sec[sec.index(f'resource "{rule}" "{sg}"') :]
        block = block[: block.index("\n}\n")]
        assert "from_port                    = 8080" in block, sg
        assert f"referenced_security_group_id = aws_security_group.{peer}.id" in block, sg
    res = yaml.safe_load(CFN.read_text())["Resources"]
    egress = res["DedupSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert any(
        e["FromPort"] == 443 and e["ToPort"] == 443 and e["CidrIp"] == "0.0.0.0/0" for e in egress
    )
    ingress = res["GathererHealthFromDedup"]["Properties"]
    assert (ingress["FromPort"], ingress["GroupId"], ingress["SourceSecurityGroupId"]) == (
        8080,
        {"Ref": "GathererSecurityGroup"},
        {"Ref": "DedupSecurityGroup"},
    )
    out = res["DedupEgressToGathererHealth"]["Properties"]
    assert (out["FromPort"], out["GroupId"], out["DestinationSecurityGroupId"]) == (
        8080,
        {"Ref": "DedupSecurityGroup"},
        {"Ref": "GathererSecurityGroup"},
    )
