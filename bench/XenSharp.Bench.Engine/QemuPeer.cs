using System.Diagnostics;
using System.Globalization;

namespace XenSharp.Bench.Engine;

/// <summary>QEMU's TCG as a second peer: boots the PVH build of the workloads (bench/engine/qemu-boot.S +
/// qemu-main.c) with the loop lengths on its command line and times each workload between the 'S' and 'E'
/// bytes it writes to the debug console, each followed by the workload's result.</summary>
internal static class QemuPeer
{
    /// <summary>The workloads in the order the PVH build runs them.</summary>
    private static readonly string[] Order = ["int-loop", "mem-loop", "call-loop", "md5"];

    /// <summary>Each workload's time and result, or null when QEMU is not installed or did not report them all.</summary>
    public static Dictionary<string, (double Seconds, ulong Checksum)>? Run(string elf, params ulong[] lengths)
    {
        var psi = new ProcessStartInfo("qemu-system-x86_64") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "-M", "pc", "-accel", "tcg", "-m", "256", "-display", "none", "-serial", "none",
                     "-monitor", "none", "-no-reboot", "-kernel", elf, "-debugcon", "stdio",
                     "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                     "-append", string.Join(' ', lengths.Select(l => l.ToString(CultureInfo.InvariantCulture))) })
            psi.ArgumentList.Add(a);
        Process proc;
        try { proc = Process.Start(psi)!; }
        catch (System.ComponentModel.Win32Exception) { return null; } // not installed
        using (proc)
        {
            _ = proc.StandardError.ReadToEndAsync();
            var stdout = proc.StandardOutput.BaseStream;
            var sw = Stopwatch.StartNew();
            var results = new Dictionary<string, (double, ulong)>();
            double start = -1, end = -1;
            var digest = new System.Text.StringBuilder();
            int b;
            while ((b = stdout.ReadByte()) >= 0)
            {
                if (b == 'S' && start < 0) start = sw.Elapsed.TotalSeconds;
                else if (b == 'E' && start >= 0 && end < 0) end = sw.Elapsed.TotalSeconds;
                else if (end >= 0 && b != '\n') digest.Append((char)b);
                else if (end >= 0 && b == '\n')
                {
                    if (results.Count < Order.Length && digest.Length == 16)
                        results[Order[results.Count]] = (end - start, Convert.ToUInt64(digest.ToString(), 16));
                    start = end = -1;
                    digest.Clear();
                }
            }
            proc.WaitForExit();
            return results.Count == Order.Length ? results : null;
        }
    }
}
