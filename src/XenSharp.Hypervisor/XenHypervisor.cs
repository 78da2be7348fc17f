using System.Runtime.InteropServices;
using System.Text;
using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.Scheduling;
using XenSharp.Hypervisor.X86;
using XenSharp.Public;
using static XenSharp.Public.GrantTable;

namespace XenSharp.Hypervisor;

/// <summary>
/// The hypervisor (the role of Xen itself) as the daemon hosts it, seen from outside: the assembly's
/// control API, used by the toolstack (domctl/sysctl-shaped calls: create, pause, destroy, list,
/// scheduling, ...) and by Domain-0 services (event channels, foreign and grant mappings). The machinery
/// it drives — machine memory, time and timers, the domain table, the console ring, pCPUs — is
/// <see cref="HostServices"/>, which is what domains and hypercall handlers reach. Domain-0 (domid 0)
/// exists from the start and stands for the host process itself.
/// </summary>
public sealed unsafe partial class XenHypervisor : IDisposable
{
    private readonly HypervisorOptions _options;

    public XenHypervisor(HypervisorOptions? options = null)
    {
        _options = options ?? new HypervisorOptions();
        Services = new HostServices(_options);
        Services.DomainShutDown = RaiseDomainShutdown;
        Services.Control = this;
        Dom0Services = new Dom0Services(this);
        Log($"Xen version {XenVersion.Major}.{XenVersion.Minor}{XenVersion.ExtraVersion} (XenSharp), {Frames.FrameCount >> 8} MiB machine memory, {_options.Pcpus} pCPUs");
    }

    /// <summary>What the control calls act on.</summary>
    internal HostServices Services { get; }

    // The control face's shorthands for the services it uses most.
    internal FrameTable Frames => Services.Frames;
    internal Time Time => Services.Time;
    internal Cpupools Scheduler => Services.Scheduler;
    internal Domain Dom0 => Services.Dom0;
    internal Domain? FindDomain(ushort domid) => Services.FindDomain(domid);
    internal Domain[] AllDomains() => Services.AllDomains();
    internal void Log(string message) => Services.Log(message);

    /// <summary>What Domain-0's kernel offers its backends and the toolstack: grant maps and copies, event
    /// channels, foreign mappings (<see cref="XenSharp.Dom0.IDom0Services"/>).</summary>
    public Dom0Services Dom0Services { get; }

    /// <summary>Where port I/O and MMIO that no emulated device claims go (the device model, when one is attached).</summary>
    public IIoreqServer? IoreqServer { get => Services.IoreqServer; set => Services.IoreqServer = value; }

    /// <summary>A domain shut down (poweroff, reboot, suspend, crash, watchdog, soft_reset). Raised on a thread-pool thread.</summary>
    public event EventHandler<DomainShutdownEventArgs>? DomainShutdown;

    /// <summary>A domain was destroyed, by whoever destroyed it (the daemon's toolstack or a Domain-0 program's
    /// XEN_DOMCTL_destroydomain). Raised on a thread pool thread with the domain's id.</summary>
    public event Action<ushort>? DomainDestroyed;

    /// <summary>A domain was created by a Domain-0 program (XEN_DOMCTL_createdomain). Raised on a thread pool
    /// thread with the domain's id.</summary>
    public event Action<ushort>? DomainCreatedByDom0;

    internal void RaiseDomainCreatedByDom0(ushort domid)
    {
        if (DomainCreatedByDom0 is { } handler)
            ThreadPool.QueueUserWorkItem(_ => handler(domid));
    }

    /// <summary>System time in ns (what guests see as Xen system time).</summary>
    public long SystemTimeNs => Time.NowNs;

    // ================= domains =================

