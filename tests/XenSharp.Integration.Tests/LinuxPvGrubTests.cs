using XenSharp.Artifacts;
using static XenSharp.Integration.Tests.LinuxPvhTests;

namespace XenSharp.Integration.Tests;

/// <summary>
/// `bootloader = "pygrub"` for a PV guest, as libxl runs it: Xen's own pygrub (Debian's xen-utils-4.17) reads the
/// grub.cfg of the guest's raw disk (<see cref="GrubBootDisk"/>: Debian's kernel and the shell initramfs) and hands
/// back the default entry's kernel, ramdisk and arguments, which the guest boots with. One boot.
/// </summary>
public sealed class LinuxPvGrubTests : IDisposable
{
    private const string Pygrub = "/usr/lib/xen-4.17/bin/pygrub";
    private readonly XlHost _xl = new();

    public void Dispose()
    {
        _xl.Run("destroy", "pvgrub");
        _xl.Dispose();
    }

    [Fact]
    [Trait("Feature", "x86/PV"), Trait("Feature", "xl")]
    public void PygrubBootsTheDefaultEntryOfTheDisksGrubCfg()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        Assert.True(File.Exists(Pygrub), "Xen's pygrub (xen-utils-4.17) is not installed");

        // The second entry is the default; the first would boot with other arguments and no initramfs.
        string image = GrubBootDisk.Make(store, _xl.RunDir, "boot.img", """
            set default=1
            set timeout=5
            menuentry 'Debian rescue' {
                linux /boot/vmlinuz console=hvc0 chosen-entry=rescue
            }
            menuentry 'Debian shell' {
                linux /boot/vmlinuz console=hvc0 chosen-entry=shell
                initrd /boot/initrd.img
            }
            """);

        string cfg = Path.Combine(_xl.RunDir, "pvgrub.cfg");
        File.WriteAllText(cfg, $"""
            name = "pvgrub"
            type = "pv"
            bootloader = "pygrub"
            extra = "from-config=1"
            disk = [ 'format=raw,vdev=xvda,access=rw,target={image}' ]
            memory = 512
            on_poweroff = "destroy"
            on_crash = "preserve"
            """);

        using var console = new ConsoleSession(_xl.RunDir, "create", "-c", cfg);
        string boot = console.WaitFor("~ # ", BootLimit);
        Assert.Contains("Hypervisor detected: Xen PV", boot);
        Assert.DoesNotContain("Kernel panic", boot);
        // The default entry's arguments, with the configuration's own appended as pygrub appends --args.
        string cmdline = console.Ask("echo cmdline-$(cat /proc/cmdline)-e\"\"nd", "-end");
        Assert.Contains("cmdline-console=hvc0 chosen-entry=shell from-config=1-end", cmdline);
        // The files pygrub wrote were read and removed.
        Assert.Empty(Directory.GetDirectories(_xl.RunDir, "bootloader.*"));
    }

    [Fact]
    [Trait("Feature", "x86/PV"), Trait("Feature", "xl")]
    public void ABootloaderThatFindsNoKernelFailsCreateAndLeavesNoDomain()
    {
        string image = Path.Combine(_xl.RunDir, "empty.img");
        Directory.CreateDirectory(Path.Combine(_xl.RunDir, "empty-tree"));
        LinuxPvDeviceTests.PvDeviceGuest.Tool("mkfs.ext4", "-q", "-F", "-d", Path.Combine(_xl.RunDir, "empty-tree"), image, "8M");
        string cfg = Path.Combine(_xl.RunDir, "nogrub.cfg");
        File.WriteAllText(cfg, $"""
            name = "nogrub"
            type = "pv"
            bootloader = "pygrub"
            disk = [ 'format=raw,vdev=xvda,access=rw,target={image}' ]
            memory = 64
            """);
        var r = _xl.Run("create", cfg);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("bootloader", r.Stderr);
        Assert.DoesNotContain("nogrub", _xl.Run("list").Stdout);
    }
}
