using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using XenSharp.Artifacts;
using static XenSharp.Integration.Tests.LinuxPvhTests;

namespace XenSharp.Integration.Tests;

/// <summary>
/// xl migrate between two daemons, each started inside its own network namespace as two hosts would be, with
/// <c>-s</c> a small script that plays ssh: it enters the namespace named as HOST and runs xl there against that
/// host's daemon. The freestanding guest tests/guests/dirty.c keeps writing while it is sent and checks from inside
/// that no value it wrote was lost; a stream cut in the middle leaves the guest running at the source and no
/// domain at the destination.
/// </summary>
[Trait("Feature", "xl migrate")]
public sealed partial class XlMigrateTests : IDisposable
{
    private sealed class Side(string name) : IDisposable
    {
        public string Namespace { get; } = $"xsm-{name}-{Environment.ProcessId}";
        public XlHost Xl { get; } = new();

        public void Start()
        {
            Exec("ip", "netns", "add", Namespace).Check();
            Exec("ip", "netns", "exec", Namespace, "ip", "link", "set", "lo", "up").Check();
            // The daemon starts with the first xl command: run that one inside the namespace.
            Exec("ip", "netns", "exec", Namespace, "env", $"XENSHARP_RUNDIR={Xl.RunDir}", "dotnet", XlHost.XlDll, "list").Check();
        }

        public string ConsoleLog(string domain)
        {
            var path = Path.Combine(Xl.RunDir, "console", domain + ".log");
            try { return File.Exists(path) ? File.ReadAllText(path) : ""; }
            catch (IOException) { return ""; }
        }

        public void Dispose()
        {
            Xl.Dispose();
            Exec("ip", "netns", "del", Namespace);
        }
    }

    private readonly Side _source = new("src"), _target = new("dst");
    private readonly string _dir = Directory.CreateTempSubdirectory("xensharp-migrate-").FullName;

    public XlMigrateTests()
    {
        _source.Start();
        _target.Start();
    }

    public void Dispose()
    {
        _source.Dispose();
        _target.Dispose();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private static XlResult Exec(params string[] command)
    {
        var psi = new ProcessStartInfo(command[0]) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var a in command[1..]) psi.ArgumentList.Add(a);
        return XlHost.RunProcess(psi, TimeSpan.FromSeconds(60));
    }

    /// <summary>The -s command: "SCRIPT HOST xl migrate-receive" enters namespace HOST and runs xl there for the target's
    /// daemon; <paramref name="cutAfter"/> bytes of the stream, when given, are all the receiver gets, and with
    /// <paramref name="bannerOnly"/> nothing the receiver says after its banner reaches the sender.</summary>
    private string SshScript(long? cutAfter = null, bool bannerOnly = false)
    {
        string bin = XlHost.XlCommandDirectory(_dir);
        string script = Path.Combine(_dir, cutAfter is not null ? "ssh-ns-cut" : bannerOnly ? "ssh-ns-mute" : "ssh-ns");
        string enter = $"ip netns exec \"$ns\" env XENSHARP_RUNDIR={_target.Xl.RunDir} PATH={bin}:$PATH \"$@\"";
        // bash's process substitution, so that no shell keeps the sender's end open once head has gone.
        string run = cutAfter is long n ? $"head -c {n} | {enter}" : bannerOnly ? $"exec {enter} > >(head -c 54)" : $"exec {enter}";
        File.WriteAllText(script, $"#!/bin/bash\nns=$1; shift\n{run}\n");
        File.SetUnixFileMode(script, (UnixFileMode)0b111_101_101);
        return script;
    }

    [GeneratedRegex(@"# tick (\d+) n=(\d+)")]
    private static partial Regex Tick();

    private static long LastTick(string log) => Tick().Matches(log).Select(m => long.Parse(m.Groups[1].Value)).DefaultIfEmpty(0).Max();

    private static bool WaitUntil(Func<bool> condition, TimeSpan timeout) => XlHost.WaitUntil(condition, timeout);

    private void CreateDirtyGuest(string name)
    {
        Assert.True(File.Exists(Repository.PathOf("tests", "guests", "build", "dirty.elf")), "dirty.elf is not built (make -C tests/guests)");
        _source.Xl.Run("create", Repository.PathOf("tests", "guests", "dirty.cfg"), $"name=\"{name}\"").Check();
        Assert.True(WaitUntil(() => LastTick(_source.ConsoleLog(name)) >= 1, TimeSpan.FromMinutes(2)), "the guest never ticked\n" + _source.ConsoleLog(name));
    }

