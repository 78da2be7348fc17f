using XenSharp.Public;

namespace XenSharp.Toolstack.Config;

/// <summary>
/// Turns an <see cref="XlConfig"/> into a <see cref="DomainConfig"/> (xl's parse_config_data). Errors
/// throw <see cref="XlConfigException"/> naming the file and line; warnings (unknown keys, keys that
/// XenSharp does not act on yet) are returned for xl to print.
/// </summary>
public static class DomainConfigReader
{
    /// <summary>Keys this reader acts on.</summary>
    private static readonly HashSet<string> Handled =
    [
        "name", "type", "builder", "kernel", "ramdisk", "cmdline", "extra", "root", "memory", "maxmem",
        "vcpus", "maxvcpus", "cpus", "cpus_soft", "on_poweroff", "on_reboot", "on_crash", "on_watchdog",
        "on_soft_reset", "uuid", "firmware_override", "firmware", "cpu_weight", "cap", "pool", "tsc_mode", "disk", "vif",
        "acpi", "apic", "hpet", "timer_mode", "altp2m", "localtime", "rtc_timeoffset", "bios", "serial", "device_model_override", "boot",
        "bios_path_override", "bootloader", "bootloader_args", "pvshim", "pvshim_path", "pvshim_cmdline", "pvshim_extra",
        "seclabel", "init_seclabel",
        .. HvmDisplay.Keys,
    ];

    /// <summary>Keys of Xen's xl.cfg manual that XenSharp reads but does not act on yet.</summary>
    private static readonly HashSet<string> KnownElsewhere =
    [
        "vnuma", "max_grant_frames", "max_maptrack_frames", "max_grant_version",
        "nomigrate", "driver_domain", "device_tree", "acpi_s3", "acpi_s4", "acpi_laptop_slate",
        "pae", "hap", "oos", "shadow_memory", "nestedhvm", "viridian", "vpt_align",
        "vkb_device", "vtpm", "p9", "pvcalls", "vfb",
        "vkb", "vdispl", "vsnd", "channel", "usb", "usbctrl", "usbdev", "pci", "pci_permissive", "pci_msitranslate",
        "pci_seize", "pci_power_mgmt", "rdm", "rdm_mem_boundary", "dtdev", "gfx_passthru", "ioports", "irqs",
        "iomem", "e820_host", "opengl", "spice", "soundhw", "device_model_version",
        "device_model_stubdomain_override", "device_model_args", "device_model_user",
        "cpuid",
        "altp2mhvm", "xen_platform_pci", "claim_mode", "mca_caps", "msr_relaxed", "vcpu_hotplug",
        "tee", "gic_version", "vuart", "dm_restrict", "xenstore_nodes", "event_channels", "passthrough",
        "max_event_channels", "smbios_firmware", "acpi_firmware", "usbversion",
        "vif2", "xsm", "cpuid_policy", "memory_sharing", "suppress_vmdesc", "vendor_device", "mmio_hole",
        "cpu_cap", "nographic", "on_xend_start", "on_xend_stop", "tsc_native", "blkif", "netif", "tpmif",
        "vcpu_avail", "pvh", "device_model", "extra_guest_irqs", "soft_reset", "vdispl",
    ];

    public sealed record Result(DomainConfig Config, IReadOnlyList<string> Warnings);

