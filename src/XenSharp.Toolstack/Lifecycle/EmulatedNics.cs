using System.Globalization;
using XenSharp.Backends.Xenbus;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// The emulated half of an HVM guest's nics (libxl's nictype vif_ioemu, the default for HVM): besides its PV vif, each
/// nic is a NIC of QEMU's (<c>model=</c>, rtl8139 unless given) on a TAP device named <c>vifD.N-emu</c>, which QEMU
/// makes and the nic's hotplug script puts on the bridge once QEMU runs (<c>SCRIPT add type_if=tap</c> with INTERFACE,
/// as libxl runs it a second time for such nics). Firmware (iPXE) and guests without PV drivers use it; Linux's
/// xen-platform-pci unplugs it and netfront takes the PV vif. A user-mode nic (passt) has no emulated half: Debian's
/// QEMU for Xen has no user-mode network of its own.
/// </summary>
public sealed partial class Host
{
    /// <summary>libxl's default model for an emulated NIC.</summary>
    private const string DefaultNicModel = "rtl8139";

    /// <summary>Whether the nic also gets a NIC in the domain's QEMU.</summary>
    private static bool IsEmulatedNic(DomainConfig c, NicSpec nic) =>
        HasDeviceModel(c) && (nic.Type ?? "ioemu") == "ioemu" && !IsUserMode(nic);

    /// <summary>libxl__device_nic_devname for vif_ioemu: the TAP device QEMU makes for the emulated NIC.</summary>
    internal static string EmulatedNicName(uint domId, int devid) =>
        string.Create(CultureInfo.InvariantCulture, $"vif{domId}.{devid}-emu");

    /// <summary>The NICs' arguments of QEMU's command line as libxl gives them to qemu-xen, or <c>-net none</c>.</summary>
    private static void AddEmulatedNicArgs(Domain dom, List<string> args)
    {
        bool any = false;
        foreach (var nic in dom.Config.Nics)
        {
            if (!IsEmulatedNic(dom.Config, nic)) continue;
            any = true;
            string id = nic.Devid.ToString(CultureInfo.InvariantCulture);
            args.Add("-device");
            args.Add($"{nic.Model ?? DefaultNicModel},id=nic{id},netdev=net{id},mac={nic.Mac}");
            args.Add("-netdev");
            args.Add($"type=tap,id=net{id},ifname={EmulatedNicName(dom.DomId, nic.Devid)},br={BridgeOf(nic)},script=no,downscript=no");
        }
        if (!any)
            args.AddRange(["-net", "none"]);
    }

    /// <summary>Once QEMU runs: each emulated NIC's TAP device goes on its bridge through the nic's script.</summary>
    private void AttachEmulatedNics(Domain dom)
    {
        foreach (var nic in dom.Config.Nics)
            if (IsEmulatedNic(dom.Config, nic))
                RunHotplug(new DeviceAddress(DeviceKinds.Vif, dom.DomId, nic.Devid), nic, "add", emulated: true);
    }

    /// <summary>At destruction, the script's <c>remove</c> for each emulated NIC's TAP device, best effort.</summary>
    private void DetachEmulatedNic(Domain d, NicSpec nic)
    {
        if (!IsEmulatedNic(d.Config, nic)) return;
        try { RunHotplug(new DeviceAddress(DeviceKinds.Vif, d.DomId, nic.Devid), nic, "remove", emulated: true); }
        catch (ControlException e) { _hv.ConsoleWrite($"d{d.DomId}: vif {nic.Devid} (emulated): {e.Message}"); }
    }
}
