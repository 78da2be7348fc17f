using XenSharp.Public;

namespace XenSharp.Toolstack.Config;

/// <summary>libxl_domain_type: the guest types xl.cfg's type= names.</summary>
public enum DomainType { Pv, Pvh, Hvm }

/// <summary>What to do when a domain shuts down for a given reason (xl.cfg's on_* ACTION).</summary>
public enum ShutdownAction { Destroy, Restart, RenameRestart, Preserve, CoredumpDestroy, CoredumpRestart, SoftReset }

/// <summary>
/// The typed domain configuration built from an <see cref="XlConfig"/> (the role of libxl's
/// libxl_domain_config as xl fills it in parse_config_data). Sizes are in KiB as in libxl.
/// </summary>
public sealed class DomainConfig
{
    /// <summary>Every setting again under another name and uuid: a restart's next incarnation, which xl builds from
    /// the same configuration (devices, memory, TSC mode and all). Lists and objects are shared, not copied.</summary>
    public DomainConfig CopyAs(string name, Guid uuid)
    {
        var copy = (DomainConfig)MemberwiseClone();
        copy.Name = name;
        copy.Uuid = uuid;
        return copy;
    }

    public required string Name { get; set; }
    public DomainType Type { get; set; }
    public Guid Uuid { get; set; }
    public string? Kernel { get; set; }
    public string? Ramdisk { get; set; }
    /// <summary>xl.cfg bootloader (a PV guest's): the program that takes the kernel, ramdisk and arguments from the
    /// guest's first disk, as libxl runs it ("pygrub" is Xen's own, from its libexec directory).</summary>
    public string? Bootloader { get; set; }
    /// <summary>xl.cfg seclabel: the FLASK label the domain runs under (created under it unless init_seclabel is given).</summary>
    public string? Seclabel { get; set; }
    /// <summary>xl.cfg init_seclabel: the label the domain is created and built under, before it takes seclabel.</summary>
    public string? InitSeclabel { get; set; }
    /// <summary>xl.cfg bootloader_args: passed to the bootloader before the disk.</summary>
    public IReadOnlyList<string> BootloaderArgs { get; set; } = [];
    /// <summary>The assembled kernel command line (cmdline, or root= and extra).</summary>
    public string Cmdline { get; set; } = "";
    public string? Firmware { get; set; }
    public string? FirmwareOverride { get; set; }
    /// <summary>xl.cfg bios: the system firmware hvmloader loads ("seabios" or "ovmf").</summary>
    public string? Bios { get; set; }
    /// <summary>xl.cfg bios_path_override: the file loaded as that firmware instead of the packaged one.</summary>
    public string? BiosPathOverride { get; set; }
    /// <summary>An HVM domain's emulated graphics card, VNC and SDL displays and USB input (QEMU's).</summary>
    public HvmDisplay Display { get; set; } = new() { Vga = VgaKind.None, VideoRamKb = 0, Vnc = false };
    /// <summary>xl.cfg device_model_override: the QEMU binary run as an HVM domain's device model.</summary>
    public string? DeviceModelOverride { get; set; }
    /// <summary>xl.cfg pvshim (type="pvh" only): the PV kernel runs inside Xen's PV shim, which boots as the PVH
    /// domain's kernel with the PV kernel and ramdisk as its modules.</summary>
    public bool PvShim { get; set; }
    /// <summary>xl.cfg pvshim_path: the shim (libxl's default: Xen's firmware directory's xen-shim).</summary>
    public string? PvShimPath { get; set; }
    /// <summary>xl.cfg pvshim_cmdline and pvshim_extra: the shim's own command line (libxl's default
    /// "pv-shim console=xen,pv"), the extra part appended after a space.</summary>
    public string? PvShimCmdline { get; set; }
    public string? PvShimExtra { get; set; }
    /// <summary>xl.cfg serial (a string or a list): where the device model's UARTs go (QEMU's -serial, one each).</summary>
    public IReadOnlyList<string> Serials { get; set; } = [];
    /// <summary>xl.cfg boot: the emulated BIOS's boot order (c disk, d CD-ROM, n network; libxl's default "cda").</summary>
    public string? Boot { get; set; }
    public long TargetMemKb { get; set; }
    public long MaxMemKb { get; set; }
    public int Vcpus { get; set; } = 1;
    public int MaxVcpus { get; set; } = 1;
    /// <summary>Hard affinity per vCPU (null: all host CPUs). One entry means all vCPUs.</summary>
    public IReadOnlyList<CpuMap>? CpusHard { get; set; }
    public IReadOnlyList<CpuMap>? CpusSoft { get; set; }
    public ShutdownAction OnPoweroff { get; set; } = ShutdownAction.Destroy;
    public ShutdownAction OnReboot { get; set; } = ShutdownAction.Restart;
    public ShutdownAction OnCrash { get; set; } = ShutdownAction.Destroy;
    public ShutdownAction OnWatchdog { get; set; } = ShutdownAction.Destroy;
    public ShutdownAction OnSoftReset { get; set; } = ShutdownAction.SoftReset;
    public int CpuWeight { get; set; } = 256;
    public int Cap { get; set; }
    public string? Pool { get; set; }
    public TscMode TscMode { get; set; }
    /// <summary>HVM platform keys: acpi and apic (for the guest's firmware tables), hpet (HVM_PARAM_HPET_ENABLED),
    /// timer_mode (HVM_PARAM_TIMER_MODE, HVMPTM_*), localtime and rtc_timeoffset (the wall clock's offset).</summary>
    public bool Acpi { get; set; } = true;
    public bool Apic { get; set; } = true;
    public bool Hpet { get; set; } = true;
    public int TimerMode { get; set; } = 1;
    /// <summary>altp2m (HVM_PARAM_ALTP2M, XEN_ALTP2M_*): who may use alternate p2m views; 0 (disabled) by default.</summary>
    public int Altp2m { get; set; }
    public bool Localtime { get; set; }
    public long RtcTimeoffset { get; set; }
    /// <summary>disk= and vif= entries (libxl's disks and nics).</summary>
    public IReadOnlyList<DiskSpec> Disks { get; set; } = [];
    public IReadOnlyList<NicSpec> Nics { get; set; } = [];
    /// <summary>The source text of the configuration, kept for restart and for xl list -l.</summary>
    public string? SourceText { get; set; }
    public string? SourceFile { get; set; }

