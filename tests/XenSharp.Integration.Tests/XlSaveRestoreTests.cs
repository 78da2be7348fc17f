using System.Diagnostics;

namespace XenSharp.Integration.Tests;

/// <summary>
/// xl save and xl restore of a PVH guest through the real xl against a private daemon: the suspend test kernel
/// suspends itself, is saved to a file that Xen's own verify-stream-v2 accepts, and restored; it then checks from
/// inside that its memory, registers and MSRs came back and that it runs in a new domain. Files that are
/// truncated, corrupted or of an unknown version are refused with a reason, and no domain is left behind.
/// </summary>
public sealed class XlSaveRestoreTests : IClassFixture<XlSaveRestoreTests.Host>
{
    public sealed class Host : IDisposable
    {
        public XlHost Xl { get; } = new();
        public string Dir { get; } = Directory.CreateTempSubdirectory("xensharp-save-").FullName;
        public void Dispose()
        {
            Xl.Dispose();
            try { Directory.Delete(Dir, recursive: true); } catch (IOException) { }
        }
    }

    public const string VerifyStream = "/usr/lib/xen-4.17/bin/verify-stream-v2";

    private readonly XlHost _xl;
    private readonly string _dir;

    public XlSaveRestoreTests(Host host) => (_xl, _dir) = (host.Xl, host.Dir);

    private static bool WaitUntil(Func<bool> condition, TimeSpan timeout) => XlHost.WaitUntil(condition, timeout);

    private string ConsoleLog(string name)
    {
        var path = Path.Combine(_xl.RunDir, "console", name + ".log");
        try { return File.Exists(path) ? File.ReadAllText(path) : ""; }
        catch (IOException) { return ""; }
    }

