# Shared by the Linux benchmarks: builds the console timer, fetches Debian's kernel and initramfs,
# and unpacks the kernel's ELF for QEMU's own PVH boot path.
ROOT=${XENSHARP_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
. "$ROOT/scripts/build.sh"
xensharp_build_product
dotnet build "$ROOT/bench/XenSharp.Bench.Console" -c Release -v q --nologo -clp:ErrorsOnly >/dev/null
BENCH_CONSOLE="dotnet $ROOT/artifacts/bin/XenSharp.Bench.Console/release/bench-console.dll"
dotnet "$ROOT/artifacts/bin/XenSharp.Artifacts/release/xensharp-artifacts.dll" fetch --quiet-if-cached
KERNEL=$(dotnet "$ROOT/artifacts/bin/XenSharp.Artifacts/release/xensharp-artifacts.dll" path kernel)
INITRD=$(dotnet "$ROOT/artifacts/bin/XenSharp.Artifacts/release/xensharp-artifacts.dll" path initrd)
VMLINUX="$(dirname "$KERNEL")/vmlinux"
if [ ! -s "$VMLINUX" ] || [ "$KERNEL" -nt "$VMLINUX" ]; then
    # bzImage setup header: setup_sects at 0x1f1, payload_offset at 0x248, payload_length at 0x24c.
    setup=$(( ($(od -An -tu1 -j 497 -N1 "$KERNEL") + 1) * 512 ))
    off=$(od -An -tu4 -j 584 -N4 "$KERNEL" | tr -d ' ')
    len=$(od -An -tu4 -j 588 -N4 "$KERNEL" | tr -d ' ')
    tail -c +$((setup + off + 1)) "$KERNEL" | head -c "$len" | xz -dc > "$VMLINUX.tmp" 2>/dev/null || true
    mv "$VMLINUX.tmp" "$VMLINUX"
fi
QEMU="qemu-system-x86_64 -accel tcg -m 512 -smp 1 -kernel $VMLINUX -initrd $INITRD -append console=ttyS0 -nographic -no-reboot"
PROMPT='~ # '

export XENSHARP_RUNDIR=$(mktemp -d /tmp/xensharp-bench-XXXXXX)
trap '"$ROOT/xl" daemon-stop >/dev/null 2>&1; rm -rf "$XENSHARP_RUNDIR"' EXIT
XL_CREATE="$ROOT/xl create -c $ROOT/examples/debian-pvh.cfg"

ratio() { echo "$1 $2" | awk '{ if ($2 > 0) printf "%.2f", $1 / $2; else print "n/a" }'; }
