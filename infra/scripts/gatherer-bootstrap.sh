#!/usr/bin/env bash
# Provision one gatherer host: PostgreSQL 15 + TimescaleDB from the vendors' apt repositories,
# the kalshi_ts database and its roles (kalshi-data migrate / create-user), the application, the
# credentials, a DNS name for the deduplicator, and the kalshi-gatherer service.
# Needs in bootstrap.env: AWS_REGION APP_WHEEL_S3_URI APP_WHEEL_SHA256 GATHERER_ID KALSHI_SECRET_ID
# READER_SECRET_ID RETENTION_SECRET_ID ZONE_ID DNS_NAME VPC_CIDR (SSM_AGENT_VERSION SSM_AGENT_SHA256
# optional). Run by kalshi-bootstrap@gatherer.service, which retries it until it succeeds.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bootstrap-common.sh"

DB=kalshi_ts
SUPER_DSN="host=/var/run/postgresql dbname=$DB user=postgres"

install_postgres() {
  install -d -m 0755 /etc/apt/keyrings
  # PostgreSQL (PGDG) and TimescaleDB (packagecloud) repositories, as their vendors document.
  curl -fsSL https://www.postgresql.org/media/keys/ACCC4CF8.asc \
    | gpg --dearmor --yes -o /etc/apt/keyrings/postgresql.gpg
  echo "deb [signed-by=/etc/apt/keyrings/postgresql.gpg] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
    > /etc/apt/sources.list.d/pgdg.list
  curl -fsSL https://packagecloud.io/timescale/timescaledb/gpgkey \
    | gpg --dearmor --yes -o /etc/apt/keyrings/timescaledb.gpg
  echo "deb [signed-by=/etc/apt/keyrings/timescaledb.gpg] https://packagecloud.io/timescale/timescaledb/debian/ bookworm main" \
    > /etc/apt/sources.list.d/timescaledb.list
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql-15 timescaledb-2-postgresql-15 >/dev/null
  local conf=/etc/postgresql/15/main/conf.d/kalshi-data.conf
  cat > "$conf" <<CONF
shared_preload_libraries = 'timescaledb'
listen_addresses = '*'
ssl = on
password_encryption = 'scram-sha-256'
# A forgotten open transaction must not hold back the deduplicator's horizon for long.
idle_in_transaction_session_timeout = '10min'
timescaledb.telemetry_level = off
CONF
  local hba=/etc/postgresql/15/main/pg_hba.conf
  grep -q kalshi_dedup_reader "$hba" || \
    echo "hostssl $DB kalshi_dedup_reader $VPC_CIDR scram-sha-256" >> "$hba"
  # Retention runs from the jobs deduplicator host as kalshi_retention (kd_retention).
  grep -q kalshi_retention "$hba" || \
    echo "hostssl $DB kalshi_retention $VPC_CIDR scram-sha-256" >> "$hba"
  # Debian's postgresql@.service does not restart a dead postmaster: the drop-in
  # /etc/systemd/system/postgresql@.service.d/kalshi-restart.conf (written by cloud-init) does.
  systemctl daemon-reload
  systemctl restart postgresql@15-main
  runuser -u postgres -- psql -qAtc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
    || runuser -u postgres -- createdb "$DB"
}

create_roles() {
  # Schema and roles through the application itself (checksummed migrations, project roles).
  runuser -u postgres -- "$VENV/bin/kalshi-data" migrate gatherer --dsn "$SUPER_DSN"
  local pw
  pw=$(mktemp); trap 'rm -f "$pw"' RETURN
  chown postgres "$pw"
  # Writer: local only; its password never leaves this host.
  if [ ! -s /etc/credstore/kalshi-gatherer/gatherer-dsn ]; then
    random_password > "$pw"
    runuser -u postgres -- "$VENV/bin/kalshi-data" create-user --dsn "$SUPER_DSN" \
      --role gatherer_writer --user kalshi_gatherer --password-file "$pw"
    printf 'host=127.0.0.1 dbname=%s user=kalshi_gatherer password=%s sslmode=disable' \
      "$DB" "$(cat "$pw")" | credential_write kalshi-gatherer gatherer-dsn
  fi
  # Reader for the deduplicator: the password lives in Secrets Manager (READER_SECRET_ID), created
  # here on first boot and reused by replacement instances.
  secret_get "$READER_SECRET_ID" > "$pw"
  if [ ! -s "$pw" ]; then
    random_password | tr -d '\n' > "$pw"
    secret_put "$READER_SECRET_ID" < "$pw"
  fi
  runuser -u postgres -- "$VENV/bin/kalshi-data" create-user --dsn "$SUPER_DSN" \
    --role dedup_reader --user kalshi_dedup_reader --password-file "$pw"
  # Retention user (kd_retention: may only call kd_retention_drop), likewise published.
  secret_get "$RETENTION_SECRET_ID" > "$pw"
  if [ ! -s "$pw" ]; then
    random_password | tr -d '\n' > "$pw"
    secret_put "$RETENTION_SECRET_ID" < "$pw"
  fi
  runuser -u postgres -- "$VENV/bin/kalshi-data" create-user --dsn "$SUPER_DSN" \
    --role retention --user kalshi_retention --password-file "$pw"
}

kalshi_credentials() {
  # The Kalshi API key (secret JSON {"key_id": ..., "private_key": PEM}), put there by an operator.
  local key_id
  key_id=$(secret_get "$KALSHI_SECRET_ID" key_id)
  if [ -z "$key_id" ]; then
    log "secret $KALSHI_SECRET_ID has no value yet: put the Kalshi key there and re-run $0"
    exit 1
  fi
  secret_get "$KALSHI_SECRET_ID" private_key | credential_write kalshi-gatherer kalshi-private-key
  sed -i "s/^\(  key_id: \).*/\1\"$key_id\"/" /etc/kalshi-data/gatherer.yaml
}

register_dns() {
  # The deduplicator reaches this gatherer as DNS_NAME (private hosted zone), whichever instance
  # the auto-scaling group launched.
  local ip
  ip=$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
    http://169.254.169.254/latest/api/token | xargs -I{} curl -fsS -H 'X-aws-ec2-metadata-token: {}' \
    http://169.254.169.254/latest/meta-data/local-ipv4)
  python3 - "$ZONE_ID" "$DNS_NAME" "$ip" <<'PY'
import sys
import boto3
zone, name, ip = sys.argv[1:4]
boto3.client("route53").change_resource_record_sets(
    HostedZoneId=zone,
    ChangeBatch={"Changes": [{"Action": "UPSERT", "ResourceRecordSet": {
        "Name": name, "Type": "A", "TTL": 30, "ResourceRecords": [{"Value": ip}]}}]},
)
PY
}

apt_https_only
install_ssm_agent
install_app
install_postgres
create_roles
kalshi_credentials
register_dns
install_units
systemctl enable --now prometheus-node-exporter kalshi-gatherer
log "gatherer $GATHERER_ID provisioned"
