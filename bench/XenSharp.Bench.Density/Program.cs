using System.Diagnostics;
using System.Globalization;
using System.Text;

// bench-density: what idle Linux guests cost the host, for XenSharp and for QEMU's TCG.
//   bench-density --xl XL_DLL --kernel BZIMAGE --initrd INITRD --vmlinux ELF [--guests N] [--memory MIB]
//                 [--idle SECONDS] [--no-qemu]
// XENSHARP_RUNDIR must name a private run directory: the harness starts its own daemon there through xl.
// Every figure is printed as `NAME: VALUE UNIT`, with QEMU's figure beside ours where it has one.
string? xlDll = null, kernel = null, initrd = null, vmlinux = null;
int guests = 4, memoryMiB = 128;
double idleSeconds = 20;
bool qemu = true;
for (int a = 0; a < args.Length; a++)
{
    switch (args[a])
    {
        case "--xl": xlDll = args[++a]; break;
        case "--kernel": kernel = args[++a]; break;
        case "--initrd": initrd = args[++a]; break;
        case "--vmlinux": vmlinux = args[++a]; break;
        case "--guests": guests = int.Parse(args[++a], CultureInfo.InvariantCulture); break;
        case "--memory": memoryMiB = int.Parse(args[++a], CultureInfo.InvariantCulture); break;
        case "--idle": idleSeconds = double.Parse(args[++a], CultureInfo.InvariantCulture); break;
        case "--no-qemu": qemu = false; break;
        default: Console.Error.WriteLine($"bench-density: unknown option {args[a]}"); return 2;
    }
}
string? runDir = Environment.GetEnvironmentVariable("XENSHARP_RUNDIR");
if (xlDll is null || kernel is null || initrd is null || vmlinux is null || runDir is null || guests < 1)
{
    Console.Error.WriteLine("usage: XENSHARP_RUNDIR=DIR bench-density --xl XL_DLL --kernel BZIMAGE --initrd INITRD --vmlinux ELF [--guests N] [--memory MIB] [--idle S] [--no-qemu]");
    return 2;
}
const string Prompt = "~ # ";
var idle = TimeSpan.FromSeconds(idleSeconds);
// Idle means past the boot: the daemon drops code a guest has not run for a 10 s period (CodeAging), so a boot's
// code is gone within two periods of the prompt, and its memory back with the host a few seconds later.
var settle = TimeSpan.FromSeconds(40);
double hostMiB = Meminfo("MemTotal") / 1024.0;
int cores = Environment.ProcessorCount;

// The peer first, alone on the machine: one QEMU process per guest, so one guest tells its cost.
Figures? peer = null;
if (qemu)
    peer = MeasureQemu();

// XenSharp: a fresh daemon, then N guests booted one after the other (two cores boot one at a time best).
Xl(["list"]);
int pid = int.Parse(File.ReadAllText(Path.Combine(runDir, "xensharpd.pid")).Trim(), CultureInfo.InvariantCulture);
// Past the start-up: the runtime's tiered compilation re-compiles the start-up's hot methods in the first seconds,
// a one-time cost that the empty daemon's figure (and, subtracted, the per-guest one) should not carry.
Thread.Sleep(TimeSpan.FromSeconds(20));
var empty = Sample(pid);
double emptyCpu = CpuShare(pid, idle);
Log($"daemon with no guests: rss {empty.RssKiB / 1024.0:F1} MiB, pss {empty.PssKiB / 1024.0:F1} MiB, cpu {emptyCpu:F2} %");

