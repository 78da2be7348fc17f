#!/bin/sh
# Installs the Debian packages the test suite, the demo and the benchmarks use, when missing.
set -e
pkgs="gcc make checkpolicy binutils cpio gzip e2fsprogs xz-utils zstd busybox-static libxen-dev xenstore-utils xen-utils-4.17 xen-utils-common qemu-utils qemu-system-x86 qemu-system-xen seabios ovmf grub-pc-bin grub-efi-amd64-bin xorriso mtools iproute2 dnsmasq-base passt openvswitch-switch"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq $missing >/dev/null
