#!/usr/bin/env bash
# Boots a built gateway image under qemu-system-aarch64 (-M virt, software
# emulation: slow, minutes) and checks that the Ward agent comes up and
# waits for its enrollment QR code. The image is opened read-only (snapshot)
# and the guest has no network (-nic none). Debian's arm64 kernel drives
# both the Raspberry Pi and the virt machine, so the same root filesystem
# boots here; only the firmware stage is the Pi's own.
# Usage: scripts/boot-image.sh [dist/images/ward-rpi4.img] [timeout-seconds]
set -euo pipefail
img=${1:-dist/images/ward-rpi4.img}
timeout_s=${2:-900}
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
  echo "boot-image: agent is waiting for provisioning after ${elapsed} s of emulated boot"
  grep -E 'ward-setup|hardware detected|waiting for provisioning|ward-agent' "$log" | sed 's/^/  /' | head -20
else
  echo "boot-image: agent did not reach 'waiting for provisioning' within ${elapsed} s; last console lines:" >&2
  tail -40 "$log" | sed 's/^/  /' >&2
fi
echo "boot-image: full console log in $log"
exit $result
