#!/usr/bin/env bash
# Build the release every host installs, from the git-tracked files of HEAD (not the work tree):
#   dist/kalshi_data-<version>-py3-none-any.whl   the application (pip wheel --no-deps)
#   dist/kalshi-data-deploy-<commit>.tar.gz        systemd units + bootstrap scripts (CloudFormation)
# and print their sha256s. Terraform uploads the wheel itself (variable app_wheel_path) and pins its
# sha256; for CloudFormation upload both files to your artifact bucket and pass the keys and
# sha256s as the stack parameters AppWheelKey/AppWheelSha256 and DeployBundleKey/DeployBundleSha256:
#   aws s3 cp dist/<wheel> "s3://$ARTIFACT_BUCKET/releases/$WHEEL_SHA256/<wheel>"
# Usage: scripts/build-release.sh [--bundle-only] [OUTDIR]   (OUTDIR defaults to dist/)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bundle_only=0
if [ "${1:-}" = "--bundle-only" ]; then bundle_only=1; shift; fi
out=$(realpath -m "${1:-dist}")
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && python=${PYTHON:-.venv/bin/python}
commit=$(git rev-parse --short=12 HEAD)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git archive --format=tar HEAD | tar -x -C "$work"
install -d "$out"

# Deploy bundle: exactly the module's files/ (byte-identical copies of systemd/ and infra/scripts/),
# packed reproducibly (sorted names, fixed owner and mtime, gzip without a timestamp).
bundle="$out/kalshi-data-deploy-$commit.tar.gz"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='@0' \
  -C "$work/infra/terraform/files" -cf - scripts systemd | gzip -9n > "$bundle"

if [ "$bundle_only" = 0 ]; then
  "$python" -m pip wheel --no-deps -q -w "$out" "$work"
fi
for f in "$out"/kalshi_data-*.whl "$bundle"; do
  [ -f "$f" ] && sha256sum "$f"
done
