#!/bin/sh
# Rebuilds workload.bin (flat image at 0x100000, entry at its start) and prints the values the
# host computes, which WorkloadTests.cs expects.
set -e
cd "$(dirname "$0")"
CFLAGS="-O3 -ffreestanding -fno-pic -fno-pie -mno-red-zone -fno-stack-protector -fno-asynchronous-unwind-tables -fcf-protection=none -fno-math-errno"
gcc $CFLAGS -c workload.c -o /tmp/workload.o
gcc -c start.S -Wa,--noexecstack -o /tmp/start.o
ld --no-warn-rwx-segments -nostdlib -static -T link.ld /tmp/start.o /tmp/workload.o "$(gcc -print-libgcc-file-name)" -o /tmp/workload.elf
objcopy -O binary /tmp/workload.elf workload.bin
gcc -O3 -fno-math-errno -fno-pie -no-pie workload.c host.c -o /tmp/workload-host
/tmp/workload-host
