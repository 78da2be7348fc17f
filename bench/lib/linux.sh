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
# set -e reaches into the trap: a clean-up that fails (a daemon still writing as it exits) must not turn a good
# run into a failure.
trap '"$ROOT/xl" daemon-stop >/dev/null 2>&1 || true; rm -rf "$XENSHARP_RUNDIR" || true' EXIT
XL_CREATE="$ROOT/xl create -c $ROOT/examples/debian-pvh.cfg"

ratio() { echo "$1 $2" | awk '{ if ($2 > 0) printf "%.2f", $1 / $2; else print "n/a" }'; }

# guest_pair NAME SEND RESULT [SETUP SETUP_RESULT]: times SEND (until RESULT shows on the console) in
# QEMU's TCG and in XenSharp, after the untimed SETUP, and prints the benchmark's line. $QEMU and
# $XL_CREATE may be changed before the call (e.g. for two vCPUs).
guest_pair() {
    name=$1; send=$2; result=$3
    set --  --send "$send" --result "$result" ${4:+--setup} ${4:+"$4"} ${5:+--setup-result} ${5:+"$5"}
    peer=$($BENCH_CONSOLE --prompt "$PROMPT" "$@" --timeout 900 -- $QEMU | awk '/^command/{print $2}')
    if ours=$($BENCH_CONSOLE --prompt "$PROMPT" "$@" --timeout 1800 -- $XL_CREATE 2>/tmp/xensharp-$name.err | awk '/^command/{print $2}') && [ -n "$ours" ]; then
        echo "$name: $ours s (qemu-tcg: $peer s, ratio $(ratio "$ours" "$peer"))"
    else
        echo "$name: the guest did not run it (qemu-tcg: $peer s); see /tmp/xensharp-$name.err"
        return 1
    fi
}
