#!/usr/bin/env bash
# Provision one deduplicator host (leader or standby: the same steps, a different instance_id in
# dedup.yaml). Production must already be migrated and hold the kalshi_dedup/kalshi_export/
# kalshi_audit users whose passwords are in DEDUP_SECRET_ID / EXPORT_SECRET_ID / AUDIT_SECRET_ID
# (infra/terraform/README.md, step 3).
# Needs in bootstrap.env: AWS_REGION APP_WHEEL_S3_URI APP_WHEEL_SHA256 INSTANCE_ID RDS_ENDPOINT
# RDS_DB_NAME DEDUP_SECRET_ID EXPORT_SECRET_ID AUDIT_SECRET_ID GATHERER_IDS GATHERER_DNS_SUFFIX
# READER_SECRET_PREFIX RETENTION_SECRET_PREFIX ENABLE_EXPORT (SSM_AGENT_VERSION SSM_AGENT_SHA256
# optional). Run by kalshi-bootstrap@dedup.service, which retries it (a minute apart) until it
# succeeds: until production is bootstrapped and every gatherer has published its passwords.
# ENABLE_EXPORT=true marks the jobs host (dedup-a): export, retention and audit timers run there
# only.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/bootstrap-common.sh"

RDS_CA=/etc/kalshi-data/rds-global-bundle.pem
# node-exporter's textfile collector reads one directory (Debian's default); the jobs write their
# metrics in their own units' directories (export.yaml / audit.yaml metrics_textfile): the export
# in its StateDirectory (survives reboots), the audit in its RuntimeDirectory (tmpfs).
TEXTFILE_DIR=/var/lib/prometheus/node-exporter
EXPORT_PROM=/var/lib/kalshi-export/export.prom
AUDIT_PROM=/run/kalshi-audit/audit.prom
NODE_EXPORTER_DEFAULTS=/etc/default/prometheus-node-exporter
DEDUP_DROPIN_DIR=/etc/systemd/system/kalshi-dedup.service.d

fetch_ca() {
  # RDS certificate bundle: libpq verifies the server (sslmode=verify-full), not only encrypts.
  curl -fsSL -o "$RDS_CA.tmp" https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
  mv "$RDS_CA.tmp" "$RDS_CA"
  chmod 0644 "$RDS_CA"
}

dsn_from_secret() {
  # dsn_from_secret <secret-id> <user>: a libpq DSN for production from the user's password secret.
  local pw
  pw=$(secret_get "$1" password)
  if [ -z "$pw" ]; then
    log "secret $1 has no password yet: bootstrap production first (README step 3); retrying"
    exit 1
  fi
  printf 'host=%s port=5432 dbname=%s user=%s password=%s sslmode=verify-full sslrootcert=%s' \
    "$RDS_ENDPOINT" "$RDS_DB_NAME" "$2" "$pw" "$RDS_CA"
}

gatherer_credentials_dropin() {
  # The drop-in that loads one gatherer DSN per id of GATHERER_IDS into kalshi-dedup.service
  # (the unit itself lists only production-dsn: the ids are the deployment's).
  local g
  echo "# Written by dedup-bootstrap.sh from GATHERER_IDS; do not edit."
  echo "[Service]"
  for g in $GATHERER_IDS; do
    echo "LoadCredential=gatherer-$g-dsn:/etc/credstore/kalshi-dedup/gatherer-$g-dsn"
  done
}

gatherer_password() {
  # gatherer_password <secret-id> <gatherer>: the password a gatherer published, or exit 1 (the
  # unit retries) when it has not published it yet.
  local pw
  pw=$(secret_get "$1")
  if [ -z "$pw" ]; then
    log "gatherer $2 has not published $1 yet; retrying"
    exit 1
  fi
  printf '%s' "$pw"
}

