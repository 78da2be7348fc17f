#!/bin/sh
# Installs the Debian packages the test suite, the demo and the benchmarks use, when missing.
set -e
pkgs="gcc make checkpolicy binutils cpio gzip e2fsprogs xz-utils liblzma5 zstd busybox-static libxen-dev xenstore-utils xen-utils-4.17 xen-utils-common qemu-utils qemu-system-x86 qemu-system-xen seabios ovmf grub-pc-bin grub-efi-amd64-bin grub-xen-host xorriso mtools iproute2 dnsmasq-base ipxe-qemu passt openvswitch-switch"
# libvirtd with only what its libxl driver needs: its recommends would bring its other drivers, lvm2 and QEMU/KVM.
bare="libvirt-daemon libvirt-daemon-driver-xen libvirt-clients"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
missing_bare=""
for p in $bare; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing_bare="$missing_bare $p"
done
[ -z "$missing$missing_bare" ] && exit 0
echo "installing:$missing$missing_bare"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
[ -z "$missing" ] || $SUDO apt-get install -y -qq $missing >/dev/null
[ -z "$missing_bare" ] || $SUDO apt-get install -y -qq --no-install-recommends $missing_bare >/dev/null