    /// <summary>
    /// Reads the configuration for a host of <paramref name="hostCpus"/> CPUs, whose NUMA node each is given by
    /// <paramref name="cpuNodes"/> (null: one node), which node: and nodes: in cpus= and cpus_soft= refer to.
    /// </summary>
    public static Result Read(XlConfig cfg, int hostCpus, IReadOnlyList<int>? cpuNodes = null)
    {
        var warnings = new List<string>();

        string? name = cfg.GetString("name");
        if (string.IsNullOrEmpty(name))
            throw new XlConfigException($"{cfg.File}: domain name must be specified (name=\"NAME\")");
        if (name.Contains('/') || name.Any(char.IsControl))
            throw At(cfg, "name", $"invalid domain name `{name}'");

        var d = new DomainConfig { Name = name };

        string? type = cfg.GetString("type");
        string? builder = cfg.GetString("builder");
        if (type is not null)
        {
            d.Type = type switch
            {
                "pv" => DomainType.Pv,
                "pvh" => DomainType.Pvh,
                "hvm" => DomainType.Hvm,
                _ => throw At(cfg, "type", $"Invalid domain type {type}."),
            };
        }
        else if (builder is not null)
        {
            d.Type = builder switch
            {
                "hvm" => DomainType.Hvm,
                "generic" => DomainType.Pv,
                _ => throw At(cfg, "builder", $"Invalid builder {builder}."),
            };
        }
        else d.Type = DomainType.Pv; // xl's default on x86

        string? uuid = cfg.GetString("uuid");
        if (uuid is not null)
        {
            if (!Guid.TryParse(uuid, out var g)) throw At(cfg, "uuid", $"Failed to parse UUID: {uuid}");
            d.Uuid = g;
        }
        else d.Uuid = Guid.NewGuid();

        d.Kernel = ResolvePath(cfg, "kernel");
        d.Ramdisk = ResolvePath(cfg, "ramdisk");
        d.Bootloader = cfg.GetString("bootloader") is { Length: > 0 } bl ? bl : null;
        d.Seclabel = cfg.GetString("seclabel") is { Length: > 0 } sl ? sl : null;
        d.InitSeclabel = cfg.GetString("init_seclabel") is { Length: > 0 } isl ? isl : null;
        // xl takes bootloader_args as a list, or (deprecated) a string split at spaces.
        d.BootloaderArgs = cfg.Find("bootloader_args") is { Value.IsList: true } ? cfg.GetStringList("bootloader_args")!
            : cfg.GetString("bootloader_args")?.Split(' ', StringSplitOptions.RemoveEmptyEntries) ?? [];
        d.Firmware = cfg.GetString("firmware");
        d.FirmwareOverride = ResolvePath(cfg, "firmware_override");
        d.Bios = cfg.GetString("bios");
        d.DeviceModelOverride = ResolvePath(cfg, "device_model_override");
        d.Serials = cfg.GetStringList("serial") ?? [];
        d.Boot = cfg.GetString("boot");
        if (d.Type == DomainType.Pvh)
        {
            // As xl: read for PVH guests only.
            d.PvShim = cfg.GetBool("pvshim") ?? false;
            d.PvShimPath = ResolvePath(cfg, "pvshim_path");
            d.PvShimCmdline = cfg.GetString("pvshim_cmdline");
            d.PvShimExtra = cfg.GetString("pvshim_extra");
        }

        string? cmdline = cfg.GetString("cmdline");
        string? root = cfg.GetString("root");
        string? extra = cfg.GetString("extra");
        if (cmdline is not null)
        {
            if (root is not null || extra is not null)
                warnings.Add("Warning: ignoring root= and extra= in favour of cmdline=");
            d.Cmdline = cmdline;
        }
        else if (root is not null)
            d.Cmdline = extra is not null ? $"root={root} {extra}" : $"root={root}";
        else
            d.Cmdline = extra ?? "";

        long memoryMb = Positive(cfg, "memory") ?? 32; // libxl's default target
        long maxMemMb = Positive(cfg, "maxmem") ?? memoryMb;
        if (maxMemMb < memoryMb)
            throw At(cfg, "maxmem", $"maxmem ({maxMemMb}) must be greater than or equal to memory ({memoryMb})");
        d.TargetMemKb = memoryMb * 1024;
        d.MaxMemKb = maxMemMb * 1024;

        long vcpus = Positive(cfg, "vcpus") ?? 1;
        long maxVcpus = Positive(cfg, "maxvcpus") ?? vcpus;
        if (vcpus > maxVcpus)
            throw At(cfg, "vcpus", $"vcpus ({vcpus}) must not exceed maxvcpus ({maxVcpus})");
        if (maxVcpus > 128)
            throw At(cfg, cfg.Contains("maxvcpus") ? "maxvcpus" : "vcpus", $"too many vcpus ({maxVcpus}); at most 128");
        d.Vcpus = (int)vcpus;
        d.MaxVcpus = (int)maxVcpus;

        d.CpusHard = ReadCpus(cfg, "cpus", hostCpus, d.MaxVcpus, cpuNodes);
        d.CpusSoft = ReadCpus(cfg, "cpus_soft", hostCpus, d.MaxVcpus, cpuNodes);

        d.OnPoweroff = Action(cfg, "on_poweroff", ShutdownAction.Destroy);
        d.OnReboot = Action(cfg, "on_reboot", ShutdownAction.Restart);
        d.OnCrash = Action(cfg, "on_crash", ShutdownAction.Destroy);
        d.OnWatchdog = Action(cfg, "on_watchdog", ShutdownAction.Destroy);
        d.OnSoftReset = Action(cfg, "on_soft_reset", ShutdownAction.SoftReset);

        if (cfg.GetLong("cpu_weight") is { } w)
        {
            if (w is < 1 or > 65535) throw At(cfg, "cpu_weight", $"cpu_weight {w} out of range (1-65535)");
            d.CpuWeight = (int)w;
        }
        if (cfg.GetLong("cap") is { } cap)
        {
            if (cap < 0) throw At(cfg, "cap", $"cap {cap} must not be negative");
            d.Cap = (int)cap;
        }
        d.Pool = cfg.GetString("pool");
        d.TscMode = ReadTscMode(cfg, warnings);
        d.Acpi = cfg.GetBool("acpi") ?? true;
        d.Apic = cfg.GetBool("apic") ?? true;
        d.Hpet = cfg.GetBool("hpet") ?? true;
        d.TimerMode = ReadTimerMode(cfg, warnings);
        d.Altp2m = ReadAltp2m(cfg);
        d.Localtime = cfg.GetBool("localtime") ?? false;
        d.RtcTimeoffset = cfg.GetLong("rtc_timeoffset") ?? 0;
        d.Disks = ReadDevices(cfg, "disk", (spec, _) => DiskSpec.Parse(spec));
        d.Nics = ReadDevices(cfg, "vif", (spec, devid) => NicSpec.Parse(spec, devid));
        var vdevs = new HashSet<string>();
        foreach (var disk in d.Disks)
            if (!vdevs.Add(disk.Vdev))
                throw At(cfg, "disk", $"disk vdev `{disk.Vdev}' is given twice");
        // Disk targets are host paths: resolved as kernel= is, "~/" in the home directory and relative ones against
        // the configuration's directory.
        d.Disks = [.. d.Disks.Select(x => x.Target is { } t && !Path.IsPathRooted(t) ? x with { Target = HostPath(cfg, t) } : x)];

        switch (d.Type)
        {
            case DomainType.Pv:
                if (d.Kernel is null && d.Bootloader is null)
                    throw new XlConfigException($"{cfg.File}: a PV domain needs kernel=\"PATHNAME\" (64-bit ELF or bzImage)");
                if (d.Bootloader is not null && d.Disks.Count == 0)
                    throw At(cfg, "bootloader", "a bootloader needs a disk to boot from");
                break;
            case DomainType.Pvh:
                if (d.Kernel is null)
                    throw new XlConfigException($"{cfg.File}: a PVH domain needs kernel=\"PATHNAME\"");
                break;
            case DomainType.Hvm:
                // libxl_bios_type: rombios is qemu-xen-traditional's, which XenSharp does not run.
                if (d.Bios == "rombios")
                    throw At(cfg, "bios", "qemu-xen does not support bios=rombios.");
                if (d.Bios is not (null or "seabios" or "ovmf"))
                    throw At(cfg, "bios", $"ERROR: invalid value \"{d.Bios}\" for \"bios\"");
                d.BiosPathOverride = ResolvePath(cfg, "bios_path_override");
                d.Display = HvmDisplay.Read(cfg);
                break;
        }

        foreach (var s in cfg.Unused)
        {
            if (Handled.Contains(s.Key)) continue;
            warnings.Add(KnownElsewhere.Contains(s.Key)
                ? $"{s.File}:{s.Line}: warning: `{s.Key}' is not supported yet and is ignored"
                : $"{s.File}:{s.Line}: warning: unknown key `{s.Key}' ignored");
        }
        return new Result(d, warnings);
    }