write_credentials() {
  dsn_from_secret "$DEDUP_SECRET_ID" kalshi_dedup | credential_write kalshi-dedup production-dsn
  local g pw
  for g in $GATHERER_IDS; do
    pw=$(gatherer_password "$READER_SECRET_PREFIX$g" "$g")
    printf 'host=%s.%s port=5432 dbname=kalshi_ts user=kalshi_dedup_reader password=%s sslmode=require' \
      "$g" "$GATHERER_DNS_SUFFIX" "$pw" | credential_write kalshi-dedup "gatherer-$g-dsn"
  done
  install -d -m 0755 "$DEDUP_DROPIN_DIR"
  gatherer_credentials_dropin > "$DEDUP_DROPIN_DIR/gatherers.conf"
  if [ "$ENABLE_EXPORT" = "true" ]; then
    write_job_credentials
  fi
}

write_job_credentials() {
  # The jobs host only (ENABLE_EXPORT=true): export, retention and audit credentials.
  local g pw
  dsn_from_secret "$EXPORT_SECRET_ID" kalshi_export | credential_write kalshi-export production-dsn
  # Retention: kalshi_export reads the cursors; kalshi_retention on each gatherer may drop only
  # synced old partitions (gatherer migration 0008).
  dsn_from_secret "$EXPORT_SECRET_ID" kalshi_export | credential_write kalshi-retention production-dsn
  for g in $GATHERER_IDS; do
    pw=$(gatherer_password "$RETENTION_SECRET_PREFIX$g" "$g")
    printf 'host=%s.%s port=5432 dbname=kalshi_ts user=kalshi_retention password=%s sslmode=require' \
      "$g" "$GATHERER_DNS_SUFFIX" "$pw" | credential_write kalshi-retention "gatherer-$g-dsn"
  done
  # The trade audit (and `kalshi-data status`): kalshi_audit, a kd_auditor member (production
  # migration 0009).
  dsn_from_secret "$AUDIT_SECRET_ID" kalshi_audit | credential_write kalshi-audit production-dsn
}

job_textfiles() {
  # job_textfiles <dir>: node-exporter's textfile directory, with one symlink per job metrics file
  # (a dangling link until the job's first run is skipped by the collector, which reports
  # node_textfile_scrape_error; KalshiExportStale / KalshiAuditMetricsAbsent cover it).
  install -d -m 0755 "$1"
  ln -sfn "$EXPORT_PROM" "$1/kalshi-export.prom"
  ln -sfn "$AUDIT_PROM" "$1/kalshi-audit.prom"
}

node_exporter_args() {
  # The /etc/default/prometheus-node-exporter line: the textfile collector reads TEXTFILE_DIR.
  echo "ARGS=\"--collector.textfile.directory=$TEXTFILE_DIR\""
}

main() {
  apt_https_only
  install_ssm_agent
  apt-get install -y -qq --no-install-recommends postgresql-client >/dev/null
  install_app all  # export (S3, Parquet) and the operators' status/coverage tables run here
  fetch_ca
  write_credentials
  install_units
  systemctl enable --now prometheus-node-exporter
  systemctl enable kalshi-dedup
  systemctl restart kalshi-dedup   # picks up new credentials on a re-run
  if [ "$ENABLE_EXPORT" = "true" ]; then
    # The export runs as the static user kalshi-export (its StateDirectory /var/lib/kalshi-export
    # must be readable by node-exporter); the audit as a dynamic user (/run/kalshi-audit, 0755).
    id -u kalshi-export >/dev/null 2>&1 || \
      useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin kalshi-export
    job_textfiles "$TEXTFILE_DIR"
    node_exporter_args > "$NODE_EXPORTER_DEFAULTS"
    systemctl restart prometheus-node-exporter
    systemctl enable --now kalshi-export.timer kalshi-audit.timer
    # One run of each now: their metrics exist from the first day (KalshiExportStale and
    # KalshiAuditMetricsAbsent use absent()), and the audit's tmpfs textfile after every boot.
    systemctl start --no-block kalshi-export.service
    systemctl start --no-block kalshi-audit.service
    local g
    for g in $GATHERER_IDS; do
      systemctl enable --now "kalshi-retention@$g.timer"
    done
  fi
  log "deduplicator $INSTANCE_ID provisioned"
}

# Sourced by the tests with KALSHI_BOOTSTRAP_SOURCE_ONLY=1 to call one function.
if [ "${KALSHI_BOOTSTRAP_SOURCE_ONLY:-}" != 1 ]; then
  main
fi
