using System.Diagnostics;
using System.Globalization;
using System.Text;
using XenSharp.Backends.Net;
using XenSharp.Backends.Xenbus;
using XenSharp.Public;
using XenSharp.Public.Io;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// The domain's network interfaces (xl.cfg's <c>vif=</c>) as libxl adds them with run_hotplug_scripts: each nic
/// is checked (a unicast MAC, a bridge that exists for vif-bridge), gets its vif frontend and backend directories
/// in libxl's layout, and once the backend has made the host end (vifD.N, InitWait) the nic's hotplug script runs
/// as libxl runs it — <c>SCRIPT online type_if=vif</c> with XENBUS_PATH, vif and the other variables of libxl's
/// hotplug environment, and XENSTORED_PATH naming this daemon's xenstored, so Xen's own /etc/xen/scripts work
/// unchanged. A script that fails fails <c>xl create</c> with its hotplug-error; the domain is then destroyed
/// with everything added so far. At destruction, each vif brought online is taken <c>offline</c> by its script.
/// </summary>
public sealed partial class Host
{
    /// <summary>Where a script name without a directory is looked for (libxl's XEN_SCRIPT_DIR).</summary>
    public const string XenScriptDir = "/etc/xen/scripts";

    /// <summary>How long a hotplug script may run (libxl's LIBXL_HOTPLUG_TIMEOUT).</summary>
    private static readonly TimeSpan HotplugTimeout = TimeSpan.FromSeconds(40);

    /// <summary>How long the backend has to make the host end (libxl waits for InitWait as long).</summary>
    private static readonly TimeSpan VifInitTimeout = TimeSpan.FromSeconds(10);

    /// <summary>libxl__device_nic_add for each nic, in order; any failure ends the creation.</summary>
    private void AddNics(Domain dom)
    {
        var nics = dom.Config.Nics;
        for (int i = 0; i < nics.Count; i++)
            CheckNic(dom.Config, nics[i], i);
        foreach (var nic in nics)
            AddNic(dom, nic);
    }

    /// <summary>What can be refused before any device exists, each error naming the vif= entry's file and line.</summary>
    private static void CheckNic(DomainConfig c, NicSpec nic, int index)
    {
        if (c.Nics.Take(index).Any(n => n.Devid == nic.Devid))
            throw new ControlException($"{Where(c, index)}vif {nic.Devid}: devid {nic.Devid} is given twice");
        // libxl__device_nic_setdefault: only a guest with a device model has emulated interfaces.
        if (nic.Type == "ioemu" && c.Type != DomainType.Hvm)
            throw new ControlException($"{Where(c, index)}vif {nic.Devid}: trying to create PV or PVH guest with an emulated interface");
        CheckNic(nic, Where(c, index));
    }

    /// <summary>What <c>xl create</c> and <c>xl network-attach</c> refuse of one nic; <paramref name="where"/> prefixes the message.</summary>
    private static void CheckNic(NicSpec nic, string where)
    {
        if (nic.BackendDomain is { } b && b is not ("0" or "Domain-0"))
            throw new ControlException($"{where}vif {nic.Devid}: backend domain {b}: only Domain-0 serves vifs");
        byte first = Convert.ToByte(nic.Mac[..2], 16);
        if ((first & 1) != 0 || nic.Mac == "00:00:00:00:00:00")
            throw new ControlException($"{where}vif {nic.Devid}: mac {nic.Mac} is not a unicast address");
        if (nic.VifName is { } name && (name.Length is 0 or > 15 || name.Contains('/') || name.Any(char.IsWhiteSpace)))
            throw new ControlException($"{where}vif {nic.Devid}: vifname `{name}' is not a valid interface name");
        if (IsUserMode(nic)) return;
        string script = ScriptPath(nic.Script);
        if (!File.Exists(script))
            throw new ControlException($"{where}vif {nic.Devid}: hotplug script {script} does not exist");
        // vif-bridge cannot work without its bridge; say so here, where the line is known.
        if (Path.GetFileName(script) == "vif-bridge" && !Directory.Exists($"/sys/class/net/{BridgeOf(nic)}/bridge"))
            throw new ControlException($"{where}vif {nic.Devid}: bridge {BridgeOf(nic)} does not exist on this host");
        if (Path.GetFileName(script) == "vif-openvswitch")
            CheckOvsBridge(nic, where);
    }

