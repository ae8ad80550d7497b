#!/usr/bin/env bash
# Builds a flashable Raspberry Pi (arm64) image without Docker and without
# loop mounts:
#   1. a Debian bookworm arm64 root filesystem with mmdebstrap, running the
#      packages' scripts under qemu-user (binfmt_misc; registered here if
#      the machine has not done it);
#   2. Ward on top: the arm64 binary, the systemd units, the agent config,
#      the fleet root metadata (root.json), the service user; SSH not installed, getty
#      off tty1 (the QR scanner types there), journald volatile;
#   3. partitions as files: FAT boot (Raspberry Pi firmware + kernel + initrd
#      + device trees, filled with mtools), ext4 root mounted read-only
#      (mkfs.ext4 -d), ext4 state partition for /var/lib/ward; joined with
#      sfdisk on the image file;
#   4. <out>/ward-<board>.img.xz and its sha256.
# Usage: images/build.sh --board rpi4 --fleet-root FILE [--binary dist/ward-linux-arm64] [--out dist/images] [--mirror URL]
# Needs root (mmdebstrap root mode, file ownership in the root filesystem).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

board=rpi4
fleet_root=""
binary="$repo/dist/ward-linux-arm64"
out="$repo/dist/images"
mirror="http://deb.debian.org/debian"
keep_work=0
reuse=""
while [ $# -gt 0 ]; do
  case "$1" in
    --board) board=$2; shift 2 ;;
    --fleet-root) fleet_root=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    --keep-work) keep_work=1; shift ;;
    # Reuse the root filesystem of an earlier --keep-work run (iterate on the partition steps without
    # the ~30 min emulated package install).
    --reuse-work) reuse=$2; keep_work=1; shift 2 ;;
    *) echo "build-image: unknown option $1" >&2; exit 2 ;;
  esac
done

die() { echo "build-image: $*" >&2; exit 1; }
say() { echo "build-image: $*" >&2; }

case "$board" in
  rpi4) dtbs="bcm2711-rpi-4-b.dtb bcm2711-rpi-cm4-io.dtb bcm2711-rpi-400.dtb" ;;
  *) die "unknown board '$board' (known: rpi4)" ;;
esac
[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap root mode)"
[ -n "$fleet_root" ] || die "--fleet-root FILE is required: the fleet root metadata (root.json from \`ward fleet init\`) is the image's only trust anchor"
[ -s "$fleet_root" ] || die "fleet root $fleet_root is missing or empty"
grep -q '"typ": *"ward.root"' "$fleet_root" || die "$fleet_root is not Ward fleet root metadata (ward fleet init writes root.json)"
[ -x "$binary" ] || die "$binary is missing: npm run build:binary -- --target linux-arm64"
for tool in mmdebstrap mkfs.ext4 mkfs.vfat mcopy mmd sfdisk xz qemu-aarch64-static; do
  command -v "$tool" >/dev/null || die "$tool is missing (Debian: mmdebstrap e2fsprogs dosfstools mtools fdisk xz-utils qemu-user-static)"
done

# Foreign-architecture package scripts run through binfmt_misc + qemu-user.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  say "registering qemu-aarch64 with binfmt_misc"
  cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
fi

