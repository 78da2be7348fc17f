#!/bin/sh
# Run one test kernel under QEMU (TCG, no Xen): ./run-qemu.sh NAME [kernel command line]
# The guest's console is port 0xE9 (isa-debugcon) on stdout; it powers off through isa-debug-exit.
# Exit status: 0 when the guest printed DONE with failed=0, 1 otherwise.
# Environment: QEMU (default qemu-system-x86_64), QEMU_CPU (default max), QEMU_SMP (default 2), QEMU_MEM (default 128),
# QEMU_TIMEOUT seconds (default 120).
set -u
dir=$(cd "$(dirname "$0")" && pwd)
name=${1:?usage: run-qemu.sh NAME [cmdline]}
shift
elf="$dir/build/$name.elf"
make -s -C "$dir" >/dev/null || exit 1
out=$(mktemp)
trap 'rm -f "$out"' EXIT
timeout "${QEMU_TIMEOUT:-120}" "${QEMU:-qemu-system-x86_64}" -accel tcg -cpu "${QEMU_CPU:-max}" -m "${QEMU_MEM:-128}" \
    -smp "${QEMU_SMP:-2}" -kernel "$elf" -append "$*" -nographic -no-reboot -monitor none \
    -serial none -device isa-debugcon,iobase=0xe9,chardev=c -chardev file,id=c,path=/dev/stdout \
    -device isa-debug-exit,iobase=0x501,iosize=2 | tee "$out"
grep -q '^DONE passed=[0-9]* failed=0 ' "$out"
