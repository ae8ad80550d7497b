#!/usr/bin/env bash
# Boots a built gateway image under qemu-system-aarch64 (-M virt, software
# emulation: slow, minutes) and checks that the Ward agent comes up and
# waits for its enrollment QR code. The image is opened read-only (snapshot)
# and the guest has no network (-nic none). Debian's arm64 kernel drives
# both the Raspberry Pi and the virt machine, so the same root filesystem
# boots here; only the firmware stage is the Pi's own.
# It then keeps watching for `observe` seconds (default 75, over two
# WatchdogSec=30s periods): a watchdog timeout or a failed agent fails the check.
# Usage: scripts/boot-image.sh [dist/images/ward-rpi4.img] [timeout-seconds] [observe-seconds]
set -euo pipefail
img=${1:-dist/images/ward-rpi4.img}
timeout_s=${2:-900}
observe_s=${3:-75}
base=${img%.img}
[ -f "$img" ] || { echo "boot-image: $img missing (npm run build:image)" >&2; exit 2; }
for f in "$base.vmlinuz" "$base.initrd.img"; do [ -f "$f" ] || { echo "boot-image: $f missing" >&2; exit 2; }; done
command -v qemu-system-aarch64 >/dev/null || { echo "boot-image: qemu-system-aarch64 missing (Debian qemu-system-arm)" >&2; exit 2; }

log=$(mktemp /tmp/ward-boot.XXXXXX.log)
start=$(date +%s)
qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 -nographic -no-reboot -nic none \
  -kernel "$base.vmlinuz" -initrd "$base.initrd.img" \
  -append "root=LABEL=ward-root rootfstype=ext4 ro rootwait console=ttyAMA0 systemd.journald.forward_to_console=1 panic=-1" \
  -drive "if=virtio,format=raw,file=$img,snapshot=on" > "$log" 2>&1 &
qemu=$!
trap 'kill $qemu 2>/dev/null || true' EXIT

result=1
while [ $(( $(date +%s) - start )) -lt "$timeout_s" ]; do
  if grep -q 'waiting for provisioning' "$log"; then result=0; break; fi
  if ! kill -0 $qemu 2>/dev/null; then break; fi
  sleep 5
done
elapsed=$(( $(date +%s) - start ))
if [ $result -eq 0 ]; then
  sleep "$observe_s"
  if grep -Eqi 'ward-agent.service: (Watchdog timeout|Failed|Main process exited)' "$log"; then
    echo "boot-image: the agent reached provisioning but then failed:" >&2
    grep -Ei 'ward-agent.service' "$log" | tail -10 | sed 's/^/  /' >&2
    result=1
  elif ! kill -0 $qemu 2>/dev/null; then
    echo "boot-image: the guest stopped while being observed" >&2
    result=1
  fi
fi
if [ $result -eq 0 ]; then
  echo "boot-image: agent is waiting for provisioning after ${elapsed} s of emulated boot"
  echo "boot-image: still healthy after ${observe_s} s more (watchdog pings accepted, no restart)"
  grep -E 'ward-setup|hardware detected|waiting for provisioning|ward-agent' "$log" | sed 's/^/  /' | head -20
else
  echo "boot-image: FAILED (waiting for provisioning seen: $(grep -c 'waiting for provisioning' "$log"), after ${elapsed} s); last console lines:" >&2
  tail -40 "$log" | sed 's/^/  /' >&2
fi
echo "boot-image: full console log in $log"
exit $result