    /// <summary>Creates a paused domain with its vCPUs and no memory; returns its domid.</summary>
    public ushort CreateDomain(DomainCreateConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (config.Vcpus < 1 || config.Vcpus > 128)
            throw new HypervisorException($"a domain needs 1 to 128 vCPUs, not {config.Vcpus}", Errno.EINVAL);
        if (config.MaxGrantFrames < 1)
            throw new HypervisorException("max grant frames must be at least 1", Errno.EINVAL);
        if (Xsm.XsmHooks.DomainCreate(Services, config.Ssidref) is < 0 and var refused)
            throw new HypervisorException($"FLASK refuses a domain labelled with SID {config.Ssidref}", (int)-refused);
        var d = Services.AddDomain(config.DomainId, id =>
        {
            var created = new Domain(Services, id, config.Type, config.MaxMemKiB / 4, config.Vcpus, privileged: config.Privileged)
                { TscMode = config.TscMode, WallclockOffsetNs = config.TimeOffsetSeconds * 1_000_000_000 };
            if (config.Handle is Guid handle)
                created.Handle = handle;
            created.Gnttab.MaxFrames = config.MaxGrantFrames;
            // Like Xen, a domain starts with one grant frame (512 v1 entries) ready for the toolstack's seeds.
            lock (created.Lock)
                created.Gnttab.Grow(1);
            created.Evtchn.MaxPort = config.MaxEventChannels;
            Xsm.XsmHooks.DomainCreated(created, config.Ssidref);
            return created;
        });
        try
        {
            var factory = _options.EngineFactory ?? (m => new X86Engine(m, _options.GuestTscHz / 1000));
            {
                d.Engine = factory(d.GuestMemory);
                foreach (var v in d.Vcpus)
                {
                    int vid = v.Id;
                    v.Cpuid = new XenCpuid(_options.BaseCpuid?.Invoke(vid) ?? new DefaultCpuidPolicy((uint)(2 * vid)), vid,
                        () => (Time.TscToSystemMul, Time.TscShift, Time.TscHz), d.TscMode);
                    if (d.Pv is not null)
                        v.Cpuid = new X86.Pv.PvCpuid(v.Cpuid);
                    v.Engine = d.Engine.CreateVcpu(vid, v.Cpuid);
                    if (d.Pv is null)
                    {
                        v.Engine.InterruptSource = v;
                        // A REP string access to a device is one exit, sent to a device model as one ioreq.
                        if (v.Engine is IX86Vcpu hvm)
                        {
                            hvm.BatchStringIo = true;
                            // Polled timer reads (PIT, PM timer) answered without an exit.
                            if (d.Arch.Platform is not null)
                                hvm.DirectPortReads = new X86.Io.DirectPortReads(v);
                        }
                    }
                    else if (v.Engine is IX86Vcpu x86)
                        x86.InterceptTraps = true; // the PV kernel's traps and hypercalls come to the hypervisor
                }
            }
        }
        catch
        {
            Services.RemoveDomain(d.DomainId);
            d.Teardown();
            throw;
        }
        foreach (var v in d.Vcpus)
            Scheduler.AddVcpu(v);
        Time.UpdateWallclock(d);
        foreach (var v in d.Vcpus)
            Time.UpdateVcpuTime(v);
        Log($"created domain {d.DomainId} ({config.Type}, {config.Vcpus} vCPUs, {config.MaxMemKiB} KiB)");
        Services.TraceBuffers.DomainEvent(Public.Trace.TRC_SCHED_DOM_ADD, d.DomainId);
        return d.DomainId;
    }

    internal Domain Guest(ushort domid)
    {
        var d = FindDomain(domid) ?? throw new HypervisorException($"no domain {domid}", Errno.ESRCH);
        if (d.IsHost)
            throw new HypervisorException("Domain-0 is the host and has no guest state", Errno.EINVAL);
        return d;
    }

    /// <summary>Sets the reservation limit (xl mem-max).</summary>
    public void SetMaxMemory(ushort domid, ulong maxMemKiB) => Guest(domid).MaxPages = maxMemKiB / 4;

    /// <summary>Backs <paramref name="count"/> guest frames from <paramref name="gfn"/> with zeroed RAM.</summary>
    public void PopulatePhysmap(ushort domid, ulong gfn, ulong count)
    {
        var d = Guest(domid);
        for (ulong i = 0; i < count; i++)
            if (!d.PopulateRam(gfn + i))
                throw new HypervisorException(
                    $"cannot populate gfn {gfn + i:x} of domain {domid}: {(d.TotPages >= (long)d.MaxPages ? "over its maximum reservation" : "machine memory exhausted")}",
                    Errno.ENOMEM);
    }

    /// <summary>Makes <paramref name="count"/> guest frames from <paramref name="gfn"/> populate-on-demand
    /// (populate_physmap with XENMEMF_populate_on_demand, from the toolstack).</summary>
    public void PopulateOnDemand(ushort domid, ulong gfn, ulong count)
    {
        long rc = Guest(domid).Pod.MarkPopulateOnDemand(gfn, count);
        if (rc != 0)
            throw new HypervisorException($"cannot mark gfns {gfn:x}+{count:x} of domain {domid} populate-on-demand ({rc})", (int)-rc);
    }

