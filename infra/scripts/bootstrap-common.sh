#!/usr/bin/env bash
# Shared provisioning steps for kalshi-data hosts (Debian 12), sourced by gatherer-bootstrap.sh and
# dedup-bootstrap.sh. Parameters come from /etc/kalshi-data/bootstrap.env (written by cloud-init
# from the Terraform/CloudFormation user-data). Every step is idempotent: re-running the
# bootstrap on a provisioned host changes nothing.
set -euo pipefail

# shellcheck source=/dev/null
. /etc/kalshi-data/bootstrap.env

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
  apt-get install -y -qq --no-install-recommends ca-certificates curl gnupg python3-venv \
    prometheus-node-exporter >/dev/null
}

install_app() {
  # The application goes into /opt/kalshi-data/.venv from APP_PACKAGE (a pip requirement: a PyPI
  # version, a git+https URL or an https wheel URL) or from APP_ARTIFACT_S3_URI (a wheel in S3,
  # fetched with the instance profile).
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  if [ -n "${APP_ARTIFACT_S3_URI:-}" ]; then
    "$VENV/bin/pip" install -q boto3
    local wheel="/var/tmp/$(basename "$APP_ARTIFACT_S3_URI")"
    "$VENV/bin/python" - "$APP_ARTIFACT_S3_URI" "$wheel" <<'PY'
import sys
import boto3
bucket, _, key = sys.argv[1].removeprefix("s3://").partition("/")
boto3.client("s3").download_file(bucket, key, sys.argv[2])
PY
    "$VENV/bin/pip" install -q "$wheel"
  else
    "$VENV/bin/pip" install -q "$APP_PACKAGE"
  fi
  "$VENV/bin/kalshi-data" --help >/dev/null
}

secret_get() {
  # secret_get <secret-id> [json-key]: the secret's value (or one key of its JSON); empty when the
  # secret has no value yet.
  "$VENV/bin/python" - "$AWS_REGION" "$1" "${2:-}" <<'PY'
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
  "$VENV/bin/python" -c '
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
  "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))'
}

install_units() {
  # Units were written by cloud-init to /etc/kalshi-data/systemd/ (copies of systemd/ in the repo).
  install -m 0644 /etc/kalshi-data/systemd/* /etc/systemd/system/
  systemctl daemon-reload
}
