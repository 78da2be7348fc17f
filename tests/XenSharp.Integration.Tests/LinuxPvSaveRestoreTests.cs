using System.Globalization;
using XenSharp.Artifacts;
using static XenSharp.Integration.Tests.LinuxPvhTests;

namespace XenSharp.Integration.Tests;

/// <summary>
/// xl save and xl restore of Debian's kernel as a 64-bit PV guest with two vCPUs: xl save asks it to suspend through
/// xenstore, and its page tables go into the file with their frames as PFNs, typed and pinned, beside its vCPUs'
/// contexts, its p2m's frames and its shared_info; Xen's verify-stream-v2 accepts the file. xl restore gives it new
/// machine frames: the same shell answers with a file it wrote to its RAM-backed root before the save, its uptime
/// went on, a child process runs on each vCPU; a save that fails and `xl save -c` leave it running where it was (its
/// suspend cancelled), the restored domain is saved and restored again, and `xl migrate` moves it live to a new domain
/// on this host while two of its processes keep dirtying its memory.
/// </summary>
public class LinuxPvSaveRestoreTests
{
    [Fact]
    [Trait("Feature", "xl save/restore"), Trait("Feature", "xl migrate"), Trait("Feature", "x86/PV")]
    public void DebianPvGuestIsSavedRestoredAndMigratedWithItsState()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        using var xl = new XlHost();
        string cfg = WriteConfig(xl, store, "pvsr", vcpus: 2, memory: 256, type: "pv");
        string file = Path.Combine(xl.RunDir, "pvsr.save");
        string marker = $"state-{Guid.NewGuid():N}";
        try
        {
            double uptime;
            using (var console = new ConsoleSession(xl.RunDir, "create", "-c", cfg))
            {
                console.WaitFor("~ # ", BootLimit);
                console.Ask($"echo {marker} > /marker; echo written", "written");
                uptime = Uptime(console);

                // A save that cannot write its file: the guest, suspended for it, is resumed where it was (its suspend
                // cancelled), as xl does after a failed save.
                var failed = xl.Run(TimeSpan.FromMinutes(5), "save", "pvsr", Path.Combine(xl.RunDir, "no-such-dir", "pvsr.save"));
                Assert.True(failed.ExitCode != 0, failed.ToString());
                Assert.Contains("the domain was resumed", failed.Stderr);
                console.Ask("cat /marker", marker + "\r\n~ # ", TimeSpan.FromMinutes(2));

                // xl save -c: the guest carries on in the same domain, told its suspend was cancelled.
                var checkpoint = xl.Run(TimeSpan.FromMinutes(5), "save", "-c", "pvsr", file);
                Assert.True(checkpoint.ExitCode == 0, checkpoint + "\n" + xl.Run("dmesg").Stdout);
                Assert.Contains(marker + "\r\n~ # ", console.Ask("cat /marker", marker + "\r\n~ # ", TimeSpan.FromMinutes(2)));
                var (rc0, output0) = XlSaveRestoreTests.Verify(file);
                Assert.True(rc0 == 0, output0);

                var save = xl.Run(TimeSpan.FromMinutes(5), "save", "pvsr", file);
                Assert.True(save.ExitCode == 0, save + "\n" + xl.Run("dmesg").Stdout);
                Assert.True(console.WaitForExit(TimeSpan.FromMinutes(1)), "xl create -c did not return after the domain was saved");
            }
            Assert.DoesNotContain("pvsr", xl.Run("list").Stdout);
            var (rc, output) = XlSaveRestoreTests.Verify(file);
            Assert.True(rc == 0, output);
            Assert.Contains("Domain Header: x86 PV", output);
            Assert.Contains("64bit guest, 4 levels of pagetables", output);
            Assert.Contains("Libxc Record: x86 PV P2M frames", output);
            Assert.Contains("vcpu1 basic context", output);
            Assert.Contains("Libxc Record: Shared info", output);

            for (int round = 1; round <= 2; round++)
            {
                var restore = xl.Run(TimeSpan.FromMinutes(5), "restore", file);
                Assert.True(restore.ExitCode == 0, $"round {round}: {restore}\n{xl.Run("dmesg").Stdout}");
                Assert.Contains("pvsr", xl.Run("list").Stdout);
                using var console = new ConsoleSession(xl.RunDir, "console", "pvsr");
                console.Ask("cat /marker", marker + "\r\n~ # ", TimeSpan.FromMinutes(2));
                double after = Uptime(console);
                Assert.True(after >= uptime, $"round {round}: uptime went from {uptime} s back to {after} s");
                uptime = after;
                // Both vCPUs run: a process pinned to each, and a fork (copy-on-write through the restored tables).
                Assert.Contains("on-0 on-1", console.Ask(
                    "echo $(taskset -c 0 sh -c 'echo on-$(cut -d\" \" -f39 /proc/self/stat)') $(taskset -c 1 sh -c 'echo on-$(cut -d\" \" -f39 /proc/self/stat)')",
                    "on-0 on-1"));
                console.Ask("sleep 1; echo slept-$((6*7))", "slept-42\r\n~ # ");
                if (round == 2) break;
                var again = xl.Run(TimeSpan.FromMinutes(5), "save", "pvsr", file);
                Assert.True(again.ExitCode == 0, again + "\n" + xl.Run("dmesg").Stdout);
                Assert.True(console.WaitForExit(TimeSpan.FromMinutes(1)), "xl console did not return after the domain was saved");
                (rc, output) = XlSaveRestoreTests.Verify(file);
                Assert.True(rc == 0, output);
            }

            // xl migrate to this host, live: while a counter loop and a writer of fresh random data keep dirtying its
            // memory (and the writer's forks its page tables), the guest is sent in pre-copy rounds, then suspended for
            // its last pages; it goes on in a new domain with its files, and both processes run on.
            string seqSum;
            using (var console = new ConsoleSession(xl.RunDir, "console", "pvsr"))
            {
                seqSum = Md5(console, "seq 1 20000 > /seq; md5sum /seq");
                console.Ask("(i=0; while :; do i=$((i+1)); echo $i > /counter; done) >/dev/null 2>&1 & " +
                    "(n=0; while :; do dd if=/dev/urandom of=/churn bs=256k count=4 2>/dev/null; n=$((n+1)); echo $n > /rounds; done) >/dev/null 2>&1 & " +
                    "echo started",
                    "started\r\n~ # ");
                console.Ask("sleep 1; echo slept-$((6*7))", "slept-42\r\n~ # ");
            }
            string stream = Path.Combine(xl.RunDir, "pvsr.stream");
            var migrate = xl.Run(TimeSpan.FromMinutes(10), "migrate", "-s", SshScript(xl, stream), "pvsr", "localhost");
            string log = migrate.Stdout + migrate.Stderr;
            Assert.True(migrate.ExitCode == 0, migrate + "\n" + xl.Run("dmesg").Stdout);
            Assert.Contains("Migration successful.", migrate.Stderr);
            // The pages it dirtied while the first pass ran went again in a round of their own before the stop.
            var round1 = System.Text.RegularExpressions.Regex.Match(log, @"Iteration 1: ([0-9]+) pages sent");
            Assert.True(round1.Success && long.Parse(round1.Groups[1].Value, CultureInfo.InvariantCulture) > 0, log);
            Assert.Contains("Suspended: ", log);
            // What went over the wire is libxc's PV stream, the vCPUs and shared_info after the pages: Xen's own
            // checker reads it as it reads a save file.
            var (vrc, voutput) = XlSaveRestoreTests.Verify(stream);
            Assert.True(vrc == 0, voutput);
            Assert.Contains("Domain Header: x86 PV", voutput);
            Assert.Contains("vcpu1 basic context", voutput);
            using (var moved = new ConsoleSession(xl.RunDir, "console", "pvsr"))
            {
                moved.Ask("cat /marker", marker + "\r\n~ # ", TimeSpan.FromMinutes(2));
                Assert.Equal(seqSum, Md5(moved, "md5sum /seq"));
                double after = Uptime(moved);
                Assert.True(after >= uptime, $"after the migration: uptime went from {uptime} s back to {after} s");
                long c1 = Counter(moved, "/counter"), r1 = Counter(moved, "/rounds");
                moved.Ask("sleep 10; echo slept-$((6*7))", "slept-42\r\n~ # ", TimeSpan.FromMinutes(2));
                long c2 = Counter(moved, "/counter"), r2 = Counter(moved, "/rounds");
                Assert.True(c2 > c1, $"the counter loop stopped after the migration: {c1}, then {c2}");
                Assert.True(r2 > r1, $"the writer stopped after the migration: round {r1}, then {r2}");
            }
        }
        finally
        {
            xl.Run("destroy", "pvsr");
        }
    }

    /// <summary>A stand-in for `ssh localhost`: runs the receiver's xl against the same daemon, keeping what the
    /// sender sends in <paramref name="tee"/>.</summary>
    private static string SshScript(XlHost xl, string tee)
    {
        string bin = XlHost.XlCommandDirectory(xl.RunDir);
        string script = Path.Combine(xl.RunDir, "ssh-tee");
        File.WriteAllText(script, $"#!/bin/bash\nshift\ntee {tee} | env XENSHARP_RUNDIR={xl.RunDir} PATH={bin}:$PATH \"$@\"\n");
        File.SetUnixFileMode(script, (UnixFileMode)0b111_101_101);
        return script;
    }

    /// <summary>The md5sum a command prints in the guest.</summary>
    private static string Md5(ConsoleSession console, string command)
    {
        string reply = console.Ask($"{command}; echo sum-$((3+4))", "sum-7\r\n", TimeSpan.FromMinutes(2));
        var m = System.Text.RegularExpressions.Regex.Match(reply, @"\b([0-9a-f]{32})\s+/seq");
        Assert.True(m.Success, reply);
        return m.Groups[1].Value;
    }

    /// <summary>The value one of the guest's loops last wrote into <paramref name="file"/> (read again while the loop
    /// has it truncated).</summary>
    internal static long Counter(ConsoleSession console, string file)
    {
        string reply = console.Ask($"c=$(cat {file}); while [ -z \"$c\" ]; do c=$(cat {file}); done; echo ctr-$c-rtc$((1+1))", "-rtc2\r\n");
        var m = System.Text.RegularExpressions.Regex.Match(reply, @"ctr-([0-9]+)-rtc");
        Assert.True(m.Success, reply);
        return long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
    }

    /// <summary>The guest's /proc/uptime, in seconds.</summary>
    private static double Uptime(ConsoleSession console)
    {
        string reply = console.Ask("echo up-$(cut -d' ' -f1 /proc/uptime)-pu$((2+3))", "-pu5\r\n");
        var m = System.Text.RegularExpressions.Regex.Match(reply, @"up-([0-9.]+)-pu5");
        Assert.True(m.Success, reply);
        return double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
    }
}