if [ -n "$reuse" ]; then work=$reuse; else work=$(mktemp -d /var/tmp/ward-image.XXXXXX); fi
cleanup() { if [ "$keep_work" = 1 ]; then say "work folder kept: $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
rootfs="$work/rootfs"
bootfs="$work/boot"
rm -rf "$bootfs" "$work/fw" "$work/state"
mkdir -p "$bootfs" "$out"

version=$("$repo/dist/ward-linux-x64" --version 2>/dev/null || node -p "require('$repo/package.json').version")
say "board $board, ward $version, mirror $mirror"
start=$(date +%s)

if [ -z "$reuse" ]; then
# Hooks run on the host with "$1" = the root filesystem; `chroot "$1"` runs arm64 code via binfmt.
# update-initramfs is diverted to /bin/true while packages install (every kernel, udev or kmod
# trigger would rebuild the initrd, ~15 min each under emulation) and run once at the end.
mmdebstrap \
  --mode=root --architectures=arm64 --variant=minbase \
  --components=main,non-free-firmware \
  --include=systemd,systemd-sysv,systemd-timesyncd,udev,dbus,kmod,nftables,conntrack,iproute2,procps,tpm2-tools,libtss2-tcti-device0,tpm-udev,e2fsprogs,ca-certificates,linux-image-arm64,initramfs-tools,zstd \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" && echo "COMPRESS=zstd" > "$1/etc/initramfs-tools/conf.d/compress"' \
  --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && ln -s /bin/true "$1/usr/sbin/update-initramfs"' \
  --customize-hook='rm "$1/usr/sbin/update-initramfs" && chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs && chroot "$1" update-initramfs -c -k all' \
  --customize-hook="cp -a '$here/rootfs/.' \"\$1/\"" \
  --customize-hook="install -m 0755 '$binary' \"\$1/usr/bin/ward\"" \
  --customize-hook="install -m 0644 '$fleet_root' \"\$1/etc/ward/fleet-root.json\"" \
  --customize-hook='chroot "$1" systemd-sysusers' \
  --customize-hook='chroot "$1" systemctl enable ward-setup.service ward-agent.service systemd-networkd.service systemd-timesyncd.service' \
  --customize-hook='chroot "$1" systemctl mask getty@tty1.service serial-getty@ttyAMA0.service' \
  --customize-hook='mkdir -p "$1/etc/systemd/journald.conf.d" && printf "[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n" > "$1/etc/systemd/journald.conf.d/ward.conf"' \
  --customize-hook='printf "LABEL=ward-root / ext4 ro,noatime 0 1\nLABEL=WARDBOOT /boot/firmware vfat ro,noatime,nofail 0 2\nLABEL=ward-state /var/lib/ward ext4 rw,noatime,nosuid,nodev 0 2\ntmpfs /tmp tmpfs nosuid,nodev,size=64M 0 0\ntmpfs /var/tmp tmpfs nosuid,nodev,size=16M 0 0\ntmpfs /var/cache tmpfs nosuid,nodev,size=64M 0 0\ntmpfs /var/lib/systemd tmpfs nosuid,nodev,size=8M 0 0\n" > "$1/etc/fstab"' \
  --customize-hook='printf "ward-unprovisioned\n" > "$1/etc/hostname"; : > "$1/etc/machine-id"; mkdir -p "$1/boot/firmware" "$1/var/lib/ward"' \
  --customize-hook='chroot "$1" sh -c "cd /tmp && apt-get download raspi-firmware" && mv "$1"/tmp/raspi-firmware_*.deb "$1/../"' \
  --customize-hook='rm -rf "$1/var/lib/apt/lists/"* "$1/var/cache/apt/"*.bin' \
  bookworm "$rootfs" "deb $mirror bookworm main non-free-firmware"
fi
say "root filesystem done ($(( $(date +%s) - start )) s)"

# Boot partition: firmware from Debian's raspi-firmware, kernel/initrd/device trees from the root filesystem.
dpkg-deb -x "$work"/raspi-firmware_*.deb "$work/fw"
cp "$work"/fw/usr/lib/raspi-firmware/* "$bootfs/"
kver=$(basename "$(ls -d "$rootfs"/usr/lib/linux-image-* | sort -V | tail -n 1)" | sed 's/^linux-image-//')
cp "$rootfs/boot/vmlinuz-$kver" "$bootfs/vmlinuz"
cp "$rootfs/boot/initrd.img-$kver" "$bootfs/initrd.img"
for dtb in $dtbs; do cp "$rootfs/usr/lib/linux-image-$kver/broadcom/$dtb" "$bootfs/"; done
cat > "$bootfs/config.txt" <<CFG
# Ward gateway image ($board), kernel $kver
arm_64bit=1
kernel=vmlinuz
initramfs initrd.img followkernel
enable_uart=1
disable_overscan=1
CFG
echo "console=serial0,115200 console=tty1 root=LABEL=ward-root rootfstype=ext4 ro rootwait fsck.repair=yes" > "$bootfs/cmdline.txt"

# Partitions as files, then one image: [1 MiB gap][boot FAT32 256 MiB][root ext4][state ext4 128 MiB]
boot_mb=256
state_mb=128
root_mb=$(( $(du -sm --exclude=./boot --exclude=./var/lib/ward "$rootfs" | cut -f1) * 13 / 10 + 64 ))
mkfs.vfat -C -F 32 -n WARDBOOT "$work/boot.img" $(( boot_mb * 1024 )) >/dev/null
mcopy -s -i "$work/boot.img" "$bootfs"/* ::/
mkfs.ext4 -q -L ward-root -d "$rootfs" -E root_owner=0:0 "$work/root.img" "${root_mb}M"
mkdir -p "$work/state"
mkfs.ext4 -q -L ward-state -d "$work/state" "$work/state.img" "${state_mb}M"

img="$out/ward-$board.img"
total_mb=$(( 1 + boot_mb + root_mb + state_mb ))
rm -f "$img"
truncate -s "${total_mb}M" "$img"
sfdisk --quiet "$img" <<PARTS
label: dos
unit: sectors
start=2048, size=$(( boot_mb * 2048 )), type=c, bootable
start=$(( 2048 + boot_mb * 2048 )), size=$(( root_mb * 2048 )), type=83
start=$(( 2048 + (boot_mb + root_mb) * 2048 )), size=$(( state_mb * 2048 )), type=83
PARTS
dd if="$work/boot.img" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$img" bs=1M seek=$(( 1 + boot_mb )) conv=notrunc,sparse status=none
dd if="$work/state.img" of="$img" bs=1M seek=$(( 1 + boot_mb + root_mb )) conv=notrunc,sparse status=none

# The qemu boot check needs the kernel and initrd outside the image too.
cp "$bootfs/vmlinuz" "$out/ward-$board.vmlinuz"
cp "$bootfs/initrd.img" "$out/ward-$board.initrd.img"

say "compressing"
xz -T0 -6 -f -k "$img"
(cd "$out" && sha256sum "ward-$board.img.xz" > "ward-$board.img.xz.sha256")
say "$img.xz: $(stat -c %s "$img.xz") bytes (raw $(stat -c %s "$img")), $(( $(date +%s) - start )) s in all"
