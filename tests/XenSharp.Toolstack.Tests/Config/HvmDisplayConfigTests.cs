using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Lifecycle;

namespace XenSharp.Toolstack.Tests.Config;

/// <summary>The firmware and display keys of an HVM domain, read as xl reads them and completed with libxl's defaults
/// for qemu-xen, and the QEMU arguments libxl makes of them.</summary>
public class HvmDisplayConfigTests
{
    private static DomainConfig Read(string extra) =>
        DomainConfigReader.Read(Parse(extra), hostCpus: 8).Config;

    private static XlConfig Parse(string extra)
    {
        var c = XlConfigParser.Parse("name = \"h\"\ntype = \"hvm\"\n" + extra, "/etc/xen/h.cfg");
        c.Directory = "/etc/xen";
        return c;
    }

    private static string Error(string extra) =>
        Assert.Throws<XlConfigException>(() => Read(extra)).Message;

    [Fact]
    [Trait("Feature", "x86/Emulated graphics (QEMU):")]
    public void AnHvmDomainGetsCirrusAndALocalVncServerByDefault()
    {
        var d = Read("").Display;
        Assert.Equal(VgaKind.Cirrus, d.Vga);
        Assert.Equal(8 * 1024, d.VideoRamKb);
        Assert.True(d.Vnc);
        Assert.True(d.VncUnused);
        Assert.Equal(["-vnc", "127.0.0.1:0,to=99", "-display", "none"], Host.DisplayBackendArgs(d));
        Assert.Equal(["-device", "cirrus-vga,vgamem_mb=8"], Host.GraphicsCardArgs(d));
        Assert.Empty(Host.UsbArgs(d));
    }

    [Fact]
    [Trait("Feature", "x86/Emulated graphics (QEMU):")]
    public void StdvgaAndVideoramFollowLibxlsMinimums()
    {
        Assert.Equal(["-device", "VGA,vgamem_mb=16"], Host.GraphicsCardArgs(Read("vga = \"stdvga\"\n").Display));
        Assert.Equal(["-device", "VGA,vgamem_mb=32"], Host.GraphicsCardArgs(Read("stdvga = 1\nvideoram = 32\n").Display));
        Assert.Equal(VgaKind.Cirrus, Read("stdvga = 0\n").Display.Vga);
        var none = Read("vga = \"none\"\nvnc = 0\n").Display;
        Assert.Equal(0, none.VideoRamKb);
        Assert.Empty(Host.GraphicsCardArgs(none));
        Assert.Equal(["-vnc", "none", "-display", "none"], Host.DisplayBackendArgs(none));
        Assert.Equal("/etc/xen/h.cfg:4: videoram must be at least 16 MB for STDVGA on QEMU_XEN", Error("vga = \"stdvga\"\nvideoram = 8\n"));
        Assert.Equal("/etc/xen/h.cfg:4: videoram must be at least 8 MB for CIRRUS on QEMU_XEN", Error("vga = \"cirrus\"\nvideoram = 4\n"));
        Assert.Equal("/etc/xen/h.cfg:3: Unknown vga \"ega\" specified", Error("vga = \"ega\"\n"));
    }

    [Fact]
    [Trait("Feature", "x86/Emulated graphics (QEMU):"), Trait("Feature", "x86/Emulated input (QEMU):")]
    public void VncSdlAndUsbKeysBecomeQemuArguments()
    {
        var d = Read("vnclisten = \"0.0.0.0\"\nvncdisplay = 3\nvncunused = 0\nvncpasswd = \"s3cret\"\nsdl = 1\nkeymap = \"de\"\n" +
            "usb = 1\nusbdevice = \"tablet\"\n").Display;
        Assert.Equal(["-vnc", "0.0.0.0:3,password=on", "-display", "none", "-display", "sdl", "-k", "de"], Host.DisplayBackendArgs(d));
        Assert.Equal(["-usb", "-usbdevice", "tablet"], Host.UsbArgs(d));
        Assert.Equal(["-usb", "-usbdevice", "mouse", "-usbdevice", "keyboard"],
            Host.UsbArgs(Read("usbdevice = [ \"mouse\", \"keyboard\" ]\n").Display));
        Assert.Equal(["-vnc", "[::1]:5,to=99", "-display", "none"], Host.DisplayBackendArgs(Read("vnclisten = \"[::1]:5\"\n").Display));
        Assert.Equal("/etc/xen/h.cfg:4: vncdisplay set, vnclisten contains display",
            Error("vnclisten = \"127.0.0.1:1\"\nvncdisplay = 2\n"));
        Assert.Equal(["-nographic"], Host.GraphicsCardArgs(Read("vnc = 0\nnographic = 1\nvga = \"none\"\n").Display));
        Assert.Empty(DomainConfigReader.Read(Parse("vga = \"stdvga\"\nvnc = 1\nusbdevice = \"tablet\"\n"), 8).Warnings);
    }

    [Fact]
    [Trait("Feature", "x86/HVM OVMF"), Trait("Feature", "x86/HVM BIOS")]
    public void BiosNamesSeabiosOrOvmfAsLibxlDoes()
    {
        Assert.Equal("ovmf", Read("bios = \"ovmf\"\n").Bios);
        Assert.Null(Read("").Bios);
        Assert.Equal("/etc/xen/OVMF.fd", Read("bios = \"ovmf\"\nbios_path_override = \"OVMF.fd\"\n").BiosPathOverride);
        Assert.Equal("/etc/xen/h.cfg:3: qemu-xen does not support bios=rombios.", Error("bios = \"rombios\"\n"));
        Assert.Equal("/etc/xen/h.cfg:3: ERROR: invalid value \"uefi\" for \"bios\"", Error("bios = \"uefi\"\n"));
    }
}
