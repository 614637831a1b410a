#!/usr/bin/env bash
# Provision one deduplicator host (leader or standby: the same steps, a different instance_id in
# dedup.yaml). Production must already be migrated and hold the kalshi_dedup/kalshi_export users
# whose passwords are in DEDUP_SECRET_ID / EXPORT_SECRET_ID (infra/terraform/README.md, step 3).
# Needs in bootstrap.env: AWS_REGION APP_PACKAGE|APP_ARTIFACT_S3_URI INSTANCE_ID RDS_ENDPOINT
# RDS_DB_NAME DEDUP_SECRET_ID EXPORT_SECRET_ID GATHERER_IDS GATHERER_DNS_SUFFIX
# READER_SECRET_PREFIX ENABLE_EXPORT
set -euo pipefail
. "$(dirname "$0")/bootstrap-common.sh"

RDS_CA=/etc/kalshi-data/rds-global-bundle.pem

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
    log "secret $1 has no password yet: bootstrap production first (README step 3), re-run $0"
    exit 1
  fi
  printf 'host=%s port=5432 dbname=%s user=%s password=%s sslmode=verify-full sslrootcert=%s' \
    "$RDS_ENDPOINT" "$RDS_DB_NAME" "$2" "$pw" "$RDS_CA"
}

write_credentials() {
  dsn_from_secret "$DEDUP_SECRET_ID" kalshi_dedup | credential_write kalshi-dedup production-dsn
  local g pw
  for g in $GATHERER_IDS; do
    pw=$(secret_get "$READER_SECRET_PREFIX$g")
    if [ -z "$pw" ]; then
      log "gatherer $g has not published its reader password yet: re-run $0 once it is up"
      exit 1
    fi
    printf 'host=%s.%s port=5432 dbname=kalshi_ts user=kalshi_dedup_reader password=%s sslmode=require' \
      "$g" "$GATHERER_DNS_SUFFIX" "$pw" | credential_write kalshi-dedup "gatherer-$g-dsn"
  done
  if [ "$ENABLE_EXPORT" = "true" ]; then
    dsn_from_secret "$EXPORT_SECRET_ID" kalshi_export | credential_write kalshi-export production-dsn
  fi
}

apt_https_only
apt-get install -y -qq --no-install-recommends postgresql-client >/dev/null
install_app
fetch_ca
write_credentials
install_units
systemctl enable --now prometheus-node-exporter kalshi-dedup
if [ "$ENABLE_EXPORT" = "true" ]; then
  # node-exporter reads the export job's metrics from its runtime directory.
  echo 'ARGS="--collector.textfile.directory=/run/kalshi-export"' > /etc/default/prometheus-node-exporter
  systemctl restart prometheus-node-exporter
  systemctl enable --now kalshi-export.timer
fi
log "deduplicator $INSTANCE_ID provisioned"