    /// <summary>XENMEM_set_pod_target from the toolstack: sizes the domain's PoD cache for a target of
    /// <paramref name="targetPages"/>; returns what XENMEM_get_pod_target then reports.</summary>
    public PodTarget SetPodTarget(ushort domid, ulong targetPages)
    {
        var d = Guest(domid);
        if (targetPages > d.MaxPages)
            throw new HypervisorException($"PoD target {targetPages} pages is above domain {domid}'s maximum of {d.MaxPages}", Errno.EINVAL);
        long rc = d.Pod.SetMemTarget(targetPages);
        if (rc != 0)
            throw new HypervisorException($"cannot set the PoD target of domain {domid} to {targetPages} pages: machine memory exhausted", (int)-rc);
        return GetPodTarget(domid);
    }

    /// <summary>XENMEM_get_pod_target from the toolstack.</summary>
    public PodTarget GetPodTarget(ushort domid)
    {
        var d = Guest(domid);
        lock (d.Lock)
            return new PodTarget(d.TotPages, d.Pod.Count, d.Pod.EntryCount);
    }

    /// <summary>The e820 that XENMEM_memory_map returns to the guest.</summary>
    public void SetMemoryMap(ushort domid, IReadOnlyList<E820Entry> entries) => Guest(domid).MemoryMap = entries.ToArray();

    public void WriteGuestMemory(ushort domid, ulong gpa, ReadOnlySpan<byte> data)
    {
        if (!GuestAccess.CopyToPhys(Guest(domid), gpa, data))
            throw new HypervisorException($"domain {domid} has no RAM at some of {gpa:x}+{data.Length:x}", Errno.EFAULT);
    }

    public void ReadGuestMemory(ushort domid, ulong gpa, Span<byte> data)
    {
        if (!GuestAccess.CopyFromPhys(Guest(domid), gpa, data))
            throw new HypervisorException($"domain {domid} has no RAM at some of {gpa:x}+{data.Length:x}", Errno.EFAULT);
    }

    public void SetHvmParam(ushort domid, int index, ulong value)
    {
        long rc = HvmOps.SetParam(Guest(domid), index, value);
        if (rc != 0)
            throw new HypervisorException($"HVM param {index} = {value:x} rejected ({rc})", (int)-rc);
    }

    public ulong GetHvmParam(ushort domid, int index)
    {
        var d = Guest(domid);
        if ((uint)index >= (uint)d.Arch.Params.Length)
            throw new HypervisorException($"no HVM param {index}", Errno.EINVAL);
        return d.Arch.Params[index];
    }

    /// <summary>Sets where guest sleep requests arrive: the FADT's PM1a control port and its \_S5 SLP_TYP.</summary>
    public void SetAcpiSleepControl(ushort domid, ushort pm1aControlPort, int s5SleepType) =>
        Guest(domid).Arch.SetAcpiSleepControl(pm1aControlPort, s5SleepType);

    /// <summary>Leaves the PM1a control port to the domain's device model (QEMU's PIIX4 power management), as in Xen.</summary>
    public void ReleaseAcpiSleepControl(ushort domid) => Guest(domid).Arch.ReleaseAcpiSleepControl();

    /// <summary>Writes a v1-layout grant entry into a guest's table (the toolstack's seeding of console/xenstore grants).</summary>
    public void SeedGrantEntry(ushort domid, uint gref, ushort flags, ushort grantee, uint gfn)
    {
        if (!Guest(domid).Gnttab.WriteEntryV1(gref, flags, grantee, gfn))
            throw new HypervisorException($"grant {gref} is beyond the table of domain {domid}", Errno.EINVAL);
    }

    /// <summary>Sets a vCPU's initial registers (applied on its thread before it next runs) and marks it initialised.</summary>
    public void SetVcpuRegisters(ushort domid, int vcpu, in Registers regs, in SpecialRegisters sregs)
    {
        var d = Guest(domid);
        var v = d.GetVcpu((uint)vcpu) ?? throw new HypervisorException($"domain {domid} has no vCPU {vcpu}", Errno.ENOENT);
        var s = sregs;
        // An unset APIC base means the reset value (xAPIC at 0xFEE00000, enabled, BSP for vCPU 0).
        if (s.ApicBase == 0)
            s.ApicBase = v.Arch.Vlapic.ApicBase;
        v.Arch.Vlapic.ApicBase = s.ApicBase;
        if (v.Pv is { } pv)
            pv.ApplyXenState(ref s);
        v.PendingContext = (regs, s);
        v.Initialised = true;
    }

    public void Unpause(ushort domid) => Services.UnpauseDomain(Guest(domid));

