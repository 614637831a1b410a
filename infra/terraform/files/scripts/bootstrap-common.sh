#!/usr/bin/env bash
# Shared provisioning steps for kalshi-data hosts (Debian 12), sourced by gatherer-bootstrap.sh and
# dedup-bootstrap.sh. Parameters come from /etc/kalshi-data/bootstrap.env (written by cloud-init
# from the Terraform/CloudFormation user-data). Every step is idempotent: re-running the
# bootstrap on a provisioned host changes nothing.
set -euo pipefail

# shellcheck source=/dev/null
. "${KALSHI_BOOTSTRAP_ENV:-/etc/kalshi-data/bootstrap.env}"

APP=/opt/kalshi-data
VENV="$APP/.venv"
export DEBIAN_FRONTEND=noninteractive

log() { echo "kalshi-bootstrap: $*" >&2; }

apt_https_only() {
  # Security groups allow egress on 443 only: every apt source must be https.
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && sed -i 's#http://#https://#g' "$f"
  done
  apt-get update -qq
  # python3-boto3 from Debian (signed by apt) fetches the wheel and the secrets: nothing runs
  # from a public package index as root before the wheel's checksum is verified.
  apt-get install -y -qq --no-install-recommends ca-certificates curl gnupg python3-venv \
    python3-boto3 prometheus-node-exporter >/dev/null
}

install_ssm_agent() {
  # Operator access is AWS Systems Manager Session Manager (no SSH, no key pair, no port 22).
  # The Debian 12 AMI has no SSM agent: install AWS's package from its regional bucket (https,
  # egress 443 only), checked against SSM_AGENT_SHA256 when the deployment pins one. First step
  # of every bootstrap, so a host whose bootstrap is stuck can still be reached.
  if systemctl is-enabled --quiet amazon-ssm-agent 2>/dev/null; then
    systemctl start amazon-ssm-agent
    return 0
  fi
  local deb=/var/tmp/amazon-ssm-agent.deb
  curl -fsSL -o "$deb" \
    "https://s3.${AWS_REGION}.amazonaws.com/amazon-ssm-${AWS_REGION}/${SSM_AGENT_VERSION:-latest}/debian_amd64/amazon-ssm-agent.deb"
  if [ -n "${SSM_AGENT_SHA256:-}" ]; then
    echo "$SSM_AGENT_SHA256  $deb" | sha256sum -c --quiet - || { log "amazon-ssm-agent.deb: checksum mismatch"; exit 1; }
  fi
  dpkg -i "$deb" >/dev/null
  systemctl enable --now amazon-ssm-agent
}

install_app() {
  # install_app [extras]: exactly the wheel this repository builds (scripts/build-release.sh),
  # from the stack's own artifact bucket, pinned by sha256: APP_WHEEL_S3_URI (s3://bucket/key)
  # and APP_WHEEL_SHA256. A mismatch stops the bootstrap before anything is installed. Its
  # dependencies come from the package index within the ranges of pyproject.toml
  # (docs/operations.md, "Supply chain"), with the optional ones of the extras named (e.g.
  # "all": the host runs export; the services need none, docs/architecture.md).
  : "${APP_WHEEL_S3_URI:?bootstrap.env lacks APP_WHEEL_S3_URI}" "${APP_WHEEL_SHA256:?bootstrap.env lacks APP_WHEEL_SHA256}"
  local wheel extras="${1:+[$1]}" stamp="$APP/INSTALLED_WHEEL_SHA256"
  if [ -x "$VENV/bin/kalshi-data" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$APP_WHEEL_SHA256$extras" ]; then
    return 0
  fi
  wheel="/var/tmp/$(basename "$APP_WHEEL_S3_URI")"
  s3_get "$APP_WHEEL_S3_URI" "$wheel"
  echo "$APP_WHEEL_SHA256  $wheel" | sha256sum -c --quiet - || { log "$wheel: checksum mismatch"; exit 1; }
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --force-reinstall --no-cache-dir "$wheel$extras"
  "$VENV/bin/kalshi-data" --help >/dev/null
  echo "$APP_WHEEL_SHA256$extras" > "$stamp"
}

s3_get() {
  # s3_get <s3://bucket/key> <file>: download with the instance profile (system python3-boto3).
  python3 - "$AWS_REGION" "$1" "$2" <<'PY'
import sys
import boto3
region, uri, dest = sys.argv[1:4]
bucket, _, key = uri.removeprefix("s3://").partition("/")
boto3.client("s3", region_name=region).download_file(bucket, key, dest)
PY
}

secret_get() {
  # secret_get <secret-id> [json-key]: the secret's value (or one key of its JSON); empty when the
  # secret has no value yet.
  python3 - "$AWS_REGION" "$1" "${2:-}" <<'PY'
import json
import sys
import boto3
region, secret_id, key = sys.argv[1:4]
client = boto3.client("secretsmanager", region_name=region)
try:
    value = client.get_secret_value(SecretId=secret_id)["SecretString"]
except client.exceptions.ResourceNotFoundException:
    sys.exit(0)
sys.stdout.write(json.loads(value)[key] if key else value)
PY
}

secret_put() {
  # secret_put <secret-id> <value>: store a new value (read from stdin, never from argv).
  python3 -c '
import sys
import boto3
boto3.client("secretsmanager", region_name=sys.argv[1]).put_secret_value(
    SecretId=sys.argv[2], SecretString=sys.stdin.read())
' "$AWS_REGION" "$1"
}

credential_write() {
  # credential_write <unit> <name>: stdin -> /etc/credstore/<unit>/<name>, root-only. The unit's
  # LoadCredential= copies it to /run/credentials/<unit>.service/<name> for the service alone.
  install -d -m 0700 "/etc/credstore/$1"
  umask 077
  cat > "/etc/credstore/$1/$2.tmp"
  mv "/etc/credstore/$1/$2.tmp" "/etc/credstore/$1/$2"
}

random_password() {
  python3 -c 'import secrets; print(secrets.token_urlsafe(32))'
}

install_units() {
  # Units were written by cloud-init to /etc/kalshi-data/systemd/ (copies of systemd/ in the repo).
  find /etc/kalshi-data/systemd -maxdepth 1 -type f \( -name '*.service' -o -name '*.timer' \) \
    -exec install -m 0644 -t /etc/systemd/system/ {} +
  systemctl daemon-reload
}