    /// <summary>vif-openvswitch's <c>bridge=BRIDGE[.VLAN][:TRUNK[:TRUNK...]]</c> (xl-network-configuration(5)): the
    /// form the script parses, and a bridge Open vSwitch knows, asked as the script will ask (ovs-vsctl, the daemon's
    /// environment naming the switch's run directory).</summary>
    private static void CheckOvsBridge(NicSpec nic, string where)
    {
        var m = OvsBridgeSyntax().Match(BridgeOf(nic));
        if (!m.Success)
            throw new ControlException($"{where}vif {nic.Devid}: bridge `{BridgeOf(nic)}' is not BRIDGE[.VLAN][:TRUNK[:TRUNK...]]");
        string bridge = m.Groups[1].Value;
        int exit;
        try
        {
            var psi = new ProcessStartInfo("ovs-vsctl") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (string a in (string[])["--timeout=10", "br-exists", bridge]) psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            p.StandardOutput.ReadToEnd();
            string err = p.StandardError.ReadToEnd();
            p.WaitForExit();
            exit = p.ExitCode;
            // br-exists: 0 the bridge exists, 2 it does not; anything else is the switch's own trouble.
            if (exit is not (0 or 2))
                throw new ControlException($"{where}vif {nic.Devid}: Open vSwitch cannot be asked for bridge {bridge}: {err.Trim()}");
        }
        catch (System.ComponentModel.Win32Exception)
        {
            throw new ControlException($"{where}vif {nic.Devid}: vif-openvswitch needs ovs-vsctl (Open vSwitch), which is not installed");
        }
        if (exit == 2)
            throw new ControlException($"{where}vif {nic.Devid}: Open vSwitch bridge {bridge} does not exist on this host");
    }

    /// <summary>The bridge name, then an optional VLAN tag and colon-separated trunk VLANs, as vif-openvswitch reads them.</summary>
    [System.Text.RegularExpressions.GeneratedRegex(@"^([^.:]+)(\.[0-9]+)?(:[0-9]+)*$")]
    private static partial System.Text.RegularExpressions.Regex OvsBridgeSyntax();

    /// <summary>Whether a nic is user-mode (passt) rather than a TAP device for a hotplug script: a vif that names
    /// neither <c>bridge=</c> nor <c>script=</c> gets libxl's default (xenbr0 through vif-bridge) only where that can
    /// work, the daemon being root and xenbr0 existing; otherwise passt, which needs neither.</summary>
    private static bool IsUserMode(NicSpec nic) =>
        nic.Bridge is null && !nic.ScriptGiven
        && !(Environment.IsPrivilegedProcess && Directory.Exists("/sys/class/net/xenbr0/bridge"));

    /// <summary>libxl's default bridge.</summary>
    private static string BridgeOf(NicSpec nic) => nic.Bridge ?? "xenbr0";

    private static string ScriptPath(string script) => Path.IsPathRooted(script) ? script : Path.Combine(XenScriptDir, script);

    /// <summary>"FILE:LINE: " of the <paramref name="index"/>th vif= entry, as the configuration was read.</summary>
    private static string Where(DomainConfig c, int index)
    {
        if (c.SourceText is { } text && c.SourceFile is { } file)
        {
            try
            {
                var cfg = XlConfigParser.Parse(text, file);
                if (cfg.Find("vif") is { } s && cfg.GetList("vif") is { } items && index < items.Count)
                    return $"{s.File}:{items[index].Line}: ";
            }
            catch (XlConfigException) { }
            return $"{file}: ";
        }
        return "";
    }