var names = new List<string>();
try
{
    for (int g = 0; g < guests; g++)
    {
        string name = $"density{g}";
        string cfg = Path.Combine(runDir, name + ".cfg");
        File.WriteAllText(cfg, $"""
            name = "{name}"
            type = "pvh"
            kernel = "{kernel}"
            ramdisk = "{initrd}"
            cmdline = "console=hvc0"
            memory = {memoryMiB}
            vcpus = 1
            on_poweroff = "destroy"
            on_crash = "destroy"
            """);
        var clock = Stopwatch.StartNew();
        Xl(["create", cfg]);
        names.Add(name);
        WaitForPrompt(Path.Combine(runDir, "console", name + ".log"), TimeSpan.FromSeconds(600));
        var s = Sample(pid);
        Log($"{name} at its prompt after {clock.Elapsed.TotalSeconds:F1} s: daemon rss {s.RssKiB / 1024.0:F1} MiB, guest RAM resident {s.GuestRamKiB / 1024.0:F1} MiB");
    }
    Thread.Sleep(settle);
    var full = Sample(pid);
    double fullCpu = CpuShare(pid, idle);
    foreach (var name in names)
        Xl(["destroy", name]);
    names.Clear();
    Thread.Sleep(TimeSpan.FromSeconds(5));
    var after = Sample(pid);
    Log($"after destroying them: rss {after.RssKiB / 1024.0:F1} MiB, guest RAM resident {after.GuestRamKiB / 1024.0:F1} MiB");

    double perGuest = (full.RssKiB - empty.RssKiB) / 1024.0 / guests;
    double guestRam = (full.GuestRamKiB - empty.GuestRamKiB) / 1024.0 / guests;
    var ours = new Figures(perGuest, guestRam, perGuest - guestRam, Math.Max(0, fullCpu - emptyCpu) / guests);

    Console.WriteLine($"density-daemon-rss-empty: {empty.RssKiB / 1024.0:F1} MiB (pss {empty.PssKiB / 1024.0:F1} MiB)");
    Console.WriteLine($"density-daemon-cpu-empty: {emptyCpu:F2} % of a core");
    Console.WriteLine($"density-rss-per-guest: {ours.RssPerGuest:F1} MiB{Beside(f => f.RssPerGuest, "F1")} [{guests} guests of {memoryMiB} MiB]");
    Console.WriteLine($"density-guest-ram-per-guest: {ours.GuestRam:F1} MiB{Beside(f => f.GuestRam, "F1")}");
    Console.WriteLine($"density-overhead-per-guest: {ours.Overhead:F1} MiB{Beside(f => f.Overhead, "F1")}");
    Console.WriteLine($"density-cpu-per-idle-guest: {ours.CpuPerGuest:F2} % of a core{Beside(f => f.CpuPerGuest, "F2")}");
    Console.WriteLine($"density-daemon-rss-after-destroy: {after.RssKiB / 1024.0:F1} MiB (pss {after.PssKiB / 1024.0:F1} MiB, guest RAM still resident {after.GuestRamKiB / 1024.0:F1} MiB)");
    double held = Capacity(ours, empty.RssKiB / 1024.0, out string bound);
    string peerHeld = peer is { } q ? $" (qemu-tcg: {Capacity(q, 0, out string qb):F0} guests, {qb})" : "";
    Console.WriteLine($"density-guests-held: {held:F0} guests, {bound}{peerHeld} [extrapolated from {guests}, {hostMiB / 1024:F1} GiB and {cores} cores]");

    // QEMU's figure and ours over it, on the same line.
    string Beside(Func<Figures, double> f, string format) => peer is { } p
        ? $" (qemu-tcg: {f(p).ToString(format, CultureInfo.InvariantCulture)}, ratio {(f(p) > 0 ? (f(ours) / f(p)).ToString("F2", CultureInfo.InvariantCulture) : "n/a")})"
        : "";
    return 0;
}
finally
{
    foreach (var name in names)
        Xl(["destroy", name], check: false);
}

// Guests this host holds: memory bound (host RAM less the daemon itself, over each guest's resident cost)
// and CPU bound (the cores, over each idle guest's share), whichever is fewer.
double Capacity(Figures f, double fixedMiB, out string bound)
{
    double byMemory = Math.Floor((hostMiB - fixedMiB) / f.RssPerGuest);
    double byCpu = f.CpuPerGuest > 0 ? Math.Floor(cores * 100 / f.CpuPerGuest) : double.PositiveInfinity;
    bound = byCpu < byMemory ? $"bound by CPU (memory would hold {byMemory:F0})" : $"bound by memory (CPU would hold {(double.IsInfinity(byCpu) ? "any number" : byCpu.ToString("F0", CultureInfo.InvariantCulture))})";
    return Math.Min(byMemory, byCpu);
}

Figures MeasureQemu()
{
    var psi = new ProcessStartInfo("qemu-system-x86_64")
    {
        RedirectStandardInput = true,
        RedirectStandardOutput = true,
        RedirectStandardError = true,
    };
    foreach (var arg in new[] { "-accel", "tcg", "-m", memoryMiB.ToString(CultureInfo.InvariantCulture), "-smp", "1",
        "-kernel", vmlinux!, "-initrd", initrd!, "-append", "console=ttyS0", "-nographic", "-no-reboot" })
        psi.ArgumentList.Add(arg);
    using var p = Process.Start(psi)!;
    var output = new StringBuilder();
    void Pump(StreamReader r) => new Thread(() =>
    {
        var buf = new char[4096];
        int n;
        while ((n = r.Read(buf, 0, buf.Length)) > 0)
            lock (output) output.Append(buf, 0, n);
    }) { IsBackground = true }.Start();
    Pump(p.StandardOutput);
    Pump(p.StandardError);
    try
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            lock (output)
                if (output.ToString().Contains(Prompt, StringComparison.Ordinal))
                    break;
            if (p.HasExited || clock.Elapsed > TimeSpan.FromSeconds(300))
                throw new InvalidOperationException($"qemu did not reach the prompt; output:\n{output}");
            Thread.Sleep(200);
        }
        Thread.Sleep(settle);
        var s = Sample(p.Id, qemuRamBytes: (ulong)memoryMiB << 20);
        double cpu = CpuShare(p.Id, idle);
        Log($"qemu-tcg at its prompt: rss {s.RssKiB / 1024.0:F1} MiB, guest RAM resident {s.GuestRamKiB / 1024.0:F1} MiB, cpu {cpu:F2} %");
        double rss = s.RssKiB / 1024.0, ram = s.GuestRamKiB / 1024.0;
        return new Figures(rss, ram, rss - ram, cpu);
    }
    finally
    {
        try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
        p.WaitForExit();
    }
}