    [Fact]
    public void GuestWritingMemoryIsMigratedLiveAndLosesNothing()
    {
        CreateDirtyGuest("mover");
        var r = _source.Xl.Run(TimeSpan.FromMinutes(5), "migrate", "-s", SshScript(), "mover", _target.Namespace);
        Assert.True(r.ExitCode == 0, r + "\n--- source console\n" + _source.ConsoleLog("mover"));
        Assert.Contains("migration sender: Iteration 0:", r.Stderr);
        Assert.Contains("migration target: Transfer complete", r.Stderr);
        Assert.Contains("Migration successful.", r.Stderr);
        Assert.DoesNotContain("mover", _source.Xl.Run("list").Stdout);
        Assert.Contains("mover", _target.Xl.Run("list").Stdout);

        // The guest goes on from where it was: its next ticks come at the target, and its own check of every value
        // it wrote (any page sent stale would fail it) keeps passing.
        long before = LastTick(_source.ConsoleLog("mover"));
        Assert.True(WaitUntil(() => LastTick(_target.ConsoleLog("mover")) > before + 1, TimeSpan.FromMinutes(2)),
            $"no tick after {before} at the target\n" + _target.ConsoleLog("mover"));
        Assert.DoesNotContain("FAIL", _target.ConsoleLog("mover"));
        _target.Xl.Run("destroy", "mover").Check();
    }

    [Fact]
    public void StreamCutMidwayLeavesTheGuestRunningAtTheSourceAndNothingAtTheTarget()
    {
        CreateDirtyGuest("stayer");
        var r = _source.Xl.Run(TimeSpan.FromMinutes(5), "migrate", "-s", SshScript(cutAfter: 4 << 20), "stayer", _target.Namespace);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("runs on here", r.Stderr);
        Assert.DoesNotContain("stayer", _target.Xl.Run("list").Stdout);
        Assert.Contains("stayer", _source.Xl.Run("list").Stdout);
        long before = LastTick(_source.ConsoleLog("stayer"));
        Assert.True(WaitUntil(() => LastTick(_source.ConsoleLog("stayer")) > before, TimeSpan.FromMinutes(2)),
            "the guest stopped ticking at the source\n" + _source.ConsoleLog("stayer"));
        Assert.DoesNotContain("FAIL", _source.ConsoleLog("stayer"));
        _source.Xl.Run("destroy", "stayer").Check();
    }

    [Fact]
    public void TargetThatNeverAcknowledgesLeavesTheSuspendedGuestResumedAtTheSource()
    {
        CreateDirtyGuest("resumer");
        var r = _source.Xl.Run(TimeSpan.FromMinutes(5), "migrate", "-s", SshScript(bannerOnly: true), "resumer", _target.Namespace);
        Assert.NotEqual(0, r.ExitCode);
        // The whole stream went, so the guest was suspended for its last pages: it must have been resumed.
        Assert.Contains("Suspended:", r.Stderr);
        Assert.Contains("Target failed to acknowledge", r.Stderr);
        Assert.True(WaitUntil(() => !_target.Xl.Run("list").Stdout.Contains("resumer"), TimeSpan.FromSeconds(30)),
            "the target kept a domain\n" + _target.Xl.Run("list"));
        long before = LastTick(_source.ConsoleLog("resumer"));
        Assert.True(WaitUntil(() => LastTick(_source.ConsoleLog("resumer")) > before, TimeSpan.FromMinutes(2)),
            "the guest did not run on at the source\n" + r + _source.ConsoleLog("resumer"));
        Assert.DoesNotContain("FAIL", _source.ConsoleLog("resumer"));
        _source.Xl.Run("destroy", "resumer").Check();
    }

    /// <summary>The issue's own check of everything a guest keeps across a move: a Debian guest counts, writes each
    /// number to its disk (flushed) and then sends it with its uptime and wall-clock second over one TCP connection to
    /// a listener on the source host. It is saved and restored, then migrated to the other host (one L2 segment: a
    /// bridge on each, joined by a veth pair). Afterwards the listener has every number once and in order on the same
    /// connection, the guest's uptime and clock never went backwards, and the disk holds at least the last number
    /// sent.</summary>
    [Fact, Trait("Feature", "xl save/restore")]
    public void DebianGuestKeepsItsTcpStreamDiskAndClockThroughSaveRestoreAndMigration()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        Assert.True(File.Exists("/etc/xen/scripts/vif-bridge"), "Xen's hotplug scripts (xen-utils-common) are not installed");
        foreach (var side in new[] { _source, _target })
        {
            InNamespace(side, "ip", "link", "add", "xenbr0", "type", "bridge").Check();
            InNamespace(side, "ip", "link", "set", "xenbr0", "up").Check();
        }
        InNamespace(_source, "ip", "addr", "add", "10.77.0.1/24", "dev", "xenbr0").Check();
        InNamespace(_source, "ip", "link", "add", "xsm-a", "type", "veth", "peer", "name", "xsm-b", "netns", _target.Namespace).Check();
        InNamespace(_source, "ip", "link", "set", "xsm-a", "master", "xenbr0", "up").Check();
        InNamespace(_target, "ip", "link", "set", "xsm-b", "master", "xenbr0", "up").Check();