    public static string ActionName(ShutdownAction a) => a switch
    {
        ShutdownAction.Destroy => "destroy",
        ShutdownAction.Restart => "restart",
        ShutdownAction.RenameRestart => "rename-restart",
        ShutdownAction.Preserve => "preserve",
        ShutdownAction.CoredumpDestroy => "coredump-destroy",
        ShutdownAction.CoredumpRestart => "coredump-restart",
        ShutdownAction.SoftReset => "soft-reset",
        _ => a.ToString(),
    };

    public static string TscModeName(TscMode m) => m switch
    {
        TscMode.AlwaysEmulate => "always_emulate",
        TscMode.Native => "native",
        TscMode.NativeParavirt => "native_paravirt",
        _ => "default",
    };

    public static string TypeName(DomainType t) => t switch
    {
        DomainType.Pv => "pv",
        DomainType.Pvh => "pvh",
        _ => "hvm",
    };
}

/// <summary>A set of host CPUs, parsed from xl's CPULIST syntax ("all", "0-3,5,^1", "nodes:0").</summary>
public sealed class CpuMap
{
    private readonly bool[] _cpus;

    public CpuMap(int hostCpus) { _cpus = new bool[hostCpus]; }

    public int Count => _cpus.Length;
    public bool this[int cpu] { get => cpu < _cpus.Length && _cpus[cpu]; set { if (cpu < _cpus.Length) _cpus[cpu] = value; } }
    public bool IsAll => _cpus.All(c => c);
    public IEnumerable<int> Cpus => Enumerable.Range(0, _cpus.Length).Where(i => _cpus[i]);

