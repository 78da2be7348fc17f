using System.Buffers.Binary;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace XenSharp.Integration.Tests;

/// <summary>
/// xl save and xl restore of Debian's kernel as a PVHVM guest with QEMU as its device model (hvmloader, SeaBIOS, a
/// grub-mkrescue CD, a raw disk as hda that blkfront serves once Linux unplugged the emulated one), as libxl does it:
/// the guest suspends through xenstore, QEMU stops and saves its devices' state, and the file carries the libxc
/// stream with the HVM context (the platform's interrupt wiring among it) and libxl's EMULATOR_CONTEXT record, which
/// Xen's verify-stream-v2 accepts; a save that cannot write its file lets QEMU go on and the guest resume. Files
/// whose emulator record is cut short or names an unknown emulator are refused with no domain or QEMU left. The
/// restore starts a new QEMU with the saved state (-incoming) and unpauses the guest once it runs: the same shell
/// answers on the serial port of the new QEMU, a file written to the RAM-backed root before the save is there, what
/// was written to the disk before is read back, and the disk takes new writes. Then xl migrate to the same host moves
/// it live, its QEMU's state after the last pages, into a new domain with a new QEMU, where blkfront connects again,
/// and that domain is saved and restored with its shell, RAM and disk. The guest is booted once for the class; the
/// tests run in the order written.
/// </summary>
[TestCaseOrderer("XenSharp.Integration.Tests.LinuxPvhvmSaveRestoreTests+Order", "XenSharp.Integration.Tests")]
public sealed class LinuxPvhvmSaveRestoreTests(LinuxPvhvmSaveRestoreTests.Guest guest) : IClassFixture<LinuxPvhvmSaveRestoreTests.Guest>
{
    private static readonly TimeSpan IoLimit = TimeSpan.FromMinutes(5);

    [Fact]
    [Trait("Feature", "xl save/restore"), Trait("Feature", "x86/PVHVM"), Trait("Feature", "x86/HVM")]
    public void SaveWritesQemusStateAfterTheLibxcStream()
    {
        guest.Serial.Ask($"echo {guest.Marker} > /marker; echo written-$?-e\"\"nd", "written-0-end");
        // A sector of the disk, through blkfront, flushed to the backend before the save.
        guest.Serial.Ask($"echo {guest.Marker} | dd of=/dev/xvda bs=512 seek=1000 conv=sync 2>/dev/null && sync; echo dd-$?-e\"\"nd", "dd-0-end", IoLimit);
        string qemu = guest.XenstoreRead($"/local/domain/0/libxl/{guest.DomId}/dm-pid");

        // A save that cannot write its file, after QEMU stopped and saved its state: QEMU is told to go on (cont) and
        // the guest resumes where it was, its suspend cancelled; its serial port (QEMU's UART) answers again.
        var failed = guest.Xl(TimeSpan.FromMinutes(10), "save", "hvmsr", Path.Combine(guest.RunDir, "no-such-dir", "hvmsr.save"));
        Assert.True(failed.ExitCode != 0, failed.ToString());
        Assert.Contains("the domain was resumed", failed.Stderr);
        Assert.Contains("c-42-end", guest.Serial.Ask("echo c-$((6*7))-e\"\"nd", "-end", TimeSpan.FromMinutes(3)));
        Assert.Empty(Directory.GetFiles(guest.RunDir, "qemu-save.*"));

        var save = guest.Xl(TimeSpan.FromMinutes(10), "save", "hvmsr", guest.SaveFile);
        Assert.True(save.ExitCode == 0, save + "\n" + guest.Xl("dmesg").Stdout);
        Assert.DoesNotContain("hvmsr", guest.Xl("list").Stdout);
        Assert.True(XlHost.WaitUntil(() => !Directory.Exists($"/proc/{qemu}"), TimeSpan.FromSeconds(30)), "the saved domain's QEMU still runs");

        var (rc, output) = XlSaveRestoreTests.Verify(guest.SaveFile);
        Assert.True(rc == 0, output);
        Assert.Contains("Emulator context", output);
        Assert.Contains("Qemu Upstream", output);
        // QEMU's own save format (QEVM) follows the emulator header.
        Assert.True(EmulatorContextAt(File.ReadAllBytes(guest.SaveFile)) > 0, "no QEMU state in the file");
    }

