using System.Globalization;
using System.Text.Json.Nodes;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// The display part of an HVM domain's device model, as libxl gives it to qemu-xen: the VNC server (<c>-vnc</c>,
/// listening where vnclisten and vncdisplay say, trying 99 further displays with vncunused, with a password set over QMP
/// once QEMU runs), no display backend but SDL when asked, the graphics card as a PCI device with its memory
/// (<c>-device VGA</c> or <c>cirrus-vga</c>, <c>vgamem_mb</c>), and USB with its <c>-usbdevice</c>s. Once QEMU runs,
/// where its VNC server listens goes to the guest's <c>console/vnc-listen</c> and <c>console/vnc-port</c> in
/// xenstore, which <c>xl vncviewer</c> reads.
/// </summary>
public sealed partial class Host
{
    /// <summary>-vnc (or -vnc none), -display none, and -display sdl and -k keymap when asked.</summary>
    internal static List<string> DisplayBackendArgs(HvmDisplay d)
    {
        var args = new List<string>();
        if (d.Vnc)
        {
            string vnc = d.VncListen.Contains(':') ? d.VncListen
                : $"{d.VncListen}:{d.VncDisplay.ToString(CultureInfo.InvariantCulture)}";
            if (d.VncPasswd is { Length: > 0 })
                vnc += ",password=on";
            // QEMU takes "to=" only as the last of the VNC options.
            if (d.VncUnused)
                vnc += ",to=99";
            args.AddRange(["-vnc", vnc]);
        }
        else
            args.AddRange(["-vnc", "none"]);
        args.AddRange(["-display", "none"]);
        if (d.Sdl)
            args.AddRange(["-display", "sdl"]);
        if (d.Keymap is { Length: > 0 } keymap)
            args.AddRange(["-k", keymap]);
        return args;
    }

    /// <summary>-nographic when nothing displays, then the graphics card with its memory.</summary>
    internal static List<string> GraphicsCardArgs(HvmDisplay d)
    {
        var args = new List<string>();
        if (d.Nographic && !d.Sdl && !d.Vnc)
            args.Add("-nographic");
        string mb = (d.VideoRamKb / 1024).ToString(CultureInfo.InvariantCulture);
        switch (d.Vga)
        {
            case VgaKind.Std: args.AddRange(["-device", $"VGA,vgamem_mb={mb}"]); break;
            case VgaKind.Cirrus: args.AddRange(["-device", $"cirrus-vga,vgamem_mb={mb}"]); break;
        }
        return args;
    }

    /// <summary>usb=1 or any usbdevice: QEMU's USB controller and the named devices on it.</summary>
    internal static List<string> UsbArgs(HvmDisplay d)
    {
        var args = new List<string>();
        if (!d.Usb && d.UsbDevices.Count == 0)
            return args;
        args.Add("-usb");
        foreach (string device in d.UsbDevices)
            args.AddRange(["-usbdevice", device]);
        return args;
    }

    /// <summary>What libxl_vncviewer_exec reads: the port QEMU's VNC server took, where it listens, and the password.</summary>
    private VncDisplay VncDisplayOf(Domain dom)
    {
        string path = $"/local/domain/{dom.DomId}/console";
        if (!int.TryParse(_xs.Read($"{path}/vnc-port"), NumberStyles.None, CultureInfo.InvariantCulture, out int port))
            throw new ControlException($"domain {dom.DomId}: Cannot get vnc-port");
        return new VncDisplay(_xs.Read($"{path}/vnc-listen") ?? "localhost", port, dom.Config.Display.VncPasswd);
    }

    /// <summary>libxl's device_model_postconfig: where the VNC server listens goes to xenstore, and its password to
    /// QEMU. A QEMU that does not answer fails the domain's creation as a device model that did not start would.</summary>
    private void ConfigureDisplay(Domain dom)
    {
        var d = dom.Config.Display;
        if (!d.Vnc)
            return;
        using var qmp = Qmp.Connect(QmpSocketPath(dom.DomId), QemuProcess.StartTimeout);
        var vnc = qmp.Execute("query-vnc");
        if (vnc?["host"]?.GetValue<string>() is { } host && vnc["service"]?.GetValue<string>() is { } port)
        {
            _xs.Write($"/local/domain/{dom.DomId}/console/vnc-listen", host);
            _xs.Write($"/local/domain/{dom.DomId}/console/vnc-port", port);
        }
        if (d.VncPasswd is { Length: > 0 } passwd)
            qmp.Execute("change-vnc-password", new JsonObject { ["password"] = passwd });
    }
}