    /// <summary>altp2m: libxl's names (disabled, mixed, external, limited) or their numbers.</summary>
    private static int ReadAltp2m(XlConfig cfg)
    {
        if (cfg.Find("altp2m") is null) return 0;
        string v = cfg.GetString("altp2m")!;
        if (XlConfig.TryParseNumber(v, out long n))
            return n is >= 0 and <= 3 ? (int)n : throw At(cfg, "altp2m", $"invalid value {v} for \"altp2m\"");
        return v.ToLowerInvariant() switch
        {
            "disabled" => 0,
            "mixed" => 1,
            "external" => 2,
            "limited" => 3,
            _ => throw At(cfg, "altp2m", $"invalid value \"{v}\" for \"altp2m\""),
        };
    }

    /// <summary>timer_mode: libxl's names (default no_delay_for_missed_ticks); a number is the deprecated form.</summary>
    private static int ReadTimerMode(XlConfig cfg, List<string> warnings)
    {
        if (cfg.Find("timer_mode") is null) return 1;
        string v = cfg.GetString("timer_mode")!;
        if (XlConfig.TryParseNumber(v, out long n))
        {
            warnings.Add("WARNING: specifying \"timer_mode\" as an integer is deprecated. Please use the named parameter variant. e.g. timer_mode=\"no_delay_for_missed_ticks\"");
            if (n is < 0 or > 3) throw At(cfg, "timer_mode", $"invalid value {v} for \"timer_mode\"");
            return (int)n;
        }
        return v switch
        {
            "delay_for_missed_ticks" => 0,
            "no_delay_for_missed_ticks" => 1,
            "no_missed_ticks_pending" => 2,
            "one_missed_tick_pending" => 3,
            _ => throw At(cfg, "timer_mode", $"invalid value \"{v}\" for \"timer_mode\""),
        };
    }