    [Fact]
    [Trait("Feature", "xl save/restore"), Trait("Feature", "x86/HVM")]
    public void AFileWithACutOrUnknownEmulatorRecordIsRefusedWithNothingLeft()
    {
        byte[] good = File.ReadAllBytes(guest.SaveFile);
        int record = EmulatorContextAt(good);
        Assert.True(record > 0, "no emulator context record in the saved file");

        string cut = Path.Combine(guest.RunDir, "cut.save");
        File.WriteAllBytes(cut, good[..(record + 16 + 100)]);
        string unknown = Path.Combine(guest.RunDir, "unknown.save");
        byte[] u = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(u.AsSpan(record + 8), 7);
        File.WriteAllBytes(unknown, u);
        string shortRecord = Path.Combine(guest.RunDir, "short.save");
        // An emulator context record of 4 bytes: too short for its emulator header; END after it.
        byte[] s = [.. good[..record], 3, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        File.WriteAllBytes(shortRecord, s);

        foreach (var (file, why) in new[] { (cut, "truncated"), (unknown, "unknown emulator 0x7"), (shortRecord, "too short for its emulator header") })
        {
            var r = guest.Xl(TimeSpan.FromMinutes(10), "restore", file);
            Assert.True(r.ExitCode != 0, $"{file} was restored:\n{r}");
            Assert.True((r.Stdout + r.Stderr).Contains(why, StringComparison.Ordinal), $"{why} not said:\n{r}");
            Assert.DoesNotContain("hvmsr", guest.Xl("list").Stdout);
        }
        // None of the refused restores started a QEMU.
        Assert.Equal(1, System.Text.RegularExpressions.Regex.Matches(guest.DaemonLog(), "device model QEMU running").Count);
        Assert.Empty(Directory.GetFiles(guest.RunDir, "qemu-resume.*"));
    }

    [Fact]
    [Trait("Feature", "xl save/restore"), Trait("Feature", "x86/PVHVM"), Trait("Feature", "x86/HVM"), Trait("Feature", "Blkfront")]
    public void RestoreBringsBackTheShellAndItsDisk()
    {
        var restore = guest.Xl(TimeSpan.FromMinutes(10), "restore", guest.SaveFile);
        Assert.True(restore.ExitCode == 0, restore + "\n" + guest.Xl("dmesg").Stdout);
        guest.Reattach();
        Assert.Equal("running", guest.XenstoreRead($"/local/domain/0/device-model/{guest.DomId}/state"));

        Assert.Contains("v-42-end", guest.Serial.Ask("echo v-$((6*7))-e\"\"nd", "-end", TimeSpan.FromMinutes(3)));
        Assert.Contains(guest.Marker, guest.Serial.Ask("cat /marker; echo cat-e\"\"nd", "cat-end"));
        // blkfront reconnected to the new domain's backend: the sector written before the save, read again from the
        // disk (the page cache dropped), and a new one that reaches the file.
        string old = guest.Serial.Ask("sync; echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/xvda bs=512 skip=1000 count=1 2>/dev/null | head -c 40; echo; echo rd-e\"\"nd", "rd-end", IoLimit);
        Assert.Contains(guest.Marker, old);
        guest.Serial.Ask("echo after-restore | dd of=/dev/xvda bs=512 seek=1001 conv=sync 2>/dev/null && sync; echo wr-$?-e\"\"nd", "wr-0-end", IoLimit);
        var disk = File.ReadAllBytes(guest.DiskPath);
        Assert.StartsWith("after-restore", System.Text.Encoding.ASCII.GetString(disk, 1001 * 512, 13));
        Assert.StartsWith(guest.Marker, System.Text.Encoding.ASCII.GetString(disk, 1000 * 512, guest.Marker.Length));
    }

    [Fact]
    [Trait("Feature", "xl migrate"), Trait("Feature", "x86/PVHVM"), Trait("Feature", "x86/HVM")]
    public void MigrationToThisHostMovesTheGuestWithItsQemuState()
    {
        string before = guest.DomId;
        string qemu = guest.XenstoreRead($"/local/domain/0/libxl/{before}/dm-pid");
        var r = guest.Xl(TimeSpan.FromMinutes(10), "migrate", "-s", guest.SshScript(), "hvmsr", "localhost");
        Assert.True(r.ExitCode == 0, r + "\n" + guest.Xl("dmesg").Stdout);
        Assert.Contains("Migration successful.", r.Stderr);
        string after = guest.Xl("domid", "hvmsr").Stdout.Trim();
        Assert.NotEqual(before, after);
        Assert.True(XlHost.WaitUntil(() => !Directory.Exists($"/proc/{qemu}"), TimeSpan.FromSeconds(30)), "the source domain's QEMU still runs");
        Assert.Equal("running", guest.XenstoreRead($"/local/domain/0/device-model/{after}/state"));
        // The serial socket is gone: the source's QEMU unlinked its path, which the target's had bound again, as it
        // does on Xen. The guest shows itself through its frontend, which connects to the new domain's backend after
        // the resume, and through a save and restore of the migrated domain, whose QEMU binds the socket again.
        Assert.True(XlHost.WaitUntil(() => guest.XenstoreRead($"/local/domain/{after}/device/vbd/768/state") == "4", TimeSpan.FromMinutes(3)),
            "blkfront did not connect in the new domain: state " + guest.XenstoreRead($"/local/domain/{after}/device/vbd/768/state"));
        string file = Path.Combine(guest.RunDir, "migrated.save");
        var save = guest.Xl(TimeSpan.FromMinutes(10), "save", "hvmsr", file);
        Assert.True(save.ExitCode == 0, save + "\n" + guest.Xl("dmesg").Stdout);
        var restore = guest.Xl(TimeSpan.FromMinutes(10), "restore", file);
        Assert.True(restore.ExitCode == 0, restore + "\n" + guest.Xl("dmesg").Stdout);
        guest.Reattach();
        Assert.Contains("m-42-end", guest.Serial.Ask("echo m-$((6*7))-e\"\"nd", "-end", TimeSpan.FromMinutes(3)));
        Assert.Contains(guest.Marker, guest.Serial.Ask("cat /marker; echo cat-e\"\"nd", "cat-end"));
        string disk = guest.Serial.Ask("sync; echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/xvda bs=512 skip=1001 count=1 2>/dev/null | head -c 20; echo; echo rd-e\"\"nd", "rd-end", IoLimit);
        Assert.Contains("after-restore", disk);
    }

    /// <summary>Where the EMULATOR_CONTEXT record starts: its body is the emulator header and QEMU's save file, which
    /// begins with QEMU_VM_FILE_MAGIC ("QEVM") and version 3.</summary>
    private static int EmulatorContextAt(byte[] file)
    {
        byte[] magic = [(byte)'Q', (byte)'E', (byte)'V', (byte)'M', 0, 0, 0, 3];
        int at = file.AsSpan().LastIndexOf(magic);
        if (at < 16) return -1;
        int record = at - 16;
        return BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(record)) == 3 ? record : -1;
    }

