using System.Diagnostics;
using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

/// <summary>
/// `xl info` reports the hypervisor's machine memory and what is free in it (XEN_SYSCTL_physinfo), not the
/// host's /proc/meminfo; the size is the daemon's --machine-memory / $XENSHARP_MACHINE_MEMORY, by default the
/// host's RAM less the share it keeps; Domain-0's Mem is the host's RAM outside machine memory and stays put.
/// </summary>
public sealed partial class MachineMemoryTests
{
    [GeneratedRegex(@"(?m)^(\w+)\s*:\s*(.*?)\s*$")]
    private static partial Regex InfoLine();

    private static Dictionary<string, string> Info(XlHost xl)
    {
        var r = xl.Run("info");
        Assert.True(r.ExitCode == 0, r.ToString());
        return InfoLine().Matches(r.Stdout).ToDictionary(m => m.Groups[1].Value, m => m.Groups[2].Value);
    }

    private static long ListedMemMb(XlHost xl, string name)
    {
        var r = xl.Run("list");
        Assert.True(r.ExitCode == 0, r.ToString());
        var row = r.Stdout.Split('\n').Single(l => l.StartsWith(name + " "));
        return long.Parse(row.Split(' ', StringSplitOptions.RemoveEmptyEntries)[2]);
    }

    private static long HostMemTotalKb() =>
        long.Parse(File.ReadLines("/proc/meminfo").First(l => l.StartsWith("MemTotal:")).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);

    [Fact, Trait("Feature", "xl")]
    public void InfoReportsTheMachineMemoryAndWhatGuestsLeaveFree()
    {
        using var xl = new XlHost();
        xl.Environment["XENSHARP_MACHINE_MEMORY"] = "512";
        var before = Info(xl);
        Assert.Equal("512", before["total_memory"]);
        Assert.Equal("512", before["free_memory"]);
        long dom0 = ListedMemMb(xl, "Domain-0");
        Assert.Equal((HostMemTotalKb() - 512 * 1024) / 1024, dom0);

        var created = xl.Run("create", "-p", Repository.PathOf("tests", "guests", "hello.cfg"));
        Assert.True(created.ExitCode == 0, created.ToString());
        var with = Info(xl);
        Assert.Equal("512", with["total_memory"]);
        // 32 MiB of RAM plus the guest's ACPI, special and Xen pages.
        Assert.InRange(long.Parse(with["free_memory"]), 512 - 34, 512 - 33);
        Assert.Equal(dom0, ListedMemMb(xl, "Domain-0"));

        Assert.Equal(0, xl.Run("destroy", "hello").ExitCode);
        Assert.Equal("512", Info(xl)["free_memory"]);
        Assert.Equal(dom0, ListedMemMb(xl, "Domain-0"));
    }

    [Fact, Trait("Feature", "xl")]
    public void AGuestBiggerThanMachineMemoryFailsItsCreateOnly()
    {
        using var xl = new XlHost();
        xl.Environment["XENSHARP_MACHINE_MEMORY"] = "256";
        var r = xl.Run("create", Repository.PathOf("tests", "guests", "hello.cfg"), "memory=512");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("machine memory exhausted", r.Stdout + r.Stderr);
        Assert.Equal("256", Info(xl)["free_memory"]);
        Assert.DoesNotContain("hello", xl.Run("list").Stdout);
    }

    [Fact, Trait("Feature", "xl")]
    public void DefaultMachineMemoryIsTheHostsLessTheShareItKeeps()
    {
        using var xl = new XlHost();
        long hostMb = HostMemTotalKb() / 1024;
        long keepMb = Math.Clamp(hostMb / 8, 512, 4096);
        var info = Info(xl);
        Assert.InRange(long.Parse(info["total_memory"]), hostMb - keepMb - 1, hostMb - keepMb);
        Assert.InRange(ListedMemMb(xl, "Domain-0"), keepMb - 1, keepMb + 1);
    }

    [Fact, Trait("Feature", "xl")]
    public void DaemonRefusesAMachineMemorySizeItCannotRead()
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
        psi.ArgumentList.Add(XlHost.DaemonDll);
        psi.ArgumentList.Add("--machine-memory");
        psi.ArgumentList.Add("lots");
        psi.ArgumentList.Add("--rundir");
        psi.ArgumentList.Add(Path.Combine(Path.GetTempPath(), $"xensharp-badmem-{Environment.ProcessId}"));
        using var p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.Equal(2, p.ExitCode);
        Assert.Contains("invalid machine memory size", err);
    }
}