void WaitForPrompt(string consoleLog, TimeSpan limit)
{
    var clock = Stopwatch.StartNew();
    while (clock.Elapsed < limit)
    {
        if (File.Exists(consoleLog) && File.ReadAllText(consoleLog).Contains(Prompt, StringComparison.Ordinal))
            return;
        Thread.Sleep(500);
    }
    throw new TimeoutException($"no shell prompt in {consoleLog} within {limit.TotalSeconds} s");
}

// Resident size (VmRSS), proportional size (smaps_rollup Pss) and the resident part of guest RAM: for
// XenSharp the domains' memfds ("/memfd:xensharp-dN", mapped shared into the machine-memory reservation),
// for QEMU the anonymous mapping of the guest's RAM size.
Sample Sample(int processId, ulong qemuRamBytes = 0)
{
    long rss = 0, pss = 0, guestRam = 0;
    foreach (var line in File.ReadLines($"/proc/{processId}/status"))
        if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
            rss = KiB(line);
    foreach (var line in File.ReadLines($"/proc/{processId}/smaps_rollup"))
        if (line.StartsWith("Pss:", StringComparison.Ordinal))
            pss = KiB(line);
    ulong best = 0;
    long bestRss = 0, memfdRss = 0;
    ulong size = 0;
    bool candidate = false, memfd = false;
    foreach (var line in File.ReadLines($"/proc/{processId}/smaps"))
    {
        if (line.Length > 0 && char.IsAsciiHexDigit(line[0]) && line.Contains('-'))
        {
            var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            var range = f[0].Split('-');
            size = ulong.Parse(range[1], NumberStyles.HexNumber) - ulong.Parse(range[0], NumberStyles.HexNumber);
            bool anonRw = f[1].StartsWith("rw", StringComparison.Ordinal) && f.Length == 5;
            memfd = qemuRamBytes == 0 && f.Length > 5 && f[5].StartsWith("/memfd:xensharp-d", StringComparison.Ordinal);
            candidate = qemuRamBytes != 0 && anonRw && size >= qemuRamBytes && size <= qemuRamBytes + (4UL << 20);
        }
        else if (memfd && line.StartsWith("Rss:", StringComparison.Ordinal))
        {
            memfdRss += KiB(line);
            memfd = false;
        }
        else if (candidate && line.StartsWith("Rss:", StringComparison.Ordinal))
        {
            best = size;
            bestRss = KiB(line);
            candidate = false;
        }
    }
    return new Sample(rss, pss, qemuRamBytes == 0 ? memfdRss : bestRss);
}

static long KiB(string line) => long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);

// The process's CPU time (utime + stime) over the interval, as a percentage of one core.
static double CpuShare(int processId, TimeSpan interval)
{
    long t0 = CpuTicks(processId);
    var clock = Stopwatch.StartNew();
    Thread.Sleep(interval);
    long t1 = CpuTicks(processId);
    return (t1 - t0) / 100.0 / clock.Elapsed.TotalSeconds * 100; // USER_HZ is 100 on Linux
}

static long CpuTicks(int processId)
{
    string stat = File.ReadAllText($"/proc/{processId}/stat");
    var f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
    return long.Parse(f[11], CultureInfo.InvariantCulture) + long.Parse(f[12], CultureInfo.InvariantCulture); // fields 14 and 15
}

static long Meminfo(string key)
{
    foreach (var line in File.ReadLines("/proc/meminfo"))
        if (line.StartsWith(key + ":", StringComparison.Ordinal))
            return KiB(line);
    return 0;
}

void Xl(string[] xlArgs, bool check = true)
{
    var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
    psi.ArgumentList.Add(xlDll!);
    foreach (var a in xlArgs) psi.ArgumentList.Add(a);
    using var p = Process.Start(psi)!;
    var err = p.StandardError.ReadToEndAsync();
    p.StandardOutput.ReadToEnd();
    p.WaitForExit();
    if (check && p.ExitCode != 0)
        throw new InvalidOperationException($"xl {string.Join(' ', xlArgs)} failed ({p.ExitCode}): {err.Result}");
}

static void Log(string s) => Console.Error.WriteLine("bench-density: " + s);

internal readonly record struct Sample(long RssKiB, long PssKiB, long GuestRamKiB);

/// <summary>Per guest: resident growth of the host process, the part of it that is guest RAM, the rest, and idle CPU (% of a core).</summary>
internal sealed record Figures(double RssPerGuest, double GuestRam, double Overhead, double CpuPerGuest);