    /// <summary>Pauses the domain and returns once none of its vCPUs is on a pCPU.</summary>
    public void Pause(ushort domid) => Services.PauseDomain(Guest(domid));

    /// <summary>XEN_DOMCTL_soft_reset: a domain shut down for a soft reset runs on in place with its memory
    /// (<see cref="Common.SoftReset"/>); refused with the errno Xen gives (EINVAL for a PV domain or one not shut down).</summary>
    public void SoftReset(ushort domid)
    {
        long rc = Common.SoftReset.Do(Guest(domid));
        if (rc < 0)
            throw new HypervisorException($"soft reset of domain {domid} failed", (int)-rc);
    }

    /// <summary>Shuts a domain down as if it asked to (what SCHEDOP_remote_shutdown does).</summary>
    public void Shutdown(ushort domid, ShutdownReason reason) => Services.ShutdownDomain(Guest(domid), (uint)reason);

    private void RaiseDomainShutdown(ushort domid, ShutdownReason reason)
    {
        var handler = DomainShutdown;
        if (handler is not null)
        {
            var args = new DomainShutdownEventArgs(domid, reason);
            ThreadPool.QueueUserWorkItem(_ => handler(this, args));
        }
    }

    /// <summary>Destroys a domain: stops its vCPUs, closes its channels and grants, returns all its memory.</summary>
    public void Destroy(ushort domid)
    {
        var d = Guest(domid);
        lock (d.Lock)
        {
            d.PauseCount++;
            d.IsDying = true;
            d.State = DomainRunState.Dying;
        }
        Services.WaitOffCpu(d);
        foreach (var v in d.Vcpus)
            Scheduler.RemoveVcpu(v);
        d.Teardown();
        Services.RemoveDomain(domid);
        Log($"destroyed domain {domid}");
        Services.TraceBuffers.DomainEvent(Public.Trace.TRC_SCHED_DOM_REM, domid);
        if (DomainDestroyed is { } destroyed)
            ThreadPool.QueueUserWorkItem(_ => destroyed(domid));
        if (_options.TrimHostHeap)
            HostHeap.RequestTrim();
    }

    public IReadOnlyList<DomctlDomainInfo> ListDomains()
    {
        return AllDomains().Select(Info).ToList();
    }

    /// <summary>Starts the pCPU threads (idle until a vCPU is runnable) ahead of the first domain's run.</summary>
    public void StartPcpus() => Services.StartPcpus();

    /// <summary>When the domain last shut down, microseconds since 1970; 0 if it never has.</summary>
    public long ShutdownTime(ushort domid)
    {
        var d = Guest(domid);
        lock (d.Lock) return d.ShutdownAtUnixMicros;
    }

    public DomctlDomainInfo GetDomainInfo(ushort domid) => Info(FindDomain(domid) ?? throw new HypervisorException($"no domain {domid}", Errno.ESRCH));

    private static DomctlDomainInfo Info(Domain d)
    {
        // The state and its reason change together under the domain's lock, the reason set before a shutdown and
        // cleared after a resume: a shut-down state read without its reason is a resume under way, read again.
        var state = d.State;
        uint? reason = d.ShutdownReason;
        for (var spin = new SpinWait(); state == DomainRunState.Shutdown && reason is null; spin.SpinOnce())
        {
            state = d.State;
            reason = d.ShutdownReason;
        }
        return Info(d, state, reason is uint r ? (ShutdownReason)r : null);
    }

    private static DomctlDomainInfo Info(Domain d, DomainRunState state, ShutdownReason? reason) => new(
        d.DomainId, d.Handle, d.Type, state,
        reason,
        d.Vcpus.Any(v => v.IsRunning),
        d.Vcpus.Length > 0 && d.Vcpus.All(v => !v.IsUp || v.Blocked),
        d.Vcpus.Sum(v => Interlocked.Read(ref v.CpuTimeNs)),
        d.TotPages, d.MaxPages, d.Vcpus.Length, d.Vcpus.Count(v => v.IsUp));

    public IReadOnlyList<VcpuListEntry> ListVcpus(ushort domid)
    {
        var d = Guest(domid);
        return d.Vcpus.Select(v => new VcpuListEntry(domid, v.Id, v.IsUp, v.IsRunning, v.Blocked,
            Services.PcpuOf(v), Interlocked.Read(ref v.CpuTimeNs))).ToList();
    }

