#!/bin/sh
# scripts/make-debian-iso.sh [OUT]: a bootable CD image of Debian's kernel and the busybox initramfs,
# made with grub-mkrescue (grub-pc-bin, xorriso and mtools; scripts/install-deps.sh installs them), with
# GRUB and Linux on the first serial port. OUT defaults to ~/.cache/xensharp/debian/debian.iso, the
# image examples/debian-hvm.cfg boots; it is made again when the kernel or initramfs is newer.
set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ARTIFACTS="dotnet $ROOT/artifacts/bin/XenSharp.Artifacts/release/xensharp-artifacts.dll"
if [ ! -f "$ROOT/artifacts/bin/XenSharp.Artifacts/release/xensharp-artifacts.dll" ]; then
    . "$ROOT/scripts/build.sh"
    xensharp_build_product
fi
$ARTIFACTS fetch --quiet-if-cached
KERNEL=$($ARTIFACTS path kernel)
INITRD=$($ARTIFACTS path initrd)
OUT=${1:-$(dirname "$KERNEL")/debian.iso}
if [ -s "$OUT" ] && [ "$OUT" -nt "$KERNEL" ] && [ "$OUT" -nt "$INITRD" ] && [ "$OUT" -nt "$0" ]; then
    exit 0
fi
tree=$(mktemp -d /tmp/xensharp-iso-XXXXXX)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/boot/grub"
cp "$KERNEL" "$tree/vmlinuz"
cp "$INITRD" "$tree/initrd.img"
cat > "$tree/boot/grub/grub.cfg" <<'CFG'
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry "Debian" {
  echo "grub: loading Linux"
  linux /vmlinuz console=ttyS0,115200
  initrd /initrd.img
}
CFG
grub-mkrescue -o "$OUT.tmp" "$tree" 2>/dev/null
mv "$OUT.tmp" "$OUT"
