using XenSharp.Backends.Console;
using XenSharp.Backends.Xenbus;
using XenSharp.Store;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// The domain's devices, as libxl adds them: the primary console from the start info (its ring and port
/// come from the domain builder), and PV devices as xenstore directories that the backend of their kind
/// picks up (<see cref="BackendRegistry"/>).
/// </summary>
public sealed partial class Host
{
    private BackendRegistry? _backends;

    /// <summary>The served device kinds' backends, started with the first domain.</summary>
    internal BackendRegistry Backends
    {
        get
        {
            lock (_lock)
                return _backends ??= new BackendRegistry(_hv.Dom0Services, _xs, new BackendOptions
                {
                    ConsoleLogPath = (domId, devId) => Find(domId) is { } d ? _paths.ConsoleLog($"{d.Config.Name}-{devId}") : null,
                    ConsoleLogLimits = _consoleLogs,
                    DeviceStarted = a => { if (a.Kind == DeviceKinds.Vbd) _sysfs.Wake(); },
                });
        }
    }

    internal Domain? Find(uint domId)
    {
        lock (_lock) return _domains.GetValueOrDefault(domId);
    }

    /// <summary>Maps the console ring the builder placed at <paramref name="pfn"/> and binds the port offered for it.</summary>
    private void ConnectPrimaryConsole(Domain dom, ulong pfn, uint port) =>
        dom.PrimaryConsole = PrimaryConsole.Connect(Backends, dom.DomId, pfn, port, dom.Config.Name, _paths.ConsoleLog(dom.ArrivingAs ?? dom.Config.Name));

    /// <summary>Adds a PV device of a served kind to a domain (libxl__device_generic_add): its backend picks it up.</summary>
    internal DeviceAddress AddDevice(uint domId, string kind, int devId,
        IReadOnlyDictionary<string, string>? backendKeys = null, IReadOnlyDictionary<string, string>? frontendKeys = null)
    {
        if (!BackendRegistry.IsServed(kind))
            throw new ControlException($"no backend serves {kind} devices");
        _ = Backends;
        var a = new DeviceAddress(kind, domId, devId);
        DeviceLayout.Write(_xs, a, backendKeys, frontendKeys);
        return a;
    }

    /// <summary>The xl.cfg devices of a domain being built or restored: its disks, then its nics (whose hotplug
    /// scripts run here, so a failing one fails the build).</summary>
    private void AddDevices(Domain dom)
    {
        AddDisks(dom);
        AddNics(dom);
    }

    /// <summary>The console, the backends' directories of the domain's devices and their error nodes go.</summary>
    private void DisconnectDevices(Domain d)
    {
        d.PrimaryConsole?.Dispose();
        StopQdiskBackend(d.DomId);
        StopDeviceModel(d.DomId);
        RemoveNics(d);
        BackendRegistry? b;
        lock (_lock) b = _backends;
        b?.RemoveDevicesOf(d.DomId);
        try { DeviceLayout.RemoveBackends(_xs, d.DomId); }
        catch (XenStoreException) { }
    }

    private void DisposeBackends()
    {
        BackendRegistry? b;
        lock (_lock) b = _backends;
        b?.Dispose();
    }
}

/// <summary>The xenstore directories of a PV device as libxl writes them.</summary>
internal static class DeviceLayout
{
    /// <summary>Frontend device/KIND/ID (the guest owns it, the backend reads it) and backend
    /// backend/KIND/DOMID/ID (Domain-0 owns it, the guest reads it), both Initialising, in one transaction;
    /// <paramref name="backendKind"/> names another backend kind than the frontend's (vbd served by qdisk).</summary>
    public static void Write(XenStored xs, DeviceAddress a, IReadOnlyDictionary<string, string>? backendKeys,
        IReadOnlyDictionary<string, string>? frontendKeys, string? backendKind = null)
    {
        string fe = a.FrontendPath, be = (backendKind is null ? a : a with { Kind = backendKind }).BackendPath;
        var fePerms = new[] { new XsPermission(a.FrontendId, XsPerm.None), new XsPermission(a.BackendId, XsPerm.Read) };
        var bePerms = new[] { new XsPermission(a.BackendId, XsPerm.None), new XsPermission(a.FrontendId, XsPerm.Read) };
        for (int attempt = 0; ; attempt++)
        {
            using var t = xs.BeginTransaction();
            if (t.Exists(fe)) t.Rm(fe);
            if (t.Exists(be)) t.Rm(be);
            t.Mkdir(fe);
            t.SetPerms(fe, fePerms);
            t.Mkdir(be);
            t.SetPerms(be, bePerms);
            t.Write($"{fe}/backend", be);
            t.Write($"{fe}/backend-id", a.BackendId.ToString());
            foreach (var (k, v) in frontendKeys ?? new Dictionary<string, string>()) t.Write($"{fe}/{k}", v);
            t.Write($"{fe}/state", "1");
            t.Write($"{be}/frontend", fe);
            t.Write($"{be}/online", "1");
            t.Write($"{be}/state", "1");
            foreach (var (k, v) in backendKeys ?? new Dictionary<string, string>()) t.Write($"{be}/{k}", v);
            // Written last: the backend bus takes a directory with frontend-id as complete.
            t.Write($"{be}/frontend-id", a.FrontendId.ToString());
            if (t.Commit()) return;
            if (attempt > 10) throw new InvalidOperationException($"xenstore: could not write the nodes of device {a}");
        }
    }

    /// <summary>What libxl removes at domain destruction in the backend's home: every kind's
    /// backend/KIND/DOMID and error/backend/KIND/DOMID.</summary>
    /// <summary>One device's frontend, backend and error directories (the end of libxl__device_destroy).</summary>
    public static void Remove(XenStored xs, DeviceAddress a)
    {
        foreach (string p in new[] { a.FrontendPath, a.BackendPath, a.ErrorPath })
            if (xs.Exists(p)) xs.Rm(p);
    }

    public static void RemoveBackends(XenStored xs, uint domId)
    {
        foreach (string kind in DeviceKinds.All)
        {
            foreach (string p in new[] { $"/local/domain/0/backend/{kind}/{domId}", $"/local/domain/0/error/backend/{kind}/{domId}" })
                if (xs.Exists(p)) xs.Rm(p);
        }
    }
}
