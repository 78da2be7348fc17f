namespace XenSharp.Hypervisor.Xsm;

/// <summary>
/// One permission of Xen's access vectors (xen/xsm/flask/policy/access_vectors): a class name and a permission name.
/// Xen numbers them at build time from those files; XenSharp finds each by name in the loaded policy
/// (<see cref="SecurityServer"/> resolves them once per load), so a policy declaring Xen's classes in Xen's order
/// agrees with Xen's numbering, and a policy leaving one out is judged by its handle_unknown setting.
/// </summary>
internal sealed class Perm
{
    private static readonly List<Perm> All = [];

    private Perm(string tclass, string name)
    {
        Class = tclass;
        Name = name;
        lock (All)
        {
            Id = All.Count;
            All.Add(this);
        }
    }

    public string Class { get; }
    public string Name { get; }
    public int Id { get; }

    public static IReadOnlyList<Perm> Declared
    {
        get { lock (All) return [.. All]; }
    }

    internal static Perm Of(string tclass, string name) => new(tclass, name);

    public override string ToString() => $"{Class}:{Name}";
}

/// <summary>The permissions XenSharp's hooks check, under Xen's names (SECCLASS_* / PERM__*).</summary>
internal static class Av
{
    // class domain
    public static readonly Perm DomainSetvcpucontext = Perm.Of("domain", "setvcpucontext"), DomainPause = Perm.Of("domain", "pause"),
        DomainUnpause = Perm.Of("domain", "unpause"), DomainResume = Perm.Of("domain", "resume"), DomainCreate = Perm.Of("domain", "create"),
        DomainMaxVcpus = Perm.Of("domain", "max_vcpus"), DomainDestroy = Perm.Of("domain", "destroy"),
        DomainSetaffinity = Perm.Of("domain", "setaffinity"), DomainGetaffinity = Perm.Of("domain", "getaffinity"),
        DomainGetscheduler = Perm.Of("domain", "getscheduler"), DomainGetdomaininfo = Perm.Of("domain", "getdomaininfo"),
        DomainGetvcpuinfo = Perm.Of("domain", "getvcpuinfo"), DomainGetvcpucontext = Perm.Of("domain", "getvcpucontext"),
        DomainGetaddrsize = Perm.Of("domain", "getaddrsize"),
        DomainSetdomainmaxmem = Perm.Of("domain", "setdomainmaxmem"), DomainSetdomainhandle = Perm.Of("domain", "setdomainhandle"),
        DomainSetdebugging = Perm.Of("domain", "setdebugging"), DomainSettime = Perm.Of("domain", "settime"),
        DomainShutdown = Perm.Of("domain", "shutdown"), DomainTransition = Perm.Of("domain", "transition"), DomainTrigger = Perm.Of("domain", "trigger"),
        DomainGetpodtarget = Perm.Of("domain", "getpodtarget"), DomainSetpodtarget = Perm.Of("domain", "setpodtarget"),
        DomainGetpagingmempool = Perm.Of("domain", "getpagingmempool"), DomainSetpagingmempool = Perm.Of("domain", "setpagingmempool");

    // class domain2
    public static readonly Perm Domain2SetCpuPolicy = Perm.Of("domain2", "set_cpu_policy"), Domain2GetCpuPolicy = Perm.Of("domain2", "get_cpu_policy"),
        Domain2Gettsc = Perm.Of("domain2", "gettsc"), Domain2Settsc = Perm.Of("domain2", "settsc"),
        Domain2Setscheduler = Perm.Of("domain2", "setscheduler"), Domain2VmEvent = Perm.Of("domain2", "vm_event"),
        Domain2Relabelfrom = Perm.Of("domain2", "relabelfrom"), Domain2Relabelto = Perm.Of("domain2", "relabelto"),
        Domain2Relabelself = Perm.Of("domain2", "relabelself");

    // class hvm
    public static readonly Perm HvmSethvmc = Perm.Of("hvm", "sethvmc"), HvmGethvmc = Perm.Of("hvm", "gethvmc"),
        HvmSetparam = Perm.Of("hvm", "setparam"), HvmGetparam = Perm.Of("hvm", "getparam");

    // class mmu
    public static readonly Perm MmuMapRead = Perm.Of("mmu", "map_read"), MmuMapWrite = Perm.Of("mmu", "map_write"),
        MmuPageinfo = Perm.Of("mmu", "pageinfo"), MmuAdjust = Perm.Of("mmu", "adjust"), MmuPhysmap = Perm.Of("mmu", "physmap");

    // class shadow
    public static readonly Perm ShadowEnable = Perm.Of("shadow", "enable"), ShadowDisable = Perm.Of("shadow", "disable"),
        ShadowLogdirty = Perm.Of("shadow", "logdirty");

    // class event
    public static readonly Perm EventBind = Perm.Of("event", "bind"), EventSend = Perm.Of("event", "send"),
        EventCreate = Perm.Of("event", "create");

    // class grant
    public static readonly Perm GrantMapRead = Perm.Of("grant", "map_read"), GrantMapWrite = Perm.Of("grant", "map_write"),
        GrantCopy = Perm.Of("grant", "copy");

    // class xen (sysctl)
    public static readonly Perm XenReadconsole = Perm.Of("xen", "readconsole"), XenClearconsole = Perm.Of("xen", "clearconsole"),
        XenPhysinfo = Perm.Of("xen", "physinfo"), XenTbufcontrol = Perm.Of("xen", "tbufcontrol"), XenDebug = Perm.Of("xen", "debug"),
        XenGetcpuinfo = Perm.Of("xen", "getcpuinfo"), XenHeap = Perm.Of("xen", "heap"), XenCpupoolOp = Perm.Of("xen", "cpupool_op"),
        XenGetscheduler = Perm.Of("xen", "getscheduler"), XenSetscheduler = Perm.Of("xen", "setscheduler"),
        XenHypfsOp = Perm.Of("xen", "hypfs_op"), XenMcaOp = Perm.Of("xen", "mca_op");

    // class xen2, resource
    public static readonly Perm Xen2GetCpuFeatureset = Perm.Of("xen2", "get_cpu_featureset"),
        ResourcePlug = Perm.Of("resource", "plug"), ResourceUnplug = Perm.Of("resource", "unplug");

    // class security (the xsm_op itself)
    public static readonly Perm SecurityComputeAv = Perm.Of("security", "compute_av"), SecurityComputeCreate = Perm.Of("security", "compute_create"),
        SecurityComputeMember = Perm.Of("security", "compute_member"), SecurityCheckContext = Perm.Of("security", "check_context"),
        SecurityLoadPolicy = Perm.Of("security", "load_policy"), SecurityComputeRelabel = Perm.Of("security", "compute_relabel"),
        SecuritySetenforce = Perm.Of("security", "setenforce"), SecuritySetbool = Perm.Of("security", "setbool"),
        SecuritySetsecparam = Perm.Of("security", "setsecparam");
}