    private void AddNic(Domain dom, NicSpec nic)
    {
        if (IsUserMode(nic))
        {
            AddUserNic(dom, nic);
            return;
        }
        string script = ScriptPath(nic.Script);
        var backend = new Dictionary<string, string>
        {
            ["script"] = script,
            ["mac"] = nic.Mac,
            ["bridge"] = BridgeOf(nic),
            ["handle"] = nic.Devid.ToString(CultureInfo.InvariantCulture),
            ["type"] = IsEmulatedNic(dom.Config, nic) ? "vif_ioemu" : "vif",
        };
        var frontend = new Dictionary<string, string>
        {
            ["handle"] = nic.Devid.ToString(CultureInfo.InvariantCulture),
            ["mac"] = nic.Mac,
        };
        if (nic.Ip is { } ip) backend["ip"] = ip;
        AddRate(backend, nic);
        if (nic.VifName is { } vifname) backend["vifname"] = vifname;
        if (nic.GatewayDev is { } gw) backend["gatewaydev"] = gw;
        if (nic.Mtu is { } mtu)
        {
            backend["mtu"] = mtu.ToString(CultureInfo.InvariantCulture);
            frontend["mtu"] = backend["mtu"];
        }
        var a = AddDevice(dom.DomId, DeviceKinds.Vif, nic.Devid, backend, frontend);
        WaitForHostEnd(a, nic);
        RunHotplug(a, nic, "online", IsEmulatedNic(dom.Config, nic));
    }

    /// <summary>A user-mode nic: no script and no bridge; the backend starts passt for it (backend node
    /// <c>network</c> = user, <c>forward</c> the forwarded ports, space-separated).</summary>
    private void AddUserNic(Domain dom, NicSpec nic)
    {
        string handle = nic.Devid.ToString(CultureInfo.InvariantCulture);
        var backend = new Dictionary<string, string>
        {
            ["mac"] = nic.Mac, ["handle"] = handle, ["type"] = "vif", ["network"] = "user",
            ["forward"] = string.Join(' ', nic.Forwards),
        };
        AddRate(backend, nic);
        var frontend = new Dictionary<string, string> { ["handle"] = handle, ["mac"] = nic.Mac };
        if (nic.Mtu is { } mtu)
        {
            backend["mtu"] = mtu.ToString(CultureInfo.InvariantCulture);
            frontend["mtu"] = backend["mtu"];
        }
        var a = AddDevice(dom.DomId, DeviceKinds.Vif, nic.Devid, backend, frontend);
        WaitForHostEnd(a, nic);
    }

    /// <summary>libxl's backend node <c>rate</c> = "BYTES,USECS" (bytes per interval, interval), which the backend
    /// reads as netback does.</summary>
    private static void AddRate(Dictionary<string, string> backend, NicSpec nic)
    {
        if (nic.Rate is not { } rate) return;
        var (bytes, usecs) = NicSpec.ParseRate(rate);
        backend["rate"] = string.Create(CultureInfo.InvariantCulture, $"{bytes},{usecs}");
    }

    /// <summary>Waits until the backend has made the host end and published InitWait; its failure is the nic's.</summary>
    private void WaitForHostEnd(DeviceAddress a, NicSpec nic)
    {
        var deadline = _time.GetUtcNow() + VifInitTimeout;
        while (true)
        {
            string? state = _xs.Read($"{a.BackendPath}/state");
            if (state == ((int)XenbusState.InitWait).ToString(CultureInfo.InvariantCulture)) return;
            if (_xs.Read($"{a.ErrorPath}/error") is { } error)
                throw new ControlException($"vif {nic.Devid}: the network backend failed: {error}");
            if (_time.GetUtcNow() > deadline)
                throw new ControlException($"vif {nic.Devid}: the network backend did not make {VifPorts.InterfaceName(a)} in time");
            Thread.Sleep(10);
        }
    }

