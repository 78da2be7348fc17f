using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using XenSharp.Artifacts;
using static XenSharp.Integration.Tests.LinuxPvhTests;

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
    private (Process Remus, Func<string> Err) StartRemus(string name, TimeSpan? firstCheckpoint = null)
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
        Assert.True(WaitUntil(() => LastCheckpoint(Err()) >= 1 || remus.HasExited, firstCheckpoint ?? TimeSpan.FromMinutes(5)), "no first checkpoint\n" + Err());
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

    /// <summary>Debian's kernel as a two-vCPU PV guest under Remus: every checkpoint carries its dirty pages (its page
    /// tables typed, their frames made PFNs), both vCPUs' contexts and shared_info; the backup keeps writing them into
    /// the paused domain and makes it a running guest (tables localised and pinned, vCPUs loaded) only at the failover.
    /// The primary daemon is killed with SIGKILL: on the backup the same shell answers with the file it wrote to its
    /// RAM-backed root, its counter loop goes on from no lower than a value it had reached before the last checkpoint,
    /// and both vCPUs run.</summary>
    [Fact, Trait("Feature", "Remus Fault Tolerance"), Trait("Feature", "x86/PV")]
    public void BackupResumesAPvGuestFromItsLastCheckpointWhenThePrimaryDaemonIsKilled()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        string cfg = WriteConfig(_source.Xl, store, "pvremus", vcpus: 2, memory: 256, type: "pv");
        string marker = $"remus-{Guid.NewGuid():N}";
        Process? remus = null;
        try
        {
            Func<string> Err;
            long seen;
            using (var console = new ConsoleSession(_source.Xl.RunDir, "create", "-c", cfg))
            {
                console.WaitFor("~ # ", BootLimit);
                // Quiet: every checkpoint's suspend and resume would print its kernel messages over the shell's.
                console.Ask($"dmesg -n 1; echo {marker} > /marker; (i=0; while :; do i=$((i+1)); echo $i > /counter; done) >/dev/null 2>&1 & echo started",
                    "started\r\n~ # ");
                (remus, Err) = StartRemus("pvremus", TimeSpan.FromMinutes(10));
                // The primary counts a checkpoint once it is sent; the backup builds the domain once it has read it.
                Assert.True(WaitUntil(() => _target.Xl.Run("list").Stdout.Contains("pvremus") || remus.HasExited, TimeSpan.FromMinutes(5)),
                    Err() + "\n--- target\n" + _target.Xl.Run("dmesg").Stdout);

                // A value the loop has reached, then a checkpoint taken after it: the backup's copy has at least it.
                seen = LinuxPvSaveRestoreTests.Counter(console, "/counter");
                long at = LastCheckpoint(Err());
                Assert.True(WaitUntil(() => LastCheckpoint(Err()) > at || remus.HasExited, TimeSpan.FromMinutes(10)),
                    $"no checkpoint after {at}\n" + Err());
                Assert.False(remus.HasExited, "xl remus ended\n" + Err());
                Assert.DoesNotContain("Backup failed", Err());

                int daemon = int.Parse(File.ReadAllText(Path.Combine(_source.Xl.RunDir, "xensharpd.pid")).Trim());
                Process.GetProcessById(daemon).Kill();
                Assert.True(remus.WaitForExit(TimeSpan.FromMinutes(1)), "xl remus did not end with the primary daemon\n" + Err());
                remus.WaitForExit();
            }
            Assert.True(Err().Contains("the backup takes over"), Err());
            Assert.Contains("migration target: Remus Failover for domain", Err());

            using var backup = new ConsoleSession(_target.Xl.RunDir, "console", "pvremus");
            backup.Ask("cat /marker", marker + "\r\n~ # ", TimeSpan.FromMinutes(2));
            long c1 = LinuxPvSaveRestoreTests.Counter(backup, "/counter");
            Assert.True(c1 >= seen, $"the backup's counter is {c1}, the primary's had reached {seen} before the last checkpoint");
            backup.Ask("sleep 2; echo slept-$((6*7))", "slept-42\r\n~ # ", TimeSpan.FromMinutes(2));
            long c2 = LinuxPvSaveRestoreTests.Counter(backup, "/counter");
            Assert.True(c2 > c1, $"the counter loop stopped on the backup: {c1}, then {c2}");
            Assert.Contains("on-0 on-1", backup.Ask(
                "echo $(taskset -c 0 sh -c 'echo on-$(cut -d\" \" -f39 /proc/self/stat)') $(taskset -c 1 sh -c 'echo on-$(cut -d\" \" -f39 /proc/self/stat)')",
                "on-0 on-1"));
        }
        finally
        {
            if (remus is { HasExited: false }) remus.Kill(entireProcessTree: true);
            remus?.Dispose();
            _target.Xl.Run("destroy", "pvremus");
            _source.Xl.Run("destroy", "pvremus");
        }
    }

    /// <summary>Debian's kernel as a PVHVM guest with QEMU as its device model under Remus: at every checkpoint QEMU
    /// stops and saves its devices' state, which ends the checkpoint's libxl part, and goes on with the guest. The
    /// backup keeps the domain paused with no QEMU; the primary's host dies (its daemon and QEMU killed with SIGKILL),
    /// and the backup starts QEMU from the last checkpoint's state and unpauses the guest: the same shell answers on
    /// the serial port of the backup's QEMU with the file it wrote to its RAM-backed root before the checkpoints.</summary>
    [Fact, Trait("Feature", "Remus Fault Tolerance"), Trait("Feature", "x86/HVM")]
    public void BackupStartsAnHvmGuestsQemuFromItsLastCheckpointWhenThePrimaryDaemonIsKilled()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        string socket = Path.Combine(_source.Xl.RunDir, "serial.sock");
        string iso = GrubRescueImage.Debian(store, _source.Xl.RunDir);
        string cfg = Path.Combine(_source.Xl.RunDir, "hvmremus.cfg");
        File.WriteAllText(cfg, $"""
            name = "hvmremus"
            type = "hvm"
            memory = 256
            vcpus = 1
            serial = "unix:{socket},server=on,wait=off"
            disk = [ "{iso},raw,hdc,cdrom" ]
            boot = "d"
            on_crash = "preserve"
            """);
        string marker = $"remus-{Guid.NewGuid():N}";
        Process? remus = null;
        try
        {
            _source.Xl.Run(TimeSpan.FromMinutes(2), "create", cfg).Check();
            Func<string> Err;
            using (var serial = new SerialSocket(socket, TimeSpan.FromSeconds(30)))
            {
                serial.WaitFor("~ # ", TimeSpan.FromMinutes(12));
                // Quiet: every checkpoint's suspend and resume would print its kernel messages over the shell's.
                serial.Ask($"dmesg -n 1; echo {marker} > /marker; echo written-$?-e\"\"nd", "written-0-end");
                (remus, Err) = StartRemus("hvmremus", TimeSpan.FromMinutes(10));
                Assert.True(WaitUntil(() => _target.Xl.Run("list").Stdout.Contains("hvmremus") || remus.HasExited, TimeSpan.FromMinutes(5)),
                    Err() + "\n--- target\n" + _target.Xl.Run("dmesg").Stdout);
                long at = LastCheckpoint(Err());
                Assert.True(WaitUntil(() => LastCheckpoint(Err()) > at || remus.HasExited, TimeSpan.FromMinutes(10)),
                    $"no checkpoint after {at}\n" + Err());
                Assert.False(remus.HasExited, "xl remus ended\n" + Err());
                Assert.DoesNotContain("Backup failed", Err());
            }
            // The backup holds the domain paused and runs no QEMU for it yet.
            string targetLog = Path.Combine(_target.Xl.RunDir, "xensharpd.log");
            Assert.DoesNotContain("device model QEMU running", File.ReadAllText(targetLog));

            // The primary's host dies: its daemon and its QEMU, killed outright (neither cleans up after itself).
            string sourceLog = File.ReadAllText(Path.Combine(_source.Xl.RunDir, "xensharpd.log"));
            int qemu = int.Parse(Regex.Match(sourceLog, @"device model QEMU running, pid (\d+)").Groups[1].Value);
            int daemon = int.Parse(File.ReadAllText(Path.Combine(_source.Xl.RunDir, "xensharpd.pid")).Trim());
            Process.GetProcessById(daemon).Kill();
            try { Process.GetProcessById(qemu).Kill(); } catch (ArgumentException) { }
            Assert.True(remus.WaitForExit(TimeSpan.FromMinutes(1)), "xl remus did not end with the primary daemon\n" + Err());
            remus.WaitForExit();
            Assert.True(Err().Contains("the backup takes over"), Err());
            Assert.Contains("migration target: Remus Failover for domain", Err());

            Assert.True(WaitUntil(() => File.ReadAllText(targetLog).Contains("device model QEMU running"), TimeSpan.FromMinutes(2)),
                "the backup started no QEMU\n" + File.ReadAllText(targetLog));
            using var backup = new SerialSocket(socket, TimeSpan.FromMinutes(1));
            Assert.Contains(marker, backup.Ask("cat /marker; echo cat-e\"\"nd", "cat-end", TimeSpan.FromMinutes(3)));
            Assert.Contains("b-42-end", backup.Ask("echo b-$((6*7))-e\"\"nd", "-end", TimeSpan.FromMinutes(3)));
        }
        finally
        {
            if (remus is { HasExited: false }) remus.Kill(entireProcessTree: true);
            remus?.Dispose();
            _target.Xl.Run("destroy", "hvmremus");
            _source.Xl.Run("destroy", "hvmremus");
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
