namespace XenSharp.Toolstack.Config;

/// <summary>libxl_vga_interface_type: the emulated graphics card of an HVM domain (qxl is not offered).</summary>
public enum VgaKind { None, Cirrus, Std }

/// <summary>
/// An HVM domain's emulated display and input (libxl's hvm.vga, video_memkb, hvm.vnc, hvm.sdl, hvm.usb and
/// hvm.usbdevice as xl's parse_config_data fills them and libxl__domain_build_info_setdefault completes them for
/// qemu-xen): cirrus with 8 MiB unless <c>vga</c> or <c>stdvga</c> says otherwise (stdvga 16 MiB), and a VNC server on
/// 127.0.0.1 trying displays upwards from <c>vncdisplay</c> unless <c>vnc=0</c>.
/// </summary>
public sealed record HvmDisplay
{
    public VgaKind Vga { get; init; } = VgaKind.Cirrus;
    /// <summary>The card's memory (libxl's video_memkb), taken out of the domain's memory target for QEMU to populate.</summary>
    public long VideoRamKb { get; init; } = 8 * 1024;
    public bool Vnc { get; init; } = true;
    /// <summary>vnclisten: an address, or address:display (then vncdisplay must be 0).</summary>
    public string VncListen { get; init; } = "127.0.0.1";
    public int VncDisplay { get; init; }
    /// <summary>vncunused: QEMU tries the next 99 displays when the first is taken.</summary>
    public bool VncUnused { get; init; } = true;
    public string? VncPasswd { get; init; }
    public bool Sdl { get; init; }
    public string? Keymap { get; init; }
    public bool Nographic { get; init; }
    public bool Usb { get; init; }
    /// <summary>usbdevice: QEMU's -usbdevice names (tablet, mouse, keyboard).</summary>
    public IReadOnlyList<string> UsbDevices { get; init; } = [];

    /// <summary>The keys <see cref="Read"/> consumes.</summary>
    public static readonly string[] Keys =
        ["vga", "stdvga", "videoram", "vnc", "vnclisten", "vncdisplay", "vncunused", "vncpasswd", "sdl", "keymap", "nographic", "usb", "usbdevice"];

    /// <summary>The display of an HVM domain's configuration, with libxl's defaults and checks.</summary>
    public static HvmDisplay Read(XlConfig cfg)
    {
        var vga = VgaKind.Cirrus;
        if (cfg.GetString("vga") is { } v)
            vga = v switch
            {
                "stdvga" => VgaKind.Std,
                "cirrus" => VgaKind.Cirrus,
                "none" => VgaKind.None,
                "qxl" => throw At(cfg, "vga", "vga=\"qxl\" is not supported"),
                _ => throw At(cfg, "vga", $"Unknown vga \"{v}\" specified"),
            };
        else if (cfg.GetLong("stdvga") is { } std)
            vga = std != 0 ? VgaKind.Std : VgaKind.Cirrus;

        long minKb = vga switch { VgaKind.Std => 16 * 1024, VgaKind.Cirrus => 8 * 1024, _ => 0 };
        long videoKb = minKb;
        if (cfg.GetLong("videoram") is { } mb)
        {
            videoKb = mb * 1024;
            if (videoKb < minKb)
                throw At(cfg, "videoram", $"videoram must be at least {minKb / 1024} MB for {(vga == VgaKind.Std ? "STDVGA" : "CIRRUS")} on QEMU_XEN");
        }

        bool vnc = cfg.GetBool("vnc") ?? true;
        string listen = cfg.GetString("vnclisten") ?? "127.0.0.1";
        long display = cfg.GetLong("vncdisplay") ?? 0;
        if (display is < 0 or > 65535 - 5900)
            throw At(cfg, "vncdisplay", $"vncdisplay {display} is out of range");
        if (vnc && display != 0 && listen.Contains(':'))
            throw At(cfg, "vncdisplay", "vncdisplay set, vnclisten contains display");

        var usbDevices = cfg.GetStringList("usbdevice") ?? [];
        return new HvmDisplay
        {
            Vga = vga,
            VideoRamKb = videoKb,
            Vnc = vnc,
            VncListen = listen,
            VncDisplay = (int)display,
            VncUnused = cfg.GetBool("vncunused") ?? true,
            VncPasswd = cfg.GetString("vncpasswd"),
            Sdl = cfg.GetBool("sdl") ?? false,
            Keymap = cfg.GetString("keymap"),
            Nographic = cfg.GetBool("nographic") ?? false,
            Usb = cfg.GetBool("usb") ?? false,
            UsbDevices = usbDevices,
        };
    }

    private static XlConfigException At(XlConfig cfg, string key, string what)
    {
        var s = cfg.Find(key)!;
        return XlConfigException.At(s.File, s.Line, what);
    }
}