    /// <summary>Runs the nic's hotplug script for <paramref name="action"/> (online or offline for the vif, add or
    /// remove for the TAP device of an emulated NIC) as libxl does; online must end with hotplug-status "connected",
    /// add with the script's success. For a nic with an emulated half, INTERFACE names its TAP device, in both runs.</summary>
    private void RunHotplug(DeviceAddress a, NicSpec nic, string action, bool emulated = false)
    {
        bool tap = action is "add" or "remove";
        string script = _xs.Read($"{a.BackendPath}/script") ?? ScriptPath(nic.Script);
        var psi = new ProcessStartInfo(script)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add(action);
        psi.ArgumentList.Add(tap ? "type_if=tap" : "type_if=vif");
        psi.Environment["script"] = script;
        psi.Environment["XENBUS_TYPE"] = a.Kind;
        psi.Environment["XENBUS_PATH"] = $"backend/{a.Kind}/{a.FrontendId}/{a.DevId}";
        psi.Environment["XENBUS_BASE_PATH"] = "backend";
        psi.Environment["netdev"] = nic.GatewayDev ?? "";
        psi.Environment["vif"] = VifPorts.InterfaceName(a);
        if (emulated) psi.Environment["INTERFACE"] = EmulatedNicName(a.FrontendId, a.DevId);
        psi.Environment["XENSTORED_PATH"] = _paths.XenstoredSocket;
        var output = new StringBuilder();
        int exit;
        bool timedOut = false;
        try
        {
            using var p = Process.Start(psi)!;
            p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
            p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            p.StandardInput.Close();
            if (!p.WaitForExit(HotplugTimeout))
            {
                timedOut = true;
                p.Kill(entireProcessTree: true);
            }
            p.WaitForExit();
            exit = p.ExitCode;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new ControlException($"vif {nic.Devid}: hotplug script {script}: {e.Message}");
        }
        if (action == "add" && (exit != 0 || timedOut))
            throw new ControlException($"vif {nic.Devid}: {script} add type_if=tap for {EmulatedNicName(a.FrontendId, a.DevId)} failed: " +
                (timedOut ? $"timed out after {HotplugTimeout.TotalSeconds:0} s" : $"exit status {exit}{(output.Length > 0 ? ": " + output.ToString().Trim() : "")}"), Errno.EIO);
        if (action != "online") return;
        string? status = _xs.Read($"{a.BackendPath}/hotplug-status");
        if (exit == 0 && !timedOut && status == "connected") return;
        string reason = _xs.Read($"{a.BackendPath}/hotplug-error") is { Length: > 0 } err ? err
            : timedOut ? $"timed out after {HotplugTimeout.TotalSeconds:0} s"
            : exit != 0 ? $"exit status {exit}{(output.Length > 0 ? ": " + output.ToString().Trim() : "")}"
            : $"hotplug-status is `{status}', not `connected'";
        throw new ControlException($"vif {nic.Devid}: {script} online failed: {reason}", Errno.EIO);
    }

    /// <summary>At destruction, before the backends let go of their host ends: each vif whose script brought it
    /// online is taken offline by the same script (libxl's remove path), best effort.</summary>
    private void RemoveNics(Domain d)
    {
        foreach (var nic in d.Config.Nics)
        {
            var a = new DeviceAddress(DeviceKinds.Vif, d.DomId, nic.Devid);
            try
            {
                if (_xs.Read($"{a.BackendPath}/hotplug-status") != "connected") continue;
                DetachEmulatedNic(d, nic);
                RunHotplug(a, nic, "offline", IsEmulatedNic(d.Config, nic));
            }
            catch (Exception e) when (e is ControlException or XenSharp.Store.XenStoreException)
            {
                _hv.ConsoleWrite($"d{d.DomId}: vif {nic.Devid}: {e.Message}");
            }
        }
    }
}

