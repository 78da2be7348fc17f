using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>Requests that change a running domain: shutdown and reboot requests, rename, vCPU pinning and
/// count, memory target and maximum, triggers.</summary>
public sealed partial class Host
{
    private void RequestShutdown(ShutdownRequest r)
    {
        var d = Resolve(r.Domain);
        string dom = XenstoreLayout.DomainPath(d.DomId);
        string feature = r.Kind == ShutdownKind.Reboot ? "feature-reboot" : "feature-poweroff";
        // libxl asks whether the guest has PV drivers (its event callback: a restored or migrated guest does not write
        // its feature keys again); a guest that wrote the feature key has them as well.
        bool pvControl = HasPvDrivers(d) || _xs.Read($"{dom}/control/{feature}") == "1";
        if (!pvControl)
        {
            if (!r.AcpiFallback)
                throw new ControlException("PV control interface not available: external graceful shutdown not possible.\n" +
                    $"Use \"-F\" to fallback to ACPI {(r.Kind == ShutdownKind.Reboot ? "reset" : "power")} event.");
            d.Hv.SendTrigger(r.Kind == ShutdownKind.Reboot ? "reset" : "power", 0);
            return;
        }
        _xs.Write($"{dom}/control/shutdown", r.Kind == ShutdownKind.Reboot ? "reboot" : "poweroff");
    }

    private void Rename(RenameRequest r) => Rename(Resolve(r.Domain), r.NewName);

    private void Rename(Domain d, string newName)
    {
        CheckName(newName);
        lock (_lock)
            if (NameTakenLocked(newName, except: d))
                throw new ControlException($"domain with name \"{newName}\" already exists.");
        d.Config.Name = newName;
        d.Console?.Rename(newName);
        XenstoreLayout.Rename(_xs, d.DomId, d.Config.Uuid, newName);
    }

    private void VcpuPin(VcpuPinRequest r)
    {
        var d = Resolve(r.Domain, allowDom0: false);
        CpuMap? Parse(string? s)
        {
            if (s is null) return null;
            return CpuMap.TryParse(s, _hv.HostCpus, out var err, _hv.Scheduling?.CpuNodes) ?? throw new ControlException(err!);
        }
        var hard = Parse(r.Hard);
        var soft = Parse(r.Soft);
        int max = d.Config.MaxVcpus;
        if (r.Vcpu >= max) throw new ControlException($"vcpu {r.Vcpu} does not exist (the domain has {max})");
        var hardList = (d.Config.CpusHard ?? []).ToList();
        var softList = (d.Config.CpusSoft ?? []).ToList();
        for (int v = r.Vcpu < 0 ? 0 : r.Vcpu; v < (r.Vcpu < 0 ? max : r.Vcpu + 1); v++)
        {
            d.Hv.SetVcpuAffinity(v, hard?.Cpus.ToList(), soft?.Cpus.ToList());
            SetPerVcpu(hardList, v, hard, max);
            SetPerVcpu(softList, v, soft, max);
        }
        d.Config.CpusHard = hardList.Count > 0 ? hardList : null;
        d.Config.CpusSoft = softList.Count > 0 ? softList : null;
    }

    private void SetPerVcpu(List<CpuMap> list, int vcpu, CpuMap? map, int max)
    {
        if (map is null) return;
        if (list.Count == 1 && max > 1) list.AddRange(Enumerable.Repeat(list[0], max - 1));
        while (list.Count < max) list.Add(CpuMap.All(_hv.HostCpus));
        list[vcpu] = map;
    }

    private void VcpuSet(VcpuSetRequest r)
    {
        var d = Resolve(r.Domain);
        if (r.Count > d.Config.MaxVcpus)
            throw new ControlException($"Requested vcpus {r.Count} exceeds the domain's maximum of {d.Config.MaxVcpus}");
        if (!r.IgnoreHost && r.Count > _hv.HostCpus)
            throw new ControlException($"You are overcommmitting! You have {_hv.HostCpus} physical CPUs and want {r.Count} vCPUs! Aborting, use --ignore-host to continue");
        string dom = XenstoreLayout.DomainPath(d.DomId);
        for (int i = 0; i < d.Config.MaxVcpus; i++)
            _xs.Write($"{dom}/cpu/{i}/availability", i < r.Count ? "online" : "offline");
        d.Hv.SetOnlineVcpus(r.Count);
        d.Config.Vcpus = r.Count;
    }

    private void MemSet(MemSetRequest r)
    {
        var d = Resolve(r.Domain);
        if (r.TargetKb > d.Config.MaxMemKb)
            throw new ControlException($"memory_dynamic_max must be less than or equal to memory_static_max");
        if (r.TargetKb <= 0) throw new ControlException("invalid memory target");
        // libxl_set_memory_target with enforce: the reservation limit follows the target, the PoD cache is
        // sized for it (a no-op once the guest has ballooned to it), and the balloon driver reads memory/target.
        d.Hv.SetMaxMem(r.TargetKb);
        d.Hv.Memory.SetPodTarget((ulong)r.TargetKb / 4);
        _xs.Write($"{XenstoreLayout.DomainPath(d.DomId)}/memory/target", r.TargetKb.ToString());
        d.Config.TargetMemKb = r.TargetKb;
    }

    private void MemMax(MemMaxRequest r)
    {
        var d = Resolve(r.Domain);
        if (r.MaxKb < d.Config.TargetMemKb)
            throw new ControlException($"cannot set max memory below the current target ({d.Config.TargetMemKb} KiB)");
        d.Hv.SetMaxMem(r.MaxKb);
        _xs.Write($"{XenstoreLayout.DomainPath(d.DomId)}/memory/static-max", r.MaxKb.ToString());
        d.Config.MaxMemKb = r.MaxKb;
    }

    private void Trigger(TriggerRequest r)
    {
        var d = Resolve(r.Domain);
        if (r.Trigger is not ("nmi" or "reset" or "init" or "power" or "sleep" or "s3resume"))
            throw new ControlException($"Invalid trigger \"{r.Trigger}\"");
        try { d.Hv.SendTrigger(r.Trigger, r.Vcpu); }
        catch (XenSharp.Hypervisor.HypervisorException e)
        {
            // libxl_send_trigger's report: the errno of XEN_DOMCTL_sendtrigger in words.
            throw new ControlException($"libxl: error: libxl_domain.c: Domain {d.DomId}:Send trigger '{r.Trigger}' failed: {ErrnoText.Describe(e.Errno)}", e.Errno);
        }
    }
}
