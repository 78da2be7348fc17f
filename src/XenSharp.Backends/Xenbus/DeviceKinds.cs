namespace XenSharp.Backends.Xenbus;

/// <summary>
/// The PV device kinds as libxl names them in xenstore (device/KIND/ID in the frontend,
/// backend/KIND/DOMID/ID in the backend). A kind is served when <see cref="BackendRegistry"/> has a
/// backend for it; the others are names only, so a configuration can name them and the toolstack can
/// say which it cannot serve.
/// </summary>
public static class DeviceKinds
{
    public const string Console = "console", Vbd = "vbd", Qdisk = "qdisk", Vif = "vif", Vkbd = "vkbd", Vfb = "vfb",
        NineP = "9pfs", Pvcalls = "pvcalls", Vusb = "vusb", Qusb = "qusb", Vscsi = "vscsi", Vtpm = "vtpm",
        Vsnd = "vsnd", Vdispl = "vdispl";

    public static IReadOnlyList<string> All { get; } =
        [Console, Vbd, Qdisk, Vif, Vkbd, Vfb, NineP, Pvcalls, Vusb, Qusb, Vscsi, Vtpm, Vsnd, Vdispl];

    public static bool IsKnown(string kind) => All.Contains(kind);
}

/// <summary>Where a PV device lives in xenstore, as libxl lays it out.</summary>
public readonly record struct DeviceAddress(string Kind, uint FrontendId, int DevId, uint BackendId = 0)
{
    public string BackendPath => $"/local/domain/{BackendId}/backend/{Kind}/{FrontendId}/{DevId}";
    public string FrontendPath => $"/local/domain/{FrontendId}/device/{Kind}/{DevId}";
    /// <summary>Where xenbus_dev_error/xenbus_dev_fatal report a backend's failure: error/&lt;nodename&gt;/error
    /// under the backend domain's home.</summary>
    public string ErrorPath => $"/local/domain/{BackendId}/error/backend/{Kind}/{FrontendId}/{DevId}";

    public override string ToString() => $"{Kind}/{FrontendId}/{DevId}";
}