    /// <summary>tsc_mode: libxl's names; a number is the deprecated form xl still accepts with a warning.</summary>
    private static TscMode ReadTscMode(XlConfig cfg, List<string> warnings)
    {
        var s = cfg.Find("tsc_mode");
        if (s is null) return TscMode.Default;
        string v = cfg.GetString("tsc_mode")!;
        if (XlConfig.TryParseNumber(v, out long n))
        {
            warnings.Add("WARNING: specifying \"tsc_mode\" as an integer is deprecated. Please use the named parameter variant. e.g. tsc_mode=\"default\"");
            if (n is < 0 or > 3) throw At(cfg, "tsc_mode", $"invalid value \"{v}\" for \"tsc_mode\"");
            return (TscMode)n;
        }
        return v switch
        {
            "default" => TscMode.Default,
            "always_emulate" => TscMode.AlwaysEmulate,
            "native" => TscMode.Native,
            "native_paravirt" => TscMode.NativeParavirt,
            _ => throw At(cfg, "tsc_mode", $"invalid value \"{v}\" for \"tsc_mode\""),
        };
    }

    /// <summary>A list of device specification strings (disk=, vif=), each parsed with its own line in errors.</summary>
    private static IReadOnlyList<T> ReadDevices<T>(XlConfig cfg, string key, Func<string, int, T> parse)
    {
        var items = cfg.GetList(key);
        if (items is null) return [];
        var s = cfg.Find(key)!;
        var list = new List<T>();
        foreach (var item in items)
        {
            if (item.IsList)
                throw XlConfigException.At(s.File, item.Line, $"parameter `{key}' has a list where a string should be");
            try { list.Add(parse(item.Atom!, list.Count)); }
            catch (FormatException e) { throw XlConfigException.At(s.File, item.Line, e.Message); }
        }
        return list;
    }

    /// <summary>Relative paths resolve against the configuration file's directory; a leading
    /// <c>~/</c> is the user's home directory.</summary>
    private static string? ResolvePath(XlConfig cfg, string key)
    {
        string? path = cfg.GetString(key);
        if (string.IsNullOrEmpty(path)) return null;
        // An escape such as \0 can put a NUL in a string; no file name holds one.
        if (path.Contains('\0')) throw At(cfg, key, $"parameter `{key}' contains a NUL character");
        return HostPath(cfg, path);
    }

    private static string HostPath(XlConfig cfg, string path)
    {
        if (path.StartsWith("~/"))
            return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), path[2..]);
        if (Path.IsPathRooted(path)) return path;
        return Path.GetFullPath(Path.Combine(cfg.Directory ?? Environment.CurrentDirectory, path));
    }

    private static XlConfigException At(XlConfig cfg, string key, string what)
    {
        var s = cfg.Find(key)!;
        return XlConfigException.At(s.File, s.Line, what);
    }

    private static long? Positive(XlConfig cfg, string key)
    {
        long? v = cfg.GetLong(key);
        if (v is <= 0) throw At(cfg, key, $"parameter `{key}' must be a positive number, not {v}");
        return v;
    }

    private static ShutdownAction Action(XlConfig cfg, string key, ShutdownAction dflt)
    {
        string? s = cfg.GetString(key);
        if (s is null) return dflt;
        return s switch
        {
            "destroy" => ShutdownAction.Destroy,
            "restart" => ShutdownAction.Restart,
            "rename-restart" => ShutdownAction.RenameRestart,
            "preserve" => ShutdownAction.Preserve,
            "coredump-destroy" => ShutdownAction.CoredumpDestroy,
            "coredump-restart" => ShutdownAction.CoredumpRestart,
            "soft-reset" when key is "on_soft_reset" or "on_reboot" => ShutdownAction.SoftReset,
            _ => throw At(cfg, key, $"Unknown {key} action \"{s}\" specified"),
        };
    }

    private static IReadOnlyList<CpuMap>? ReadCpus(XlConfig cfg, string key, int hostCpus, int maxVcpus, IReadOnlyList<int>? cpuNodes)
    {
        var s = cfg.Find(key);
        if (s is null) return null;
        var texts = s.Value.IsList
            ? s.Value.Items!.Select(i => i.IsList ? throw At(cfg, key, $"parameter `{key}' has a nested list") : i.Atom!).ToList()
            : [s.Value.Atom!];
        var maps = new List<CpuMap>();
        foreach (var t in texts)
        {
            var m = CpuMap.TryParse(t, hostCpus, out var err, cpuNodes) ?? throw At(cfg, key, err!);
            // A vCPU must be allowed somewhere; a preference for nowhere is only pointless.
            if (key == "cpus" && !m.Cpus.Any())
                throw At(cfg, key, $"`{t}' leaves a vCPU no cpu to run on");
            maps.Add(m);
        }
        if (s.Value.IsList && maps.Count > maxVcpus)
            throw At(cfg, key, $"{key} lists {maps.Count} vCPUs but the domain has at most {maxVcpus}");
        return maps;
    }
}
