#!/usr/bin/env bash
# Installs what Ward's tests need on a fresh Debian/Ubuntu machine, then the
# npm dependencies. Idempotent: Debian packages are installed only when
# missing. Used by .ci/run and by the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use, each with a command that proves it is there.
#   mosquitto: the external MQTT broker in integration tests
#   openssl:   issues throwaway TLS certificates for the TLS tests
declare -A NEED=(
  [mosquitto]="/usr/sbin/mosquitto"
  [openssl]="/usr/bin/openssl"
)

missing=()
for pkg in "${!NEED[@]}"; do
  [ -x "${NEED[$pkg]}" ] || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund
fi
