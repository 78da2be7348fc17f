using System.Text.Json;
using System.Text.Json.Nodes;
using XenSharp.Public;

namespace XenSharp.Toolstack.Config;

/// <summary>
/// A <see cref="DomainConfig"/> in the JSON form libxl gives libxl_domain_config (what
/// <c>xl list -l</c> and <c>xl create -n</c> print): c_info, b_info and the on_* actions.
/// </summary>
public static class LibxlJson
{
    public static readonly JsonSerializerOptions Pretty = new() { WriteIndented = true, IndentSize = 4 };

    public static JsonObject DomainConfig(DomainConfig d)
    {
        var b = new JsonObject
        {
            ["max_vcpus"] = d.MaxVcpus,
            ["avail_vcpus"] = new JsonArray(Enumerable.Range(0, d.Vcpus).Select(i => (JsonNode)i).ToArray()),
        };
        if (d.CpusHard is { } hard) b["vcpu_hard_affinity"] = Affinity(hard, d.MaxVcpus);
        if (d.CpusSoft is { } soft) b["vcpu_soft_affinity"] = Affinity(soft, d.MaxVcpus);
        b["max_memkb"] = d.MaxMemKb;
        b["target_memkb"] = d.TargetMemKb;
        b["sched_params"] = new JsonObject { ["weight"] = d.CpuWeight, ["cap"] = d.Cap };
        if (d.Type == DomainType.Hvm && d.FirmwareOverride is not null) b["firmware"] = d.FirmwareOverride;
        if (d.Kernel is not null) b["kernel"] = d.Kernel;
        if (d.Cmdline.Length > 0) b["cmdline"] = d.Cmdline;
        if (d.Ramdisk is not null) b["ramdisk"] = d.Ramdisk;
        if (d.TscMode != TscMode.Default) b["tsc_mode"] = Config.DomainConfig.TscModeName(d.TscMode);
        var typeUnion = new JsonObject();
        if (d.PvShim)
        {
            // libxl's pvh union: the defaults it fills in are left out, as it leaves them out of a config it was given.
            typeUnion["pvshim"] = "True";
            if (d.PvShimPath is not null) typeUnion["pvshim_path"] = d.PvShimPath;
            if (d.PvShimCmdline is not null) typeUnion["pvshim_cmdline"] = d.PvShimCmdline;
            if (d.PvShimExtra is not null) typeUnion["pvshim_extra"] = d.PvShimExtra;
        }
        b["type." + Enums.TypeName(d.Type)] = typeUnion;
        b["arch_arm"] = new JsonObject();

        var c = new JsonObject
        {
            ["type"] = Enums.TypeName(d.Type),
            ["name"] = d.Name,
            ["uuid"] = d.Uuid.ToString(),
            ["run_hotplug_scripts"] = "True",
        };
        if (d.Pool is not null) c["pool_name"] = d.Pool;

        var result = new JsonObject
        {
            ["c_info"] = c,
            ["b_info"] = b,
            ["on_poweroff"] = Enums.Action(d.OnPoweroff),
            ["on_reboot"] = Enums.Action(d.OnReboot),
            ["on_watchdog"] = Enums.Action(d.OnWatchdog),
            ["on_crash"] = Enums.Action(d.OnCrash),
            ["on_soft_reset"] = Enums.Action(d.OnSoftReset),
        };
        if (d.Disks.Count > 0) result["disks"] = new JsonArray(d.Disks.Select(Disk).ToArray());
        if (d.Nics.Count > 0) result["nics"] = new JsonArray(d.Nics.Select(n => Nic(n, d.Type)).ToArray());
        return result;
    }

    private static JsonNode Disk(DiskSpec s)
    {
        var o = new JsonObject();
        if (s.BackendDomain is not null) o["backend_domname"] = s.BackendDomain;
        if (s.Target is not null) o["pdev_path"] = s.Target;
        o["vdev"] = s.Vdev;
        if (s.Backend != DiskBackend.Unknown) o["backend"] = s.Backend.ToString().ToLowerInvariant();
        o["format"] = DiskSpec.FormatName(s.Format);
        if (s.Script is not null) o["script"] = s.Script;
        o["removable"] = s.IsCdrom ? 1 : 0;
        o["readwrite"] = s.ReadWrite ? 1 : 0;
        o["is_cdrom"] = s.IsCdrom ? 1 : 0;
        if (s.DirectIoSafe) o["direct_io_safe"] = true;
        if (s.Discard is bool discard) o["discard_enable"] = discard ? "True" : "False";
        if (s.Colo) o["colo_enable"] = "True";
        if (s.Specification != "xen") o["specification"] = s.Specification;
        if (!s.Trusted) o["trusted"] = "False";
        return o;
    }

    private static JsonNode Nic(NicSpec n, DomainType type)
    {
        var o = new JsonObject { ["devid"] = n.Devid, ["mac"] = n.Mac };
        if (n.BackendDomain is not null) o["backend_domname"] = n.BackendDomain;
        if (n.Mtu is int mtu) o["mtu"] = mtu;
        if (n.Ip is not null) o["ip"] = n.Ip;
        if (n.Bridge is not null) o["bridge"] = n.Bridge;
        if (n.VifName is not null) o["ifname"] = n.VifName;
        o["script"] = n.Script;
        // libxl__device_nic_setdefault: an HVM guest's nics are emulated too unless type=vif says otherwise.
        o["nictype"] = (n.Type ?? (type == DomainType.Hvm ? "ioemu" : "vif")) == "ioemu" ? "vif_ioemu" : "vif";
        if (n.Model is not null) o["model"] = n.Model;
        if (n.Rate is not null) o["rate"] = n.Rate;
        if (n.GatewayDev is not null) o["gatewaydev"] = n.GatewayDev;
        return o;
    }

    private static JsonArray Affinity(IReadOnlyList<CpuMap> maps, int maxVcpus)
    {
        var arr = new JsonArray();
        for (int v = 0; v < maxVcpus; v++)
        {
            var m = maps.Count == 1 ? maps[0] : v < maps.Count ? maps[v] : null;
            arr.Add(m is null ? new JsonArray() : new JsonArray(m.Cpus.Select(i => (JsonNode)i).ToArray()));
        }
        return arr;
    }

    private static class Enums
    {
        public static string TypeName(DomainType t) => Config.DomainConfig.TypeName(t);

        /// <summary>libxl_action_on_shutdown's names.</summary>
        public static string Action(ShutdownAction a) => a switch
        {
            ShutdownAction.Destroy => "destroy",
            ShutdownAction.Restart => "restart",
            ShutdownAction.RenameRestart => "restart_rename",
            ShutdownAction.Preserve => "preserve",
            ShutdownAction.CoredumpDestroy => "coredump_destroy",
            ShutdownAction.CoredumpRestart => "coredump_restart",
            _ => "soft_reset",
        };
    }
}
