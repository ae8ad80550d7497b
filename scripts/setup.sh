#!/usr/bin/env bash
# Installs what Ward's tests need on a fresh Debian/Ubuntu machine, then the
# npm dependencies. Idempotent: Debian packages are installed only when
# missing. Used by .ci/run and by the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use, each with a command that proves it is there.
#   mosquitto:        the external MQTT broker in integration tests
#   openssl:          issues throwaway TLS certificates for the TLS tests
#   qemu-user-static: runs the arm64/armv7 binaries (and makes the armv7 SEA blob)
#   *-cross:          ARM C/C++ runtimes qemu loads the stock Node binaries with
#   binutils-*:       strips the ARM binaries
#   systemd:          systemd-notify (watchdog driver test) and systemd-analyze (unit check)
#   python3:          stands in for systemd's notify socket in the watchdog test
#   ShellCheck pkg:   lints the shell scripts (build, setup, image)
#   nftables:         the kernel rulesets Ward's enforcement writes (tests load them in namespaces)
#   iproute2:         ip netns / veth / bridges for the enforcement tests' gateways and hosts
#   procps:           sysctl (forwarding and br_netfilter switches in those namespaces)
#   conntrack:        revokes established connections a tightened policy denies
#   swtpm:            a software TPM 2.0 for the attestation tests (swtpm-tools: swtpm_ioctl stops it cleanly)
#   tpm2-tools:       the TPM commands Ward's TPM driver runs (quote, PCR extend, credential activation)
declare -A NEED=(
  [mosquitto]="/usr/sbin/mosquitto"
  [openssl]="/usr/bin/openssl"
  [qemu-user-static]="/usr/bin/qemu-aarch64-static"
  [libc6-arm64-cross]="/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1"
  [libstdc++6-arm64-cross]="/usr/aarch64-linux-gnu/lib/libstdc++.so.6"
  [libgcc-s1-arm64-cross]="/usr/aarch64-linux-gnu/lib/libgcc_s.so.1"
  [libatomic1-arm64-cross]="/usr/aarch64-linux-gnu/lib/libatomic.so.1"
  [libc6-armhf-cross]="/usr/arm-linux-gnueabihf/lib/ld-linux-armhf.so.3"
  [libstdc++6-armhf-cross]="/usr/arm-linux-gnueabihf/lib/libstdc++.so.6"
  [libgcc-s1-armhf-cross]="/usr/arm-linux-gnueabihf/lib/libgcc_s.so.1"
  [libatomic1-armhf-cross]="/usr/arm-linux-gnueabihf/lib/libatomic.so.1"
  [binutils-aarch64-linux-gnu]="/usr/bin/aarch64-linux-gnu-strip"
  [binutils-arm-linux-gnueabihf]="/usr/bin/arm-linux-gnueabihf-strip"
  [systemd]="/usr/bin/systemd-notify"
  [python3]="/usr/bin/python3"
  [shellcheck]="/usr/bin/shellcheck"
  [nftables]="/usr/sbin/nft"
  [iproute2]="/usr/sbin/ip"
  [procps]="/usr/sbin/sysctl"
  [conntrack]="/usr/sbin/conntrack"
  [swtpm]="/usr/bin/swtpm"
  [swtpm-tools]="/usr/bin/swtpm_ioctl"
  [tpm2-tools]="/usr/bin/tpm2_quote"
)

missing=()
for pkg in "${!NEED[@]}"; do
  [ -e "${NEED[$pkg]}" ] || missing+=("$pkg")
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
