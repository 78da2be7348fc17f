using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// An unmodified PC operating system boots as <c>type="hvm"</c>: a CD image made with <c>grub-mkrescue</c> from
/// Debian's kernel and a busybox initramfs is the domain's <c>hdc</c> CD-ROM, served by QEMU's IDE; hvmloader hands over
/// to SeaBIOS, SeaBIOS boots GRUB from the CD (<c>boot = "d"</c>), GRUB loads the kernel and initramfs from it through
/// QEMU, and Linux finds Xen as an HVM guest (PVHVM: the platform device, the callback vector) and reaches its shell,
/// all on QEMU's 16550 written to a file (<c>serial = "file:..."</c>).
/// </summary>
public sealed class LinuxHvmIsoTests
{
    private static readonly TimeSpan BootLimit = TimeSpan.FromMinutes(12);

    [Fact]
    [Trait("Feature", "x86/HVM"), Trait("Feature", "x86/HVM BIOS"), Trait("Feature", "Dom0 stable libraries")]
    public void DebianFromAGrubIsoBootsUnderSeabiosToAShellOnTheSerialPort()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        Assert.True(File.Exists("/usr/lib/grub/i386-pc/modinfo.sh") && File.Exists("/usr/bin/xorriso"),
            "grub-mkrescue needs grub-pc-bin, xorriso and mtools (scripts/install-deps.sh)");
        using var xl = new XlHost();

        string iso = GrubRescueImage.Debian(store, xl.RunDir);

        string serial = Path.Combine(xl.RunDir, "serial.txt");
        string cfg = Path.Combine(xl.RunDir, "iso.cfg");
        File.WriteAllText(cfg, $"""
            name = "iso"
            type = "hvm"
            memory = 256
            vcpus = 1
            serial = "file:{serial}"
            disk = [ "{iso},raw,hdc,cdrom" ]
            boot = "d"
            on_crash = "preserve"
            """);
        var created = xl.Run(TimeSpan.FromMinutes(2), "create", cfg);
        Assert.True(created.ExitCode == 0, created.ToString());
        string Serial() => File.Exists(serial) ? File.ReadAllText(serial) : "";
        bool up = XlHost.WaitUntil(() => Serial().Contains("built-in shell (ash)"), BootLimit);
        string log = xl.Run("dmesg").Stdout;
        Assert.True(up, $"no shell on the serial port:\n{Serial()}\n--- xl dmesg ---\n{log}");

        string domid = xl.Run("domid", "iso").Stdout.Trim();
        foreach (var line in new[] { "Invoking SeaBIOS ...", "DVD/CD [ata1-0: QEMU DVD-ROM ATAPI-4 DVD/CD]", "Booting from DVD/CD..." })
            Assert.Contains($"(d{domid}) {line}", log);
        string text = Serial();
        string[] stages =
        [
            "grub: loading Linux",
            "Linux version 6.1",
            "Hypervisor detected: Xen HVM",
            "Booting paravirtualized kernel on Xen HVM",
            "xen:events: Xen HVM callback vector for event delivery is enabled",
            "Run /init as init process",
            "init: Linux 6.1",
        ];
        int at = 0;
        foreach (var s in stages)
        {
            int i = text.IndexOf(s, at, StringComparison.Ordinal);
            Assert.True(i >= 0, $"'{s}' missing (or out of order) on the serial port:\n{text}");
            at = i;
        }
        Assert.Equal(0, xl.Run("destroy", "iso").ExitCode);
    }
}
