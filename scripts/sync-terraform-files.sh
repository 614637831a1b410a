#!/usr/bin/env bash
# Copy the systemd units and bootstrap scripts that the Terraform module deploys into the module
# itself (infra/terraform/files/), so that the module is complete on its own: `terraform
# validate`/`plan` work from a copy of infra/terraform alone, with no ../scripts or ../../systemd.
# systemd/ and infra/scripts/ stay the files people edit; tests/ops/test_infra.py fails when a
# copy differs from its source. Run after editing either: make infra-files
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dest=infra/terraform/files
rm -rf "$dest"
install -d "$dest/scripts" "$dest/systemd"
install -m 0644 infra/scripts/*.sh "$dest/scripts/"
install -m 0644 systemd/*.service systemd/*.timer "$dest/systemd/"
install -m 0644 "systemd/postgresql@.service.d/kalshi-restart.conf" "$dest/systemd/postgresql@.service.d-kalshi-restart.conf"
echo "synced $dest"