    public static CpuMap All(int hostCpus)
    {
        var m = new CpuMap(hostCpus);
        for (int i = 0; i < hostCpus; i++) m[i] = true;
        return m;
    }

    /// <summary>
    /// Parses a CPULIST: "all", CPUs and ranges ("0-3,5"), nodes ("node:1", "nodes:0-1": every CPU of those nodes),
    /// each item excluded with a leading "^". <paramref name="cpuNodes"/> gives the node of each host CPU (null: the
    /// host is one node, node 0). Returns null with <paramref name="error"/> set when the text is not a CPULIST or
    /// names a CPU or node the host does not have.
    /// </summary>
    public static CpuMap? TryParse(string text, int hostCpus, out string? error, IReadOnlyList<int>? cpuNodes = null)
    {
        error = null;
        var map = new CpuMap(hostCpus);
        foreach (var raw in text.Split(',', StringSplitOptions.TrimEntries))
        {
            if (raw.Length == 0) { error = $"invalid cpu specification `{text}'"; return null; }
            bool remove = raw.StartsWith('^');
            string item = remove ? raw[1..] : raw;
            IEnumerable<int> cpus;
            if (item == "all")
                cpus = Enumerable.Range(0, hostCpus);
            else if (item.StartsWith("nodes:") || item.StartsWith("node:"))
            {
                string nodes = item[(item.IndexOf(':') + 1)..];
                if (!TryRange(nodes, out int lo, out int hi)) { error = $"invalid node specification `{item}'"; return null; }
                int NodeOf(int c) => cpuNodes is not null && c < cpuNodes.Count ? cpuNodes[c] : 0;
                var hostNodes = Enumerable.Range(0, hostCpus).Select(NodeOf).ToHashSet();
                for (int n = lo; n <= hi; n++)
                    if (!hostNodes.Contains(n)) { error = $"node {n} does not exist (the host has {Plural(hostNodes.Count, "node")})"; return null; }
                cpus = Enumerable.Range(0, hostCpus).Where(c => NodeOf(c) >= lo && NodeOf(c) <= hi);
            }
            else
            {
                if (!TryRange(item, out int lo, out int hi)) { error = $"invalid cpu specification `{text}'"; return null; }
                if (hi >= hostCpus) { error = $"cpu {hi} does not exist (the host has {Plural(hostCpus, "cpu")})"; return null; }
                cpus = Enumerable.Range(lo, hi - lo + 1);
            }
            foreach (int c in cpus) map[c] = !remove;
        }
        return map;
    }

    private static string Plural(int n, string what) => n == 1 ? $"1 {what}" : $"{n} {what}s";

    private static bool TryRange(string s, out int lo, out int hi)
    {
        lo = hi = 0;
        int dash = s.IndexOf('-');
        if (dash < 0) { if (!int.TryParse(s, out lo) || lo < 0) return false; hi = lo; return true; }
        return int.TryParse(s[..dash], out lo) && int.TryParse(s[(dash + 1)..], out hi) && lo >= 0 && hi >= lo;
    }

    /// <summary>xl's compact form: "all" or "0-3,5".</summary>
    public override string ToString()
    {
        if (IsAll) return "all";
        var parts = new List<string>();
        int i = 0;
        while (i < _cpus.Length)
        {
            if (!_cpus[i]) { i++; continue; }
            int j = i;
            while (j + 1 < _cpus.Length && _cpus[j + 1]) j++;
            parts.Add(i == j ? i.ToString() : $"{i}-{j}");
            i = j + 1;
        }
        return parts.Count == 0 ? "none" : string.Join(",", parts);
    }
}
