namespace XenSharp.Integration.Tests;

/// <summary>
/// <c>bios = "ovmf"</c>: Debian's OVMF is hvmloader's "firmware" module, as libxl loads it. hvmloader finds
/// <c>hvmloader/bios = ovmf</c> in xenstore, copies the flash image below 4 GiB (and its reset vector to 0xF0000),
/// builds the ACPI and SMBIOS tables and an e820 for it and jumps to it. OVMF finds QEMU's IDE CD-ROM, and its boot
/// manager starts the EFI GRUB of an image made by <c>grub-mkrescue</c>, which prints on the serial port.
/// </summary>
public sealed class OvmfTests
{
    [Fact]
    [Trait("Feature", "x86/HVM"), Trait("Feature", "x86/HVM OVMF")]
    public void OvmfBootsAnEfiGrubFromTheCdRom()
    {
        Assert.True(File.Exists("/usr/share/ovmf/OVMF.fd"), "Debian's ovmf is not installed (scripts/install-deps.sh)");
        Assert.True(File.Exists("/usr/lib/grub/x86_64-efi/modinfo.sh") && File.Exists("/usr/bin/xorriso"),
            "grub-mkrescue needs grub-efi-amd64-bin, xorriso and mtools for an EFI image (scripts/install-deps.sh)");
        using var xl = new XlHost();

        string iso = GrubRescueImage.Make(xl.RunDir, "efi.iso", """
            serial --unit=0 --speed=115200
            terminal_input serial console
            terminal_output serial console
            echo "grub: started on $grub_platform $grub_cpu"
            sleep 600
            """);

        string serial = Path.Combine(xl.RunDir, "serial.txt");
        string cfg = Path.Combine(xl.RunDir, "ovmf.cfg");
        File.WriteAllText(cfg, $"""
            name = "ovmf"
            type = "hvm"
            bios = "ovmf"
            memory = 128
            vcpus = 1
            vga = "none"
            vnc = 0
            serial = "file:{serial}"
            disk = [ "{iso},raw,hdc,cdrom" ]
            boot = "d"
            on_crash = "preserve"
            """);
        var created = xl.Run(TimeSpan.FromMinutes(2), "create", cfg);
        Assert.True(created.ExitCode == 0, created.ToString());
        string domid = xl.Run("domid", "ovmf").Stdout.Trim();
        string Serial() => File.Exists(serial) ? File.ReadAllText(serial) : "";
        bool booted = XlHost.WaitUntil(() => Serial().Contains("grub: started on efi x86_64"), TimeSpan.FromMinutes(4));
        string log = xl.Run("dmesg").Stdout;
        Assert.True(booted, $"GRUB did not start under OVMF:\n{Serial()}\n--- xl dmesg ---\n{log}");

        Assert.Equal("ovmf", xl.RunDom0("xenstore-read", $"/local/domain/{domid}/hvmloader/bios").Stdout.Trim());
        foreach (var line in new[] { "System requested OVMF", "Loading OVMF ...", " ffe00000-ffffffff: Main BIOS", "Invoking OVMF ..." })
            Assert.Contains($"(d{domid}) {line}", log);
        Assert.Contains("BdsDxe: starting Boot0001 \"UEFI QEMU DVD-ROM QM00003 \"", Serial());
        Assert.Contains("ovmf", xl.Run("list").Stdout);
        // vnc = 0: no VNC server, so xl vncviewer has nothing to attach to.
        var viewer = xl.Run("vncviewer", "ovmf");
        Assert.NotEqual(0, viewer.ExitCode);
        Assert.Contains("Cannot get vnc-port", viewer.Stderr);
        Assert.Equal(0, xl.Run("destroy", "ovmf").ExitCode);
    }
}