    /// <summary>Runs Xen's verify-stream-v2 on an xl save file: its exit status and output.</summary>
    public static (int ExitCode, string Output) Verify(string file)
    {
        var psi = new ProcessStartInfo(VerifyStream) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "-f", "xl", "-v", "-i", file }) psi.ArgumentList.Add(a);
        // Debian installs its python modules beside the tools, where Xen's wrapper scripts point python.
        psi.Environment["PYTHONPATH"] = "/usr/lib/xen-4.17/lib/python";
        using var p = Process.Start(psi)!;
        var output = p.StandardOutput.ReadToEndAsync();
        var error = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return (p.ExitCode, output.Result + error.Result);
    }

    /// <summary>Boots the suspend guest under <paramref name="name"/> and saves it; the file's path.</summary>
    private string CreateAndSave(string name)
    {
        Assert.True(File.Exists(Repository.PathOf("tests", "guests", "build", "suspend.elf")), "suspend.elf is not built (make -C tests/guests)");
        var r = _xl.Run("create", Repository.PathOf("tests", "guests", "suspend.cfg"), $"name=\"{name}\"");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.True(WaitUntil(() => ConsoleLog(name).Contains("# suspending"), TimeSpan.FromMinutes(3)), "the guest never got ready\n" + ConsoleLog(name));
        string file = Path.Combine(_dir, name + ".save");
        var save = _xl.Run(TimeSpan.FromMinutes(3), "save", name, file);
        Assert.True(save.ExitCode == 0, save.ToString());
        Assert.Contains($"Saving to {file} new xl format", save.Stderr);
        Assert.DoesNotContain(name, _xl.Run("list").Stdout);
        return file;
    }

    [Fact, Trait("Feature", "xl save/restore"), Trait("Feature", "x86/PVH")]
    public void SavedGuestVerifiesAndResumesInANewDomain()
    {
        string file = CreateAndSave("saved");
        Assert.True(File.Exists(VerifyStream), $"{VerifyStream} is missing (apt-get install xen-utils-4.17)");
        var (rc, output) = Verify(file);
        Assert.True(rc == 0, output);
        Assert.Contains("Libxl Header: little endian", output);
        Assert.Contains("Libxc Image Header: Version 3, little endian", output);
        Assert.Contains("Domain Header: x86 HVM", output);
        Assert.Contains("Libxc Record: HVM context", output);
        Assert.Contains("Libxc Record: HVM params", output);

        var restore = _xl.Run(TimeSpan.FromMinutes(3), "restore", file);
        Assert.True(restore.ExitCode == 0, restore.ToString());
        Assert.True(WaitUntil(() => ConsoleLog("saved").Contains("DONE"), TimeSpan.FromMinutes(3)), "the restored guest did not finish\n" + ConsoleLog("saved"));
        var log = ConsoleLog("saved");
        Assert.Contains("PASS suspend.resumed_in_new_domain", log);
        Assert.Contains("PASS suspend.memory", log);
        Assert.Contains("PASS suspend.msr_lstar", log);
        Assert.Contains("PASS suspend.callee_saved_r12", log);
        Assert.Contains("PASS suspend.mxcsr", log);
        Assert.Contains("PASS suspend.new_domid", log);
        Assert.Contains("failed=0", log);
    }

    /// <summary>A 32-bit PV (compat) guest: suspend32 pins an L1 of its own, publishes its p2m and suspends itself;
    /// the file is a 32-bit PV stream verify-stream-v2 accepts, and in the restored domain the guest finds its page
    /// tables holding its new frames (as its p2m, rewritten, says), its L1 still pinned, its data and counter kept. The
    /// file cut short is refused and leaves no domain.</summary>
    [Fact, Trait("Feature", "xl save/restore"), Trait("Feature", "x86/PV")]
    public void Pv32GuestIsSavedAndResumesWithItsPageTables()
    {
        Assert.True(File.Exists(Repository.PathOf("tests", "guests", "build", "suspend32.elf")), "suspend32.elf is not built (make -C tests/guests)");
        const string name = "saved32";
        var r = _xl.Run("create", Repository.PathOf("tests", "guests", "suspend32.cfg"), $"name=\"{name}\"");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.True(WaitUntil(() => ConsoleLog(name).Contains("# suspending"), TimeSpan.FromMinutes(3)), "the guest never got ready\n" + ConsoleLog(name));
        Assert.DoesNotContain("FAIL", ConsoleLog(name));
        string file = Path.Combine(_dir, name + ".save");
        try
        {
            var save = _xl.Run(TimeSpan.FromMinutes(3), "save", name, file);
            Assert.True(save.ExitCode == 0, save + "\n" + _xl.Run("dmesg").Stdout);
            var (rc, output) = Verify(file);
            Assert.True(rc == 0, output);
            Assert.Contains("Domain Header: x86 PV", output);
            Assert.Contains("32bit guest, 3 levels of pagetables", output);
            Assert.Contains("Libxc Record: x86 PV P2M frames", output);
            Assert.Contains("vcpu0 basic context", output);

            // Cut before its vCPU and shared_info records: refused, and the half-restored PV domain is gone.
            byte[] whole = File.ReadAllBytes(file);
            string cut = Path.Combine(_dir, name + "-cut.save");
            File.WriteAllBytes(cut, whole[..(whole.Length - 6000)]);
            var before = Domains();
            var refused = _xl.Run(TimeSpan.FromMinutes(3), "restore", cut);
            Assert.True(refused.ExitCode != 0, refused.ToString());
            Assert.Contains("truncated", refused.Stderr);
            Assert.Equal(before, Domains());

            var restore = _xl.Run(TimeSpan.FromMinutes(3), "restore", file);
            Assert.True(restore.ExitCode == 0, restore + "\n" + _xl.Run("dmesg").Stdout);
            Assert.True(WaitUntil(() => ConsoleLog(name).Contains("DONE"), TimeSpan.FromMinutes(3)), "the restored guest did not finish\n" + ConsoleLog(name));
            var log = ConsoleLog(name);
            Assert.Contains("PASS suspend32.resumed_in_new_domain", log);
            Assert.Contains("PASS suspend32.l1_entry_is_p2m_frame", log);
            Assert.Contains("PASS suspend32.l1_still_pinned", log);
            Assert.Contains("PASS suspend32.counter_goes_on", log);
            Assert.Contains("failed=0", log);
        }
        finally
        {
            _xl.Run("destroy", name);
        }
    }

    /// <summary>The file holds all the guest needs: another daemon (another hypervisor, xenstored and console
    /// backend) restores it.</summary>
    [Fact, Trait("Feature", "xl save/restore")]
    public void AnotherDaemonRestoresTheFile()
    {
        string file = CreateAndSave("moved");
        using var other = new XlHost();
        var r = other.Run(TimeSpan.FromMinutes(3), "restore", file);
        Assert.True(r.ExitCode == 0, r.ToString());
        string log = Path.Combine(other.RunDir, "console", "moved.log");
        string Log() { try { return File.Exists(log) ? File.ReadAllText(log) : ""; } catch (IOException) { return ""; } }
        Assert.True(WaitUntil(() => Log().Contains("DONE"), TimeSpan.FromMinutes(3)), "the restored guest did not finish\n" + Log());
        Assert.Contains("PASS suspend.memory", Log());
        Assert.Contains("failed=0", Log());
    }

    [Fact, Trait("Feature", "xl save/restore")]
    public void BadSaveFilesAreRefusedAndLeaveNoDomain()
    {
        string file = CreateAndSave("bad");
        byte[] good = File.ReadAllBytes(file);
        var before = Domains();

        void Refused(string what, byte[] content, string expected)
        {
            string path = Path.Combine(_dir, what + ".save");
            File.WriteAllBytes(path, content);
            var r = _xl.Run(TimeSpan.FromMinutes(2), "restore", path);
            Assert.True(r.ExitCode != 0, $"{what}: {r}");
            Assert.Contains(expected, r.Stderr);
            Assert.Equal(before, Domains());
        }

        Refused("truncated", good[..(good.Length / 2)], "truncated");
        Refused("garbage", "this is not a save file, not even close to one"u8.ToArray(), "not an xl save file");

        // The libxc image header's version field follows xl's header, the configuration and the libxl header.
        int libxc = IndexOf(good, [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, (byte)'X', (byte)'E', (byte)'N', (byte)'F']);
        Assert.True(libxc > 0);
        var unknown = (byte[])good.Clone();
        unknown[libxc + 15] = 9;
        Refused("version", unknown, "libxc stream version 9");

        var corrupt = (byte[])good.Clone();
        corrupt[libxc + 24 + 12 + 4] ^= 0x40; // the first record's length
        Refused("corrupt", corrupt, "corrupt");

        // The good file still restores after all that.
        var r = _xl.Run(TimeSpan.FromMinutes(3), "restore", file);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.True(WaitUntil(() => ConsoleLog("bad").Contains("DONE"), TimeSpan.FromMinutes(3)), ConsoleLog("bad"));
        Assert.Contains("failed=0", ConsoleLog("bad"));
    }

    /// <summary>The names and domids xl list shows.</summary>
    private string Domains() => string.Join(",", _xl.Run("list").Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Skip(1)
        .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).Select(f => $"{f[0]}:{f[1]}"));

    private static int IndexOf(byte[] haystack, byte[] needle)
    {
        for (int i = 0; i + needle.Length <= haystack.Length; i++)
            if (haystack.AsSpan(i, needle.Length).SequenceEqual(needle)) return i;
        return -1;
    }

    /// <summary>xl save -c: the guest (the dirty test kernel, which has no PV drivers and is suspended from outside)
    /// runs on where it was, and the file restores it as it was at the snapshot once the original is gone.</summary>
    [Fact, Trait("Feature", "xl save/restore")]
    public void CheckpointLeavesTheGuestRunningAndItsFileRestores()
    {
        Assert.True(File.Exists(Repository.PathOf("tests", "guests", "build", "dirty.elf")), "dirty.elf is not built (make -C tests/guests)");
        _xl.Run("create", Repository.PathOf("tests", "guests", "dirty.cfg"), "name=\"cp\"").Check();
        static int Ticks(string log) => log.Split('\n').Count(l => l.StartsWith("# tick ", StringComparison.Ordinal));
        try
        {
            Assert.True(WaitUntil(() => Ticks(ConsoleLog("cp")) >= 1, TimeSpan.FromMinutes(2)), "the guest never ticked\n" + ConsoleLog("cp"));
            string file = Path.Combine(_dir, "cp.save");
            var save = _xl.Run(TimeSpan.FromMinutes(3), "save", "-c", "cp", file);
            Assert.True(save.ExitCode == 0, save.ToString());
            Assert.Contains("cp", _xl.Run("list").Stdout);
            int before = Ticks(ConsoleLog("cp"));
            Assert.True(WaitUntil(() => Ticks(ConsoleLog("cp")) > before, TimeSpan.FromMinutes(2)), "the guest stopped after the checkpoint\n" + ConsoleLog("cp"));
            var (rc, output) = Verify(file);
            Assert.True(rc == 0, output);

            _xl.Run("destroy", "cp").Check();
            var restore = _xl.Run(TimeSpan.FromMinutes(3), "restore", file);
            Assert.True(restore.ExitCode == 0, restore.ToString());
            int restored = Ticks(ConsoleLog("cp"));
            Assert.True(WaitUntil(() => Ticks(ConsoleLog("cp")) > restored, TimeSpan.FromMinutes(2)), "the restored guest does not run\n" + ConsoleLog("cp"));
            Assert.DoesNotContain("FAIL", ConsoleLog("cp"));
        }
        finally
        {
            _xl.Run("destroy", "cp");
        }
    }

    /// <summary>xl create's command-line settings are part of the configuration a save records (xl saves the
    /// configuration the domain was built with): a guest given more memory there comes back with it.</summary>
    [Fact, Trait("Feature", "xl save/restore")]
    public void CommandLineSettingsOfCreateAreRecordedAndRestored()
    {
        Assert.True(File.Exists(Repository.PathOf("tests", "guests", "build", "dirty.elf")), "dirty.elf is not built (make -C tests/guests)");
        _xl.Run("create", Repository.PathOf("tests", "guests", "dirty.cfg"), "name=\"bigger\"", "memory=48").Check();
        Assert.True(WaitUntil(() => ConsoleLog("bigger").Contains("# tick"), TimeSpan.FromMinutes(3)), "the guest never ticked\n" + ConsoleLog("bigger"));
        string file = Path.Combine(_dir, "bigger.save");
        try
        {
            _xl.Run(TimeSpan.FromMinutes(3), "save", "bigger", file).Check();
            var r = _xl.Run(TimeSpan.FromMinutes(3), "restore", file);
            Assert.True(r.ExitCode == 0, r.ToString());
            var line = _xl.Run("list", "bigger").Stdout.Split('\n').Single(l => l.StartsWith("bigger", StringComparison.Ordinal));
            Assert.Equal("48", line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[2]);
        }
        finally
        {
            _xl.Run("destroy", "bigger");
        }
    }
}