    /// <summary>Runs the class's tests in the order they are written: they share one guest's life.</summary>
    public sealed class Order() : DeclaredOrder(
        nameof(SaveWritesQemusStateAfterTheLibxcStream),
        nameof(AFileWithACutOrUnknownEmulatorRecordIsRefusedWithNothingLeft),
        nameof(RestoreBringsBackTheShellAndItsDisk),
        nameof(MigrationToThisHostMovesTheGuestWithItsQemuState));

    /// <summary>The guest of the class, booted once: the Debian CD as hdc, a raw disk as hda, its serial port on a
    /// Unix socket QEMU serves.</summary>
    public sealed class Guest : IDisposable
    {
        private const int DiskBytes = 4 << 20;
        private static readonly TimeSpan BootLimit = TimeSpan.FromMinutes(12);
        private readonly XlHost _xl = new();

        public string RunDir => _xl.RunDir;
        public string DiskPath { get; }
        public string SaveFile => Path.Combine(_xl.RunDir, "hvmsr.save");
        public string Marker { get; } = $"state-{Guid.NewGuid():N}";
        internal SerialSocket Serial { get; private set; } = null!;
        public string DomId { get; private set; } = "";
        private string SocketPath => Path.Combine(_xl.RunDir, "serial.sock");

        public Guest()
        {
            var store = new XenSharp.Artifacts.GuestArtifacts();
            Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
            Assert.True(File.Exists("/usr/lib/grub/i386-pc/modinfo.sh") && File.Exists("/usr/bin/xorriso"),
                "grub-mkrescue needs grub-pc-bin, xorriso and mtools (scripts/install-deps.sh)");
            DiskPath = Path.Combine(_xl.RunDir, "disk.img");
            File.WriteAllBytes(DiskPath, new byte[DiskBytes]);
            string iso = GrubRescueImage.Debian(store, _xl.RunDir);
            try
            {
                string cfg = Path.Combine(_xl.RunDir, "hvmsr.cfg");
                File.WriteAllText(cfg, $"""
                    name = "hvmsr"
                    type = "hvm"
                    memory = 256
                    vcpus = 1
                    serial = "unix:{SocketPath},server=on,wait=off"
                    disk = [ "{iso},raw,hdc,cdrom", "{DiskPath},raw,hda,rw" ]
                    boot = "d"
                    on_crash = "preserve"
                    """);
                var created = _xl.Run(TimeSpan.FromMinutes(2), "create", cfg);
                Assert.True(created.ExitCode == 0, created.ToString());
                Reattach();
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        /// <summary>The domain's id and its QEMU's serial socket, then its shell with blkfront's disk.</summary>
        public void Reattach()
        {
            DomId = _xl.Run("domid", "hvmsr").Stdout.Trim();
            Serial?.Dispose();
            Serial = new SerialSocket(SocketPath, TimeSpan.FromSeconds(30));
            if (!_booted)
            {
                Serial.WaitFor("~ # ", BootLimit);
                _booted = true;
            }
            Serial.Ask("until [ -e /sys/block/xvda ]; do sleep 1; done; echo pv-e\"\"nd", "pv-end", TimeSpan.FromMinutes(3));
        }

        private bool _booted;

        public XlResult Xl(params string[] args) => _xl.Run(args);
        public XlResult Xl(TimeSpan limit, params string[] args) => _xl.Run(limit, args);

        public string XenstoreRead(string path) => _xl.RunDom0("xenstore-read", path).Stdout.Trim();

        /// <summary>An ssh stand-in that runs xl migrate-receive here, against the same daemon.</summary>
        public string SshScript()
        {
            string bin = XlHost.XlCommandDirectory(_xl.RunDir);
            string script = Path.Combine(_xl.RunDir, "ssh-local");
            File.WriteAllText(script, $"#!/bin/bash\nshift\nexec env XENSHARP_RUNDIR={_xl.RunDir} PATH={bin}:$PATH \"$@\"\n");
            File.SetUnixFileMode(script, (UnixFileMode)0b111_101_101);
            return script;
        }

        public string DaemonLog() => File.ReadAllText(Path.Combine(_xl.RunDir, "xensharpd.log"));

        public void Dispose()
        {
            _xl.Run("destroy", "hvmsr");
            Serial?.Dispose();
            _xl.Dispose();
        }
    }
}