        string numbers = Path.Combine(_dir, "numbers.txt");
        var listener = StartInNamespace(_source, "python3", "-c",
            "import socket,sys\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('10.77.0.1', 5010)); s.listen(4)\n" +
            $"out=open('{numbers}','ab',0)\nc,_=s.accept(); out.write(b'connected\\n')\n" +
            "while True:\n  b=c.recv(65536)\n  if not b: break\n  out.write(b)\nout.write(b'closed\\n')\n");
        string initrd = Path.Combine(_dir, "initrd.img");
        store.BuildInitramfs(initrd, GuestArtifacts.ShellInit, GuestArtifacts.XenModules);
        string disk = Path.Combine(_dir, "counter.img");
        File.WriteAllBytes(disk, new byte[8 << 20]);
        string save = Path.Combine(_dir, "counter.save");
        string cfg = WriteConfig(_source.Xl, store, "counter", ramdisk: initrd, memory: 256);
        File.AppendAllText(cfg, $"\ndisk = [ 'format=raw,vdev=xvda,access=rw,target={disk}' ]\nvif = [ 'mac=00:16:3e:5a:07:01,bridge=xenbr0' ]\n");
        try
        {
            using (var console = new ConsoleSession(_source.Xl.RunDir, "create", "-c", cfg))
            {
                console.WaitFor("~ # ", BootLimit);
                console.Ask("until [ -e /sys/block/xvda ] && [ -e /sys/class/net/eth0 ]; do sleep 1; done; " +
                    "ip link set eth0 up; ip addr add 10.77.0.10/24 dev eth0; echo up-e\"\"nd", "up-end", TimeSpan.FromMinutes(2));
                console.Ask("(i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); echo $i | dd of=/dev/xvda bs=512 count=1 conv=fsync 2>/dev/null; " +
                    "echo \"$i $(cut -d' ' -f1 /proc/uptime) $(date +%s)\"; sleep 0.2; done) | nc 10.77.0.1 5010 & echo loop-e\"\"nd", "loop-end");
                Assert.True(WaitUntil(() => Numbers(numbers).Count >= 5, TimeSpan.FromMinutes(2)), "the guest's numbers do not arrive\n" + Read(numbers));

                var saved = _source.Xl.Run(TimeSpan.FromMinutes(5), "save", "counter", save);
                Assert.True(saved.ExitCode == 0, saved + "\n" + _source.Xl.Run("dmesg").Stdout);
                Assert.True(console.WaitForExit(TimeSpan.FromMinutes(1)), "xl create -c did not return after the save");
            }
            int beforeRestore = Numbers(numbers).Count;
            var restored = _source.Xl.Run(TimeSpan.FromMinutes(5), "restore", save);
            Assert.True(restored.ExitCode == 0, restored + "\n" + _source.Xl.Run("dmesg").Stdout);
            Assert.True(WaitUntil(() => Numbers(numbers).Count >= beforeRestore + 5, TimeSpan.FromMinutes(2)),
                "no numbers after the restore\n" + Read(numbers) + _source.ConsoleLog("counter"));

            var moved = _source.Xl.Run(TimeSpan.FromMinutes(10), "migrate", "-s", SshScript(), "counter", _target.Namespace);
            Assert.True(moved.ExitCode == 0, moved + "\n" + _source.Xl.Run("dmesg").Stdout + "\n--- target\n" + _target.Xl.Run("dmesg").Stdout);
            int beforeMove = Numbers(numbers).Count;
            Assert.True(WaitUntil(() => Numbers(numbers).Count >= beforeMove + 5, TimeSpan.FromMinutes(2)),
                "no numbers after the migration\n" + Read(numbers) + _target.ConsoleLog("counter"));
            _target.Xl.Run("destroy", "counter").Check();

            string text = Read(numbers);
            Assert.StartsWith("connected\n", text);
            Assert.Equal(1, Regex.Matches(text, "connected").Count);
            var lines = Numbers(numbers);
            for (int k = 0; k < lines.Count; k++)
            {
                Assert.True(lines[k].N == k + 1, $"line {k + 1} carries number {lines[k].N}\n{text}");
                if (k > 0)
                {
                    Assert.True(lines[k].Uptime >= lines[k - 1].Uptime, $"the guest's uptime went back at {lines[k].N}\n{text}");
                    Assert.True(lines[k].Clock >= lines[k - 1].Clock, $"the guest's clock went back at {lines[k].N}\n{text}");
                }
            }
            // Each number was on the disk, flushed, before it was sent.
            string onDisk = Encoding.ASCII.GetString(File.ReadAllBytes(disk), 0, 16).Split('\n')[0];
            Assert.True(long.TryParse(onDisk, out long last) && last >= lines[^1].N, $"the disk holds '{onDisk}', the last number sent was {lines[^1].N}");
        }
        finally
        {
            _source.Xl.Run("destroy", "counter");
            _target.Xl.Run("destroy", "counter");
            try { listener.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            listener.Dispose();
        }
    }