public sealed partial class Host
{
    /// <summary>`xl network-attach` (libxl_device_nic_add on a running domain): the nic gets the next free devid
    /// unless it names one, is checked as <c>xl create</c> checks it, and is added as at creation — the backend
    /// makes vifD.N, the hotplug script puts it on its bridge — and the guest's netfront sees the new device.
    /// A nic whose backend or script fails is taken away again.</summary>
    private void NetworkAttach(NetworkAttachRequest r)
    {
        var d = Resolve(r.Domain);
        string dir = $"/local/domain/{d.DomId}/device/{DeviceKinds.Vif}";
        // libxl__device_nextid: one past the highest devid in use.
        int next = (_xs.Directory(dir) ?? []).Select(id => int.TryParse(id, NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n : -1)
            .DefaultIfEmpty(-1).Max() + 1;
        NicSpec nic;
        try { nic = NicSpec.Parse(r.Spec, next); }
        catch (FormatException e) { throw new ControlException(e.Message, Errno.EINVAL); }
        CheckNic(nic, "");
        var a = new DeviceAddress(DeviceKinds.Vif, d.DomId, nic.Devid);
        if (_xs.Exists(a.FrontendPath))
            throw new ControlException($"vif {nic.Devid} is already attached to domain {d.DomId}", Errno.EEXIST);
        try { AddNic(d, nic); }
        catch (ControlException)
        {
            DeviceLayout.Remove(_xs, a);
            throw;
        }
        lock (_lock) d.Config.Nics = [.. d.Config.Nics, nic];
    }

    /// <summary>`xl network-detach` (libxl__initiate_device_generic_remove): the backend goes offline and Closing,
    /// netfront closes its end, the hotplug script takes the vif off its bridge, and both directories go, with
    /// them the backend's host end (the TAP device or passt).</summary>
    private void NetworkDetach(NetworkDetachRequest r)
    {
        var d = Resolve(r.Domain);
        NicSpec? nic;
        lock (_lock)
            nic = r.Device.Contains(':')
                ? d.Config.Nics.FirstOrDefault(n => string.Equals(n.Mac, r.Device, StringComparison.OrdinalIgnoreCase))
                : d.Config.Nics.FirstOrDefault(n => n.Devid.ToString(CultureInfo.InvariantCulture) == r.Device);
        var a = nic is null ? default : new DeviceAddress(DeviceKinds.Vif, d.DomId, nic.Devid);
        if (nic is null || !_xs.Exists(a.FrontendPath))
            throw new ControlException($"Unknown device {r.Device}.", Errno.ENODEV);
        string be = a.BackendPath;
        _xs.Write($"{be}/online", "0");
        _xs.Write($"{be}/state", ((int)XenbusState.Closing).ToString(CultureInfo.InvariantCulture));
        var deadline = _time.GetUtcNow() + DetachTimeout;
        while (_xs.Read($"{be}/state") != ((int)XenbusState.Closed).ToString(CultureInfo.InvariantCulture) && _time.GetUtcNow() < deadline)
            Thread.Sleep(50);
        try
        {
            if (_xs.Read($"{be}/hotplug-status") == "connected") RunHotplug(a, nic, "offline");
        }
        catch (ControlException e) { _hv.ConsoleWrite($"d{d.DomId}: vif {nic.Devid}: {e.Message}"); }
        DeviceLayout.Remove(_xs, a);
        lock (_lock) d.Config.Nics = [.. d.Config.Nics.Where(x => x.Devid != nic.Devid)];
    }

    /// <summary>`xl network-list`: each vif under the domain's device/vif, as libxl_device_nic_getinfo reads it
    /// from the frontend's directory.</summary>
    private IReadOnlyList<NicInfoEntry> NetworkList(NetworkListRequest r)
    {
        var d = Resolve(r.Domain, allowDom0: true);
        string dir = $"/local/domain/{d.DomId}/device/{DeviceKinds.Vif}";
        var result = new List<NicInfoEntry>();
        foreach (string id in _xs.Directory(dir) ?? [])
        {
            if (!int.TryParse(id, NumberStyles.None, CultureInfo.InvariantCulture, out int devid)) continue;
            string fe = $"{dir}/{id}";
            int Number(string key) =>
                int.TryParse(_xs.Read($"{fe}/{key}"), NumberStyles.None, CultureInfo.InvariantCulture, out int v) ? v : -1;
            result.Add(new NicInfoEntry(devid, (uint)Math.Max(0, Number("backend-id")), _xs.Read($"{fe}/mac") ?? "",
                Number("state"), Number("event-channel"), Number("tx-ring-ref"), Number("rx-ring-ref"), _xs.Read($"{fe}/backend") ?? ""));
        }
        return result.OrderBy(e => e.Devid).ToList();
    }
}
