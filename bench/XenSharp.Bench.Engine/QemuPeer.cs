using System.Diagnostics;

namespace XenSharp.Bench.Engine;

/// <summary>QEMU's TCG as a second peer for md5: boots the PVH build of the workload
/// (bench/engine/qemu-boot.S + qemu-main.c) and times the span between the 'S' and 'E' bytes it
/// writes to the debug console.</summary>
internal static class QemuPeer
{
    public static (double Seconds, ulong Checksum)? Md5(string elf)
    {
        var psi = new ProcessStartInfo("qemu-system-x86_64") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "-M", "pc", "-accel", "tcg", "-m", "256", "-display", "none", "-serial", "none",
                     "-monitor", "none", "-no-reboot", "-kernel", elf, "-debugcon", "stdio",
                     "-device", "isa-debug-exit,iobase=0xf4,iosize=4" })
            psi.ArgumentList.Add(a);
        Process proc;
        try { proc = Process.Start(psi)!; }
        catch (System.ComponentModel.Win32Exception) { return null; } // not installed
        using (proc)
        {
            _ = proc.StandardError.ReadToEndAsync();
            var stdout = proc.StandardOutput.BaseStream;
            var sw = Stopwatch.StartNew();
            double start = -1, end = -1;
            var digest = new System.Text.StringBuilder();
            int b;
            while ((b = stdout.ReadByte()) >= 0)
            {
                if (b == 'S' && start < 0) start = sw.Elapsed.TotalSeconds;
                else if (b == 'E' && end < 0) end = sw.Elapsed.TotalSeconds;
                else if (end >= 0 && b != '\n') digest.Append((char)b);
            }
            proc.WaitForExit();
            if (start < 0 || end < 0 || digest.Length != 16) return null;
            return (end - start, Convert.ToUInt64(digest.ToString(), 16));
        }
    }
}