    private static XlResult InNamespace(Side side, params string[] command) => Exec(["ip", "netns", "exec", side.Namespace, .. command]);

    private static Process StartInNamespace(Side side, params string[] command)
    {
        var psi = new ProcessStartInfo("ip") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in (string[])["netns", "exec", side.Namespace, .. command]) psi.ArgumentList.Add(a);
        var p = Process.Start(psi)!;
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

    private static string Read(string path)
    {
        try { return File.Exists(path) ? File.ReadAllText(path) : ""; }
        catch (IOException) { return ""; }
    }

    /// <summary>The complete "N UPTIME CLOCK" lines the listener has received so far.</summary>
    private static List<(long N, double Uptime, long Clock)> Numbers(string path) =>
        Read(path).Split('\n').SkipLast(1).Select(l => l.Split(' ')).Where(f => f.Length == 3)
            .Select(f => (long.Parse(f[0], System.Globalization.CultureInfo.InvariantCulture),
                double.Parse(f[1], System.Globalization.CultureInfo.InvariantCulture), long.Parse(f[2], System.Globalization.CultureInfo.InvariantCulture)))
            .ToList();

    /// <summary>Debian's kernel with a raw disk both hosts reach (shared storage, as migration wants): after xl migrate
    /// the same shell answers on the target's console with what it kept in RAM, the disk holds what it wrote before,
    /// and a write after the move reaches the image through the target's backend.</summary>
    [Fact, Trait("Feature", "x86/PVH")]
    public void DebianGuestCarriesOnAtTheTargetWithItsConsoleAndDisk()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        string initrd = Path.Combine(_dir, "initrd.img");
        store.BuildInitramfs(initrd, GuestArtifacts.ShellInit, GuestArtifacts.XenModules);
        string disk = Path.Combine(_dir, "shared.img");
        File.WriteAllBytes(disk, new byte[8 << 20]);
        string cfg = WriteConfig(_source.Xl, store, "deb", ramdisk: initrd, memory: 256);
        File.AppendAllText(cfg, $"\ndisk = [ 'format=raw,vdev=xvda,access=rw,target={disk}' ]\n");
        string marker = $"ram-{Guid.NewGuid():N}", onDisk = $"disk-{Guid.NewGuid():N}", after = $"after-{Guid.NewGuid():N}";
        try
        {
            using (var console = new ConsoleSession(_source.Xl.RunDir, "create", "-c", cfg))
            {
                console.WaitFor("~ # ", BootLimit);
                console.Ask("until [ -e /sys/block/xvda ]; do sleep 1; done; echo disk-e\"\"nd", "disk-end", TimeSpan.FromMinutes(2));
                console.Ask($"echo {marker} > /marker; echo {onDisk} | dd of=/dev/xvda bs=512 count=1 conv=fsync 2>/dev/null; echo written", "written");
                var r = _source.Xl.Run(TimeSpan.FromMinutes(10), "migrate", "-s", SshScript(), "deb", _target.Namespace);
                Assert.True(r.ExitCode == 0, r + "\n" + _source.Xl.Run("dmesg").Stdout + "\n--- target\n" + _target.Xl.Run("dmesg").Stdout);
                Assert.Contains("Migration successful.", r.Stderr);
                Assert.True(console.WaitForExit(TimeSpan.FromMinutes(1)), "xl create -c did not return after the domain left");
            }
            Assert.DoesNotContain("deb", _source.Xl.Run("list").Stdout);
            using (var console = new ConsoleSession(_target.Xl.RunDir, "console", "deb"))
            {
                console.Ask("cat /marker", marker + "\r\n~ # ", TimeSpan.FromMinutes(2));
                console.Ask("dd if=/dev/xvda bs=512 count=1 iflag=direct 2>/dev/null | head -n 1", onDisk + "\r\n", TimeSpan.FromMinutes(2));
                console.Ask($"echo {after} | dd of=/dev/xvda bs=512 seek=8 count=1 oflag=direct conv=fsync 2>/dev/null; echo again-e\"\"nd", "again-end", TimeSpan.FromMinutes(2));
            }
            byte[] image = File.ReadAllBytes(disk);
            Assert.Equal(onDisk, Encoding.ASCII.GetString(image, 0, onDisk.Length));
            Assert.Equal(after, Encoding.ASCII.GetString(image, 4096, after.Length));
        }
        finally
        {
            _source.Xl.Run("destroy", "deb");
            _target.Xl.Run("destroy", "deb");
        }
    }
}