    /// <summary>The credit scheduler weight of a domain (`xl sched-credit -d D -w W`; default 256).</summary>
    public int GetSchedulerWeight(ushort domid) => Scheduler.PoolOf(Guest(domid)).Scheduler switch
    {
        CreditScheduler => GetCreditParams(domid).Weight,
        Credit2Scheduler => GetCredit2Params(domid).Weight,
        _ => Guest(domid).Weight,
    };

    public void SetSchedulerWeight(ushort domid, int weight)
    {
        if (weight is < 1 or > 65535)
            throw new HypervisorException($"credit weight must be 1..65535, not {weight}", Errno.EINVAL);
        Guest(domid).Weight = weight;
        switch (Scheduler.PoolOf(Guest(domid)).Scheduler)
        {
            case CreditScheduler:
                SetCreditParams(domid, weight);
                break;
            case Credit2Scheduler:
                SetCredit2Params(domid, weight);
                break;
        }
    }

    /// <summary>Raises an NMI on a vCPU (`xl trigger D nmi`).</summary>
    public void SendNmi(ushort domid, int vcpu = 0) => SendTrigger(domid, Domctl.XEN_DOMCTL_SENDTRIGGER_NMI, vcpu);

    /// <summary>
    /// XEN_DOMCTL_sendtrigger. NMI makes the vCPU take an NMI (waking it from HLT). POWER and SLEEP are ACPI button
    /// events: in an HVM domain they set PWRBTN_STS/SLPBTN_STS in the PM1a event block the hypervisor emulates, and its
    /// SCI follows (Xen's hvm_acpi_power_button); a domain without that block (PVH) gets -EINVAL. RESET and INIT are
    /// not triggers Xen's x86 implements (-ENOSYS).
    /// </summary>
    public void SendTrigger(ushort domid, uint trigger, int vcpu)
    {
        var d = Guest(domid);
        var v = vcpu < 0 ? null : d.GetVcpu((uint)vcpu);
        if (v is null)
            throw new HypervisorException($"domain {domid} has no vCPU {vcpu}", Errno.ESRCH);
        switch (trigger)
        {
            case Domctl.XEN_DOMCTL_SENDTRIGGER_NMI:
                v.PendingNmi = true;
                if (v.IsUp)
                    v.Unblock(); // an NMI ends HLT
                v.Engine?.RequestExit();
                Log($"(d{domid}) NMI sent to vcpu {vcpu}");
                return;
            case Domctl.XEN_DOMCTL_SENDTRIGGER_POWER:
            case Domctl.XEN_DOMCTL_SENDTRIGGER_SLEEP:
                if (d.Arch.Platform is { } platform)
                {
                    bool power = trigger == Domctl.XEN_DOMCTL_SENDTRIGGER_POWER;
                    platform.PmTimer.PressButton(power);
                    Log($"(d{domid}) ACPI {(power ? "power" : "sleep")} button pressed");
                    return;
                }
                throw new HypervisorException($"domain {domid} has no ACPI PM event block to raise an SCI from", Errno.EINVAL);
            default:
                throw new HypervisorException($"trigger {trigger} is not implemented", Errno.ENOSYS);
        }
    }

    /// <summary>XEN_SYSCTL_debug_keys: runs each key's handler; its report goes to the console ring (`xl dmesg`).</summary>
    public void DebugKeys(string keys)
    {
        ArgumentNullException.ThrowIfNull(keys);
        foreach (char k in keys)
            KeyHandler.Handle(this, k);
    }

    public PhysInfo GetHostInfo() => new(
        (ulong)Frames.FrameCount << FrameTable.PageShift, (ulong)Frames.FreeFrames << FrameTable.PageShift,
        _options.Pcpus, Scheduler.Name, XenVersion.Major, XenVersion.Minor, XenVersion.ExtraVersion,
        XenVersion.Capabilities, Services.CommandLine, Time.TscHz, Scheduler.OnlineCpus);

    // ================= consoles =================

    /// <summary>Streams a domain's hypervisor console output (console_io and port 0xE9).</summary>
    public IDisposable SubscribeConsole(ushort domid, Action<ReadOnlyMemory<byte>> onOutput) => Guest(domid).Console.Subscribe(onOutput);

    /// <summary>What the domain wrote to the hypervisor console so far (the newest 16 KiB).</summary>
    public byte[] ReadConsoleHistory(ushort domid) => Guest(domid).Console.History();

    /// <summary>The hypervisor's console ring (`xl dmesg`; <paramref name="clear"/> for `xl dmesg -c`).</summary>
    public string ReadDmesg(bool clear = false) => Services.ReadConsole(clear);

    public void Dispose() => Services.Dispose();
}
