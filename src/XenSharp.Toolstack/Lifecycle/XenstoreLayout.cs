using XenSharp.Store;
using XenSharp.Toolstack.Config;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// The xenstore nodes libxl gives a domain: /local/domain/N (the guest may read, dom0 owns) with
/// name, domid, vm, memory, cpu, console, store, control (the guest owns control/shutdown,
/// control/sysrq and the feature-* nodes it writes), device, data..., and /vm/UUID.
/// </summary>
internal static class XenstoreLayout
{
    public static string DomainPath(uint domId) => $"/local/domain/{domId}";
    public static string VmPath(Guid uuid) => $"/vm/{uuid}";

    public static void WriteDom0(XenStored xs)
    {
        xs.Write("/local/domain/0/name", "Domain-0");
        xs.Write("/local/domain/0/domid", "0");
        xs.Write("/local/domain/0/vm", VmPath(Guid.Empty));
        xs.Write($"{VmPath(Guid.Empty)}/uuid", Guid.Empty.ToString());
        xs.Write($"{VmPath(Guid.Empty)}/name", "Domain-0");
    }

    public sealed record Rings(uint StorePort, ulong StorePfn, uint ConsolePort, ulong ConsolePfn);

    public static void WriteDomain(XenStored xs, uint domId, DomainConfig c, Rings rings, DateTimeOffset started)
    {
        string dom = DomainPath(domId), vm = VmPath(c.Uuid);
        var ro = new[] { new XsPermission(0, XsPerm.None), new XsPermission(domId, XsPerm.Read) };
        var rw = new[] { new XsPermission(domId, XsPerm.None) };
        for (int attempt = 0; ; attempt++)
        {
            using var t = xs.BeginTransaction();
            t.Rm(dom);
            t.Rm(vm);
            foreach (var p in new[] { dom, vm, $"{dom}/cpu", $"{dom}/memory", $"{dom}/device", $"{dom}/control", $"{dom}/console", $"{dom}/store" })
            {
                t.Mkdir(p);
                t.SetPerms(p, ro);
            }
            foreach (var p in new[] { "control/shutdown", "control/feature-poweroff", "control/feature-reboot",
                         "control/feature-suspend", "control/sysrq", "data", "drivers", "feature", "attr", "error" })
            {
                t.Write($"{dom}/{p}", "");
                t.SetPerms($"{dom}/{p}", rw);
            }
            t.Write($"{dom}/vm", vm);
            t.Write($"{dom}/name", c.Name);
            t.Write($"{dom}/domid", domId.ToString());
            t.Write($"{dom}/memory/static-max", c.MaxMemKb.ToString());
            t.Write($"{dom}/memory/target", c.TargetMemKb.ToString());
            for (int i = 0; i < c.MaxVcpus; i++)
                t.Write($"{dom}/cpu/{i}/availability", i < c.Vcpus ? "online" : "offline");
            t.Write($"{dom}/store/port", rings.StorePort.ToString());
            t.Write($"{dom}/store/ring-ref", rings.StorePfn.ToString());
            t.Write($"{dom}/console/port", rings.ConsolePort.ToString());
            t.Write($"{dom}/console/ring-ref", rings.ConsolePfn.ToString());
            t.Write($"{dom}/console/type", "xenconsoled");
            t.Write($"{dom}/console/limit", "1048576");
            t.Write($"{dom}/control/platform-feature-multiprocessor-suspend", "1");
            t.Write($"{dom}/control/platform-feature-xs_reset_watches", "1");
            t.Write($"{vm}/uuid", c.Uuid.ToString());
            t.Write($"{vm}/name", c.Name);
            t.Write($"{vm}/start_time", $"{started.ToUnixTimeMilliseconds() / 1000.0:F2}");
            t.Write($"/libxl/{domId}/type", DomainConfig.TypeName(c.Type));
            if (c.Type == DomainType.Hvm && c.FirmwareOverride is null)
            {
                // What hvmloader reads (libxl's hvm_build_set_xs_values and the platform keys).
                t.Write($"{dom}/hvmloader/bios", c.Bios ?? "seabios");
                t.Write($"{dom}/platform/acpi", c.Acpi ? "1" : "0");
                t.Write($"{dom}/platform/acpi_s3", "1");
                t.Write($"{dom}/platform/acpi_s4", "1");
                t.Write($"{dom}/platform/acpi_laptop_slate", "0");
            }
            if (t.Commit()) return;
            if (attempt > 10) throw new InvalidOperationException("xenstore: could not write the domain's nodes");
        }
    }

    public static void Rename(XenStored xs, uint domId, Guid uuid, string name)
    {
        xs.Write($"{DomainPath(domId)}/name", name);
        xs.Write($"{VmPath(uuid)}/name", name);
    }

    /// <summary>The domain's nodes, and /vm/UUID unless <paramref name="uuid"/> is null (another domain of the
    /// uuid still uses it).</summary>
    public static void Remove(XenStored xs, uint domId, Guid? uuid)
    {
        xs.Rm(DomainPath(domId));
        if (uuid is { } u) xs.Rm(VmPath(u));
        xs.Rm($"/libxl/{domId}");
    }
}
