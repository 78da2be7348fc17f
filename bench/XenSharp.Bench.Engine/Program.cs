using System.Diagnostics;
using System.Globalization;
using XenSharp.Bench.Engine;

// usage: XenSharp.Bench.Engine WORKLOADS.BIN NATIVE-PEER [QEMU-PVH.ELF]
// Runs each workload in the engine, through the native peer (the same bytes on the host CPU) and, given its PVH build,
// under QEMU TCG; checks that all computed the same result, and prints one line per workload.
if (args.Length < 2)
{
    Console.Error.WriteLine("usage: XenSharp.Bench.Engine WORKLOADS.BIN NATIVE-PEER");
    return 2;
}
var inv = CultureInfo.InvariantCulture;
byte[] image = File.ReadAllBytes(args[0]);
if (BitConverter.ToUInt64(image, 0) != 0x31454e49474e4558UL)
{
    Console.Error.WriteLine($"{args[0]}: not a workload image");
    return 1;
}
ulong Entry(int i) => BitConverter.ToUInt64(image, 8 * (i + 1));
ulong intLoop = Entry(0), memLoop = Entry(1), fill = Entry(2), md5 = Entry(3), callLoop = Entry(4);

ulong intIterations = Env("XENSHARP_BENCH_INT_ITERATIONS", 20_000_000);
ulong memWords = 4UL << 20; // 32 MiB
ulong memIterations = Env("XENSHARP_BENCH_MEM_ITERATIONS", 5_000_000);
ulong md5Bytes = 64UL << 20;
ulong callIterations = Env("XENSHARP_BENCH_CALL_ITERATIONS", 2_000_000);

ulong[] lengths = [intIterations, memWords, memIterations, md5Bytes, callIterations];
var native = RunNative(args[1], args[0], lengths);
var qemu = args.Length > 2 ? QemuPeer.Run(args[2], lengths) : null;

using var guest = new FlatGuest(image);
int failures = 0;

var (n, s, r, cpu) = Measure(() => guest.Call(intLoop, intIterations, 12345));
Report("engine-int-loop", n, s, r, cpu, "int-loop");

guest.Call(fill, FlatGuest.Buffer, memWords, 777);
(n, s, r, cpu) = Measure(() => guest.Call(memLoop, FlatGuest.Buffer, memWords, memIterations));
Report("engine-mem-loop", n, s, r, cpu, "mem-loop");

(n, s, r, cpu) = Measure(() => guest.Call(callLoop, callIterations, 99));
Report("engine-call-loop", n, s, r, cpu, "call-loop");

guest.Call(fill, FlatGuest.Buffer, md5Bytes / 8, 4242);
(n, s, r, cpu) = Measure(() => guest.Call(md5, FlatGuest.Buffer, md5Bytes, FlatGuest.Buffer - 64));
string qemuText = qemu?["md5"] is { } q ? string.Format(inv, "; qemu-tcg: {0:0.00} s, ratio {1:0.00}x", q.Seconds, s / q.Seconds) : "";
Console.WriteLine(string.Format(inv, "engine-md5-64MiB: {0:0.00} s (native: {1:0.000} s, ratio {2:0.0}x{3}) [{4:0} MIPS; cpu {5:0.00} s]",
    s, native["md5"].Seconds, s / native["md5"].Seconds, qemuText, n / s / 1e6, cpu));
Check("md5", r, native["md5"].Checksum);
if (qemu is not null)
    foreach (var (name, peer) in qemu) Check(name + " under qemu", peer.Checksum, native[name].Checksum);
return failures == 0 ? 0 : 1;

// Wall time, and the process's CPU time (the vCPU and the block compiler's thread), which a loaded
// machine disturbs less: the MIPS per CPU-second is the steadier figure there.
(ulong Instructions, double Seconds, ulong Result, double CpuSeconds) Measure(Func<ulong> call)
{
    ulong before = guest.InstructionsRetired;
    var self = Process.GetCurrentProcess();
    var cpuBefore = self.TotalProcessorTime;
    var sw = Stopwatch.StartNew();
    ulong result = call();
    double seconds = sw.Elapsed.TotalSeconds;
    self.Refresh();
    return (guest.InstructionsRetired - before, seconds, result, (self.TotalProcessorTime - cpuBefore).TotalSeconds);
}

void Report(string name, ulong instructions, double seconds, ulong result, double cpu, string workload)
{
    // The peers run the same instruction stream, so their MIPS is the engine's count over their time.
    var peer = native[workload];
    double mips = instructions / seconds / 1e6, nativeMips = instructions / peer.Seconds / 1e6;
    string qemuText = qemu?[workload] is { } q
        ? string.Format(inv, "; qemu-tcg: {0:0.0} MIPS, ratio {1:0.00}", instructions / q.Seconds / 1e6, q.Seconds / seconds)
        : "";
    Console.WriteLine(string.Format(inv, "{0}: {1:0.0} MIPS (native: {2:0} MIPS, ratio {3:0.0000}{4}) [{5:0.0} MIPS per cpu-second]",
        name, mips, nativeMips, mips / nativeMips, qemuText, instructions / cpu / 1e6));
    Check(name, result, peer.Checksum);
}

void Check(string name, ulong engine, ulong host)
{
    if (engine == host) return;
    Console.Error.WriteLine($"{name}: engine computed {engine:x16}, host {host:x16}");
    failures++;
}

static ulong Env(string name, ulong fallback) =>
    ulong.TryParse(Environment.GetEnvironmentVariable(name), out var v) && v > 0 ? v : fallback;

static Dictionary<string, (double Seconds, ulong Checksum)> RunNative(string peer, string image, params ulong[] p)
{
    var psi = new ProcessStartInfo(peer) { RedirectStandardOutput = true };
    psi.ArgumentList.Add(image);
    foreach (var x in p) psi.ArgumentList.Add(x.ToString(CultureInfo.InvariantCulture));
    using var proc = Process.Start(psi)!;
    string output = proc.StandardOutput.ReadToEnd();
    proc.WaitForExit();
    if (proc.ExitCode != 0) throw new InvalidOperationException($"native peer failed with status {proc.ExitCode}");
    var d = new Dictionary<string, (double, ulong)>();
    foreach (var line in output.Split('\n', StringSplitOptions.RemoveEmptyEntries))
    {
        var f = line.Split(' ');
        d[f[0]] = (double.Parse(f[1], CultureInfo.InvariantCulture), Convert.ToUInt64(f[2], 16));
    }
    return d;
}
