#!/usr/bin/env bash
# Install the system packages the tests and the demo need, from Debian's packages, when missing:
#   postgresql  (initdb, pg_ctl, postgres, pg_basebackup: real clusters in the test harness)
#   prometheus  (promtool: `promtool check rules` / `promtool test rules` on monitoring/)
# Uses sudo when not root; says exactly what to run when it cannot install.
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql postgresql-contrib)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "error: missing system packages and no root/sudo: run as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The prometheus package would start a server on :9090 where an init system runs; policy-rc.d
# keeps package scripts from starting services (this is a build/test machine).
if [ -z "$SUDO" ] && [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
