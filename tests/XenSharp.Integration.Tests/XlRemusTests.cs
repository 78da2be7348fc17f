using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

/// <summary>
/// xl remus between the two daemons of <see cref="XlMigrateTests"/> (each in its own network namespace): the guest
/// tests/guests/dirty.c keeps writing memory under Remus; the primary daemon is killed with SIGKILL, and the backup
/// resumes the guest from its last checkpoint: its count goes on from no lower than the one the guest had printed
/// before that checkpoint, and its own check of every value it wrote passes there.
/// </summary>
public sealed partial class XlMigrateTests
{
    [GeneratedRegex(@"Remus: Checkpoint (\d+):")]
    private static partial Regex CheckpointLine();

    private static long LastCheckpoint(string stderr) =>
        CheckpointLine().Matches(stderr).Select(m => long.Parse(m.Groups[1].Value)).DefaultIfEmpty(0).Max();

    /// <summary>xl remus of <paramref name="name"/> to the target, in the background; its stderr as it comes.</summary>
    private (Process Remus, Func<string> Err) StartRemus(string name)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
        };
        foreach (var arg in new[] { XlHost.XlDll, "remus", "-F", "-n", "-d", "-i", "100", "-s", SshScript(), name, _target.Namespace })
            psi.ArgumentList.Add(arg);
        psi.Environment["XENSHARP_RUNDIR"] = _source.Xl.RunDir;
        var stderr = new StringBuilder();
        var remus = Process.Start(psi)!;
        remus.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };
        remus.BeginErrorReadLine();
        remus.OutputDataReceived += (_, _) => { };
        remus.BeginOutputReadLine();
        string Err() { lock (stderr) return stderr.ToString(); }
        Assert.True(WaitUntil(() => LastCheckpoint(Err()) >= 1 || remus.HasExited, TimeSpan.FromMinutes(5)), "no first checkpoint\n" + Err());
        Assert.False(remus.HasExited, "xl remus ended\n" + Err());
        return (remus, Err);
    }

    [Fact, Trait("Feature", "Remus Fault Tolerance")]
    public void BackupResumesTheGuestFromItsLastCheckpointWhenThePrimaryDaemonIsKilled()
    {
        CreateDirtyGuest("guarded");
        var (remus, Err) = StartRemus("guarded");
        using var _ = remus;
        try
        {
            // The backup holds the guest, paused, while the primary runs it.
            Assert.Contains("guarded", _target.Xl.Run("list").Stdout);

            // A count the guest has printed, then a checkpoint taken after it (xl shows the first five, then every
            // 50th): the backup's copy has at least that count.
            long seen = LastTick(_source.ConsoleLog("guarded"));
            long at = LastCheckpoint(Err());
            Assert.True(WaitUntil(() => LastCheckpoint(Err()) > at || remus.HasExited, TimeSpan.FromMinutes(5)),
                $"no checkpoint after {at}\n" + Err());
            Assert.False(remus.HasExited, "xl remus ended\n" + Err());

            int daemon = int.Parse(File.ReadAllText(Path.Combine(_source.Xl.RunDir, "xensharpd.pid")).Trim());
            Process.GetProcessById(daemon).Kill();
            Assert.True(remus.WaitForExit(TimeSpan.FromMinutes(1)), "xl remus did not end with the primary daemon\n" + Err());
            remus.WaitForExit();
            Assert.True(Err().Contains("the backup takes over"), Err());

            Assert.True(WaitUntil(() => LastTick(_target.ConsoleLog("guarded")) > seen, TimeSpan.FromMinutes(2)),
                $"the backup's guest printed no tick after {seen}\n" + _target.ConsoleLog("guarded") + "\n" + _target.Xl.Run("dmesg").Stdout);
            long first = LastTick(_target.ConsoleLog("guarded"));
            Assert.True(WaitUntil(() => LastTick(_target.ConsoleLog("guarded")) > first, TimeSpan.FromMinutes(2)),
                "the backup's guest stopped ticking\n" + _target.ConsoleLog("guarded"));
            Assert.DoesNotContain("FAIL", _target.ConsoleLog("guarded"));
            Assert.Contains("migration target: Remus Failover for domain", Err());
        }
        finally
        {
            if (!remus.HasExited) remus.Kill(entireProcessTree: true);
            _target.Xl.Run("destroy", "guarded");
        }
    }

    /// <summary>Without network buffering and disk replication Remus is only what libxl calls unsafe: xl asks for
    /// -n, -d and -F, as libxl does when they are not available.</summary>
    [Fact, Trait("Feature", "Remus Fault Tolerance")]
    public void RemusAsksForTheUnsafeModeItIsLimitedTo()
    {
        var r = _source.Xl.Run("remus", "nosuch", _target.Namespace);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("No support for network buffering", r.Stderr);
        r = _source.Xl.Run("remus", "-n", "-d", "nosuch", _target.Namespace);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("Unsafe mode must be enabled", r.Stderr);
        r = _source.Xl.Run("remus", "-F", "-n", "nosuch", _target.Namespace);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("No support for disk replication", r.Stderr);
        r = _source.Xl.Run("remus", "-F", "-n", "-d", "-b", "nosuch", _target.Namespace);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("nosuch", r.Stderr);
    }

    /// <summary>xl destroy of the primary domain ends Remus there and the backup takes over (xl's way to force a
    /// failover).</summary>
    [Fact, Trait("Feature", "Remus Fault Tolerance")]
    public void DestroyingThePrimaryDomainFailsOverToTheBackup()
    {
        CreateDirtyGuest("handover");
        var (remus, Err) = StartRemus("handover");
        using var _ = remus;
        try
        {
            long seen = LastTick(_source.ConsoleLog("handover"));
            _source.Xl.Run("destroy", "handover").Check();
            Assert.True(remus.WaitForExit(TimeSpan.FromMinutes(1)), "xl remus did not end\n" + Err());
            remus.WaitForExit();
            Assert.True(remus.ExitCode == 0, Err());
            Assert.Contains("Primary domain has been destroyed.", Err());
            Assert.Contains("migration target: Remus Failover for domain", Err());
            Assert.True(WaitUntil(() => LastTick(_target.ConsoleLog("handover")) > seen, TimeSpan.FromMinutes(2)),
                $"the backup's guest printed no tick after {seen}\n" + _target.ConsoleLog("handover"));
            Assert.DoesNotContain("FAIL", _target.ConsoleLog("handover"));
        }
        finally
        {
            if (!remus.HasExited) remus.Kill(entireProcessTree: true);
            _target.Xl.Run("destroy", "handover");
        }
    }

    /// <summary>When the backup goes (its daemon killed), the primary's guest runs on and xl remus says so.</summary>
    [Fact, Trait("Feature", "Remus Fault Tolerance")]
    public void PrimaryGuestRunsOnWhenTheBackupDies()
    {
        CreateDirtyGuest("alone");
        var (remus, Err) = StartRemus("alone");
        using var _ = remus;
        try
        {
            int daemon = int.Parse(File.ReadAllText(Path.Combine(_target.Xl.RunDir, "xensharpd.pid")).Trim());
            Process.GetProcessById(daemon).Kill();
            Assert.True(remus.WaitForExit(TimeSpan.FromMinutes(1)), "xl remus did not end with the backup\n" + Err());
            remus.WaitForExit();
            Assert.NotEqual(0, remus.ExitCode);
            Assert.Contains("Backup failed? resuming domain at primary", Err());
            long before = LastTick(_source.ConsoleLog("alone"));
            Assert.True(WaitUntil(() => LastTick(_source.ConsoleLog("alone")) > before + 1, TimeSpan.FromMinutes(2)),
                "the primary's guest stopped\n" + _source.ConsoleLog("alone") + Err());
            Assert.DoesNotContain("FAIL", _source.ConsoleLog("alone"));
        }
        finally
        {
            if (!remus.HasExited) remus.Kill(entireProcessTree: true);
            _source.Xl.Run("destroy", "alone");
        }
    }
}
