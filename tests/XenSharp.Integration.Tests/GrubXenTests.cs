using XenSharp.Artifacts;
using static XenSharp.Integration.Tests.LinuxPvhTests;

namespace XenSharp.Integration.Tests;

/// <summary>
/// GRUB for Xen (Debian's grub-xen-host images) as the guest's kernel: GRUB runs inside the domain on the PV
/// console, xenstore, grant tables and blkfront, reads /boot/grub/grub.cfg from the first disk
/// (<see cref="GrubBootDisk"/>) and boots the default entry's kernel and initramfs — as a PV guest by building the
/// new kernel's page tables itself and switching to them, as a PVH guest by its own 32-bit loader. One boot each.
/// </summary>
public sealed class GrubXenTests : IDisposable
{
    private const string GrubDir = "/usr/lib/grub-xen";
    private readonly XlHost _xl = new();
    private string? _name;

    public void Dispose()
    {
        if (_name is not null) _xl.Run("destroy", _name);
        _xl.Dispose();
    }

    /// <summary>Two entries, the second the default, so that the kernel's arguments show which one GRUB booted.</summary>
    private const string GrubCfg = """
        set default=1
        set timeout=1
        menuentry 'Debian rescue' {
            linux /boot/vmlinuz console=hvc0 chosen-entry=rescue
        }
        menuentry 'Debian shell' {
            echo 'grub: loading the shell entry'
            linux /boot/vmlinuz console=hvc0 chosen-entry=shell
            initrd /boot/initrd.img
        }
        """;

    [Fact]
    [Trait("Feature", "x86/PV"), Trait("Feature", "xl")]
    public void Grub64AsAPvKernelBootsDebianFromTheDisk() =>
        BootsTheDefaultEntry("grubpv64", "pv", "grub-x86_64-xen.bin", "Hypervisor detected: Xen PV");

    [Fact]
    [Trait("Feature", "x86/PVH"), Trait("Feature", "xl")]
    public void GrubPvhAsAPvhKernelBootsDebianFromTheDisk() =>
        BootsTheDefaultEntry("grubpvh", "pvh", "grub-i386-xen_pvh.bin", "Booting paravirtualized kernel on Xen PVH");

    /// <summary>GRUB's 32-bit PV image runs as a 32-bit PAE PV guest (the compat ABI): it reads the disk's grub.cfg,
    /// refuses Debian's 64-bit kernel as GRUB does on Xen (a 32-bit PV domain cannot become a 64-bit one), and boots the
    /// 32-bit PV test kernel from the same disk through its own page-table building, which then checks the compat
    /// ABI from inside and powers off.</summary>
    [Fact]
    [Trait("Feature", "x86/PV"), Trait("Feature", "xl")]
    public void Grub32AsA32BitPvKernelBootsA32BitKernelFromTheDisk()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        string kernel = Path.Combine(GrubDir, "grub-i386-xen.bin");
        Assert.True(File.Exists(kernel), $"{kernel}: Debian's grub-xen-host is not installed");
        string pvmmu32 = Repository.PathOf("tests", "guests", "build", "pvmmu32.elf");
        Assert.True(File.Exists(pvmmu32), "pvmmu32.elf is not built (make -C tests/guests)");

        // The 64-bit entry first: GRUB falls back to the second when it cannot load it.
        string image = GrubBootDisk.Make(store, _xl.RunDir, "boot32.img", """
            set default=0
            set fallback=1
            set timeout=1
            menuentry 'Debian (64-bit)' {
                linux /boot/vmlinuz console=hvc0
            }
            menuentry 'pvmmu32' {
                echo 'grub: loading the 32-bit kernel'
                linux /boot/pvmmu32
            }
            """, (pvmmu32, "pvmmu32"));
        string cfg = Path.Combine(_xl.RunDir, "grubpv32.cfg");
        File.WriteAllText(cfg, $"""
            name = "grubpv32"
            type = "pv"
            kernel = "{kernel}"
            disk = [ 'format=raw,vdev=xvda,access=rw,target={image}' ]
            memory = 256
            on_poweroff = "destroy"
            on_crash = "preserve"
            """);

        _name = "grubpv32";
        using var console = new ConsoleSession(_xl.RunDir, "create", "-c", cfg);
        console.WaitFor("GNU GRUB", TimeSpan.FromMinutes(3));
        console.WaitFor("incompatible architecture", TimeSpan.FromMinutes(5));
        console.WaitFor("grub: loading the 32-bit kernel", TimeSpan.FromMinutes(3));
        string report = console.WaitFor(" skipped=", TimeSpan.FromMinutes(3)) + console.WaitFor("\n", TimeSpan.FromSeconds(30));
        Assert.Contains("# guest pvmmu32 (32-bit PV)", report);
        Assert.DoesNotContain("FAIL ", report);
        Assert.Matches(@"DONE passed=[1-9][0-9]* failed=0", report);
        // The test kernel powered off; on_poweroff = "destroy" leaves nothing.
        Assert.True(console.WaitForExit(TimeSpan.FromMinutes(1)), "xl create -c did not end with the guest");
        Assert.DoesNotContain("grubpv32", _xl.Run("list").Stdout);
    }

    private void BootsTheDefaultEntry(string name, string type, string grub, string detected)
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        string kernel = Path.Combine(GrubDir, grub);
        Assert.True(File.Exists(kernel), $"{kernel}: Debian's grub-xen-host is not installed");

        string image = GrubBootDisk.Make(store, _xl.RunDir, "boot.img", GrubCfg);
        string cfg = Path.Combine(_xl.RunDir, name + ".cfg");
        File.WriteAllText(cfg, $"""
            name = "{name}"
            type = "{type}"
            kernel = "{kernel}"
            disk = [ 'format=raw,vdev=xvda,access=rw,target={image}' ]
            memory = 512
            on_poweroff = "destroy"
            on_crash = "preserve"
            """);

        _name = name;
        using var console = new ConsoleSession(_xl.RunDir, "create", "-c", cfg);
        console.WaitFor("GNU GRUB", TimeSpan.FromMinutes(3));
        console.WaitFor("grub: loading the shell entry", TimeSpan.FromMinutes(3));
        string boot = console.WaitFor("~ # ", BootLimit);
        Assert.Contains(detected, boot);
        Assert.DoesNotContain("Kernel panic", boot);
        // The kernel GRUB booted runs with the default entry's arguments, from the same disk through blkfront.
        string cmdline = console.Ask("echo cmdline-$(cat /proc/cmdline)-e\"\"nd", "-end");
        // (GRUB's x86 Linux loader, which the PVH image uses, puts BOOT_IMAGE= first; its Xen PV loader does not.)
        Assert.Contains("console=hvc0 chosen-entry=shell-end", cmdline);
        Assert.DoesNotContain("chosen-entry=rescue", cmdline);
    }
}
