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
/// The hypervisor (the role of Xen itself) as one object hosted by the daemon: machine memory, domains,
/// pCPUs and their scheduler, timers, the console ring. This class is the assembly's control API, used by
/// the toolstack (domctl/sysctl-like calls) and by Domain-0 services (event channels, foreign and grant
/// mappings). Domain-0 (domid 0) exists from the start and stands for the host process itself.
/// </summary>
public sealed unsafe partial class XenHypervisor : IDisposable
{
    private readonly HypervisorOptions _options;
    private readonly Dictionary<ushort, Domain> _domains = new();
    private readonly List<Pcpu> _pcpus = new();
    private readonly ConsoleRing _ring = new();
    private readonly Dictionary<ushort, StringBuilder> _lineBuffers = new();
    private ushort _nextDomid = 1;
    private bool _pcpusStarted;
    private bool _disposed;

    public XenHypervisor(HypervisorOptions? options = null)
    {
        _options = options ?? new HypervisorOptions();
        Frames = new FrameTable(_options.MachineMemoryBytes);
        Time = new Time(_options.GuestTscHz, _options.GuestTscAtSystemTime);
        Timers = new Timers(Time, FireTimer);
        CodeAging = new CodeAging(this, _options.TrimHostHeap);
        CodeAging.Start();
        Scheduler = new Cpupools(this, _options.Pcpus, _options.Scheduler, _options.NumaSysfsPath);
        CommandLine = _options.CommandLine;
        Dom0 = new Domain(this, 0, DomainType.Pvh, 0, 0, isHost: true) { State = DomainRunState.Running, PauseCount = 0 };
        _domains[0] = Dom0;
        Log($"Xen version {XenVersion.Major}.{XenVersion.Minor}{XenVersion.ExtraVersion} (XenSharp), {Frames.FrameCount >> 8} MiB machine memory, {_options.Pcpus} pCPUs");
    }

    internal FrameTable Frames { get; }
    internal Time Time { get; }
    internal Timers Timers { get; }
    internal CodeAging CodeAging { get; }
    internal Cpupools Scheduler { get; }
    internal Domain Dom0 { get; }
    internal string CommandLine { get; }

    /// <summary>Emulates the I/O ports the hypervisor does not (set by the device model).</summary>
    public IPortIoHandler? DeviceModel { get; set; }

    /// <summary>A domain shut down (poweroff, reboot, suspend, crash, watchdog, soft_reset). Raised on a thread-pool thread.</summary>
    public event EventHandler<DomainShutdownEventArgs>? DomainShutdown;

    /// <summary>System time in ns (what guests see as Xen system time).</summary>
    public long SystemTimeNs => Time.NowNs;

    // ================= domains =================

    /// <summary>Creates a paused domain with its vCPUs and no memory; returns its domid.</summary>
    public ushort CreateDomain(DomainConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (config.Vcpus < 1 || config.Vcpus > 128)
            throw new HypervisorException($"a domain needs 1 to 128 vCPUs, not {config.Vcpus}", Errno.EINVAL);
        if (config.MaxGrantFrames < 1)
            throw new HypervisorException("max grant frames must be at least 1", Errno.EINVAL);
        Domain d;
        lock (_domains)
        {
            ushort id;
            if (config.DomainId is ushort want)
            {
                if (want == 0 || want >= Xen.DOMID_FIRST_RESERVED)
                    throw new HypervisorException($"domid {want} is reserved", Errno.EINVAL);
                if (_domains.ContainsKey(want))
                    throw new HypervisorException($"domain {want} already exists", Errno.EEXIST);
                id = want;
            }
            else
            {
                id = 0;
                for (int tries = 0; tries < Xen.DOMID_FIRST_RESERVED; tries++)
                {
                    ushort c = _nextDomid;
                    _nextDomid = (ushort)(_nextDomid + 1 >= Xen.DOMID_FIRST_RESERVED ? 1 : _nextDomid + 1);
                    if (!_domains.ContainsKey(c))
                    {
                        id = c;
                        break;
                    }
                }
                if (id == 0)
                    throw new HypervisorException("no free domain id", Errno.ENOSPC);
            }
            d = new Domain(this, id, config.Type, config.MaxMemKiB / 4, config.Vcpus, privileged: config.Privileged) { TscMode = config.TscMode };
            d.Gnttab.MaxFrames = config.MaxGrantFrames;
            // Like Xen, a domain starts with one grant frame (512 v1 entries) ready for the toolstack's seeds.
            lock (d.Lock)
                d.Gnttab.Grow(1);
            d.Evtchn.MaxPort = config.MaxEventChannels;
            _domains[id] = d;
        }
        try
        {
            var factory = _options.EngineFactory ?? (m => new X86Engine(m, _options.GuestTscHz / 1000));
            {
                d.Engine = factory(d.P2m);
                foreach (var v in d.Vcpus)
                {
                    int vid = v.Id;
                    v.Cpuid = new XenCpuid(_options.BaseCpuid?.Invoke(vid) ?? new DefaultCpuidPolicy((uint)(2 * vid)), vid,
                        () => (Time.TscToSystemMul, Time.TscShift, Time.TscHz), d.TscMode);
                    v.Engine = d.Engine.CreateVcpu(vid, v.Cpuid);
                    v.Engine.InterruptSource = v;
                }
            }
        }
        catch
        {
            lock (_domains)
                _domains.Remove(d.DomainId);
            d.Teardown();
            throw;
        }
        foreach (var v in d.Vcpus)
            Scheduler.AddVcpu(v);
        Time.UpdateWallclock(d);
        foreach (var v in d.Vcpus)
            Time.UpdateVcpuTime(v);
        Log($"created domain {d.DomainId} ({config.Type}, {config.Vcpus} vCPUs, {config.MaxMemKiB} KiB)");
        return d.DomainId;
    }

    internal Domain? FindDomain(ushort domid)
    {
        lock (_domains)
            return _domains.TryGetValue(domid, out var d) && !d.IsDying ? d : null;
    }

    private Domain Guest(ushort domid)
    {
        var d = FindDomain(domid) ?? throw new HypervisorException($"no domain {domid}", Errno.ESRCH);
        if (d.IsHost)
            throw new HypervisorException("Domain-0 is the host and has no guest state", Errno.EINVAL);
        return d;
    }

    /// <summary>Resolves a domid a guest named (DOMID_SELF or its own id, or any domain when privileged).</summary>
    internal Domain? LookupForGuest(Domain caller, ushort domid, out long err)
    {
        err = 0;
        if (domid == Xen.DOMID_SELF || domid == caller.DomainId)
            return caller;
        var t = FindDomain(domid);
        if (t is null)
        {
            err = -Errno.ESRCH;
            return null;
        }
        if (!caller.IsPrivileged)
        {
            err = -Errno.EPERM;
            return null;
        }
        return t;
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
        if ((uint)index >= (uint)d.HvmParams.Length)
            throw new HypervisorException($"no HVM param {index}", Errno.EINVAL);
        return d.HvmParams[index];
    }

    /// <summary>Sets where guest sleep requests arrive: the FADT's PM1a control port and its \_S5 SLP_TYP.</summary>
    public void SetAcpiSleepControl(ushort domid, ushort pm1aControlPort, int s5SleepType)
    {
        var d = Guest(domid);
        d.Pm1aControlPort = pm1aControlPort;
        d.S5SleepType = s5SleepType;
    }

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
            s.ApicBase = v.Lapic.ApicBase;
        v.Lapic.ApicBase = s.ApicBase;
        v.PendingContext = (regs, s);
        v.Initialised = true;
    }

    public void Unpause(ushort domid) => UnpauseInternal(Guest(domid));

    internal void UnpauseInternal(Domain d)
    {
        bool firstRun = false;
        lock (d.Lock)
        {
            if (d.PauseCount > 0)
                d.PauseCount--;
            if (d.PauseCount == 0 && d.State == DomainRunState.Paused)
            {
                d.State = DomainRunState.Running;
                firstRun = !d.HasRun;
                d.HasRun = true;
            }
        }
        // The build is over: its kernel images are garbage.
        if (firstRun && _options.TrimHostHeap)
            HostHeap.RequestTrim();
        StartPcpus();
        foreach (var v in d.Vcpus)
            Scheduler.Wake(v);
    }

    /// <summary>Pauses the domain and returns once none of its vCPUs is on a pCPU.</summary>
    public void Pause(ushort domid) => PauseInternal(Guest(domid));

    internal void PauseInternal(Domain d)
    {
        lock (d.Lock)
        {
            d.PauseCount++;
            if (d.State == DomainRunState.Running)
                d.State = DomainRunState.Paused;
        }
        WaitOffCpu(d);
    }

    private void WaitOffCpu(Domain d)
    {
        if (_pcpus.Any(p => p.Current?.Domain == d && Thread.CurrentThread.Name == $"pcpu{p.Id}"))
            return; // called from one of the domain's own vCPUs: it leaves the CPU when the exit is handled
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (d.Vcpus.Any(v => v.IsRunning) && DateTime.UtcNow < deadline)
        {
            foreach (var v in d.Vcpus)
                if (v.IsRunning)
                    v.Engine?.RequestExit();
            Thread.Sleep(1);
        }
    }

    /// <summary>Shuts a domain down as if it asked to (what SCHEDOP_remote_shutdown does).</summary>
    public void Shutdown(ushort domid, ShutdownReason reason) => ShutdownDomain(Guest(domid), (uint)reason);

    internal void ShutdownDomain(Domain d, uint reason)
    {
        lock (d.Lock)
        {
            if (d.State is DomainRunState.Shutdown or DomainRunState.Dying)
                return;
            // A reason stored earlier with SCHEDOP_shutdown_code wins (as in Xen).
            reason = d.ShutdownCode ?? reason;
            d.State = DomainRunState.Shutdown;
            d.ShutdownReason = reason;
        }
        foreach (var v in d.Vcpus)
        {
            v.DescheduleRequested = true;
            v.Engine?.RequestExit();
        }
        Log($"domain {d.DomainId} shut down: {(ShutdownReason)reason}");
        Dom0.Evtchn.SendVirq(null, Xen.VIRQ_DOM_EXC);
        var handler = DomainShutdown;
        if (handler is not null)
        {
            var args = new DomainShutdownEventArgs(d.DomainId, (ShutdownReason)reason);
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
        WaitOffCpu(d);
        foreach (var v in d.Vcpus)
            Scheduler.RemoveVcpu(v);
        d.Teardown();
        lock (_domains)
            _domains.Remove(domid);
        lock (_lineBuffers)
            _lineBuffers.Remove(domid);
        Log($"destroyed domain {domid}");
        if (_options.TrimHostHeap)
            HostHeap.RequestTrim();
    }

    public IReadOnlyList<DomainInfo> ListDomains()
    {
        Domain[] all;
        lock (_domains)
            all = _domains.Values.OrderBy(d => d.DomainId).ToArray();
        return all.Select(Info).ToList();
    }

    public DomainInfo GetDomainInfo(ushort domid) => Info(FindDomain(domid) ?? throw new HypervisorException($"no domain {domid}", Errno.ESRCH));

    private static DomainInfo Info(Domain d) => new(
        d.DomainId, d.Handle, d.Type, d.State,
        d.ShutdownReason is uint r ? (ShutdownReason)r : null,
        d.Vcpus.Any(v => v.IsRunning),
        d.Vcpus.Length > 0 && d.Vcpus.All(v => !v.IsUp || v.Blocked),
        d.Vcpus.Sum(v => Interlocked.Read(ref v.CpuTimeNs)),
        d.TotPages, d.MaxPages, d.Vcpus.Length, d.Vcpus.Count(v => v.IsUp));

    public IReadOnlyList<VcpuListEntry> ListVcpus(ushort domid)
    {
        var d = Guest(domid);
        return d.Vcpus.Select(v => new VcpuListEntry(domid, v.Id, v.IsUp, v.IsRunning, v.Blocked,
            _pcpus.FirstOrDefault(p => p.Current == v)?.Id, Interlocked.Read(ref v.CpuTimeNs))).ToList();
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
    /// events that reach a guest only through an emulated PM block and its SCI; XenSharp's PVH/HVM domains have no
    /// such interrupt path, so they fail as Xen fails them for a domain without one (-EINVAL). RESET and INIT are not
    /// triggers Xen's x86 implements (-ENOSYS).
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

    internal Domain[] AllDomains()
    {
        lock (_domains)
            return _domains.Values.OrderBy(d => d.DomainId).ToArray();
    }

    public HostInfo GetHostInfo() => new(
        (ulong)Frames.FrameCount << FrameTable.PageShift, (ulong)Frames.FreeFrames << FrameTable.PageShift,
        _options.Pcpus, Scheduler.Name, XenVersion.Major, XenVersion.Minor, XenVersion.ExtraVersion,
        XenVersion.Capabilities, CommandLine, Time.TscHz);

    // ================= consoles =================

    /// <summary>Streams a domain's hypervisor console output (console_io and port 0xE9).</summary>
    public IDisposable SubscribeConsole(ushort domid, Action<ReadOnlyMemory<byte>> onOutput) => Guest(domid).Console.Subscribe(onOutput);

    /// <summary>What the domain wrote to the hypervisor console so far (the newest 16 KiB).</summary>
    public byte[] ReadConsoleHistory(ushort domid) => Guest(domid).Console.History();

    /// <summary>The hypervisor's console ring (`xl dmesg`; <paramref name="clear"/> for `xl dmesg -c`).</summary>
    public string ReadDmesg(bool clear = false) => Encoding.UTF8.GetString(_ring.Read(clear));

    internal void Log(string message) => _ring.WriteLine("(XEN) " + message);

    internal void GuestConsoleWrite(Domain d, ReadOnlySpan<byte> data)
    {
        d.Console.Write(data);
        StringBuilder line;
        lock (_lineBuffers)
        {
            if (!_lineBuffers.TryGetValue(d.DomainId, out line!))
                _lineBuffers[d.DomainId] = line = new StringBuilder();
        }
        lock (line)
        {
            foreach (byte b in data)
            {
                if (b == '\n' || line.Length >= 1024)
                {
                    _ring.WriteLine($"(d{d.DomainId}) {line}");
                    line.Clear();
                }
                else if (b != '\r')
                    line.Append((char)b);
            }
        }
    }

    // ================= Domain-0 services =================

    /// <summary>Allocates a port in guest <paramref name="domid"/> that <paramref name="remoteDomid"/> (by default Domain-0) may bind.</summary>
    public uint AllocUnboundEventChannel(ushort domid, ushort remoteDomid = 0)
    {
        long rc = Guest(domid).Evtchn.AllocUnbound(remoteDomid, out uint port);
        if (rc != 0)
            throw new HypervisorException($"no free event channel in domain {domid}", (int)-rc);
        return port;
    }

    /// <summary>Binds a Domain-0 port to an unbound guest port offered to Domain-0; <paramref name="onEvent"/> runs when the guest notifies
    /// (on the notifying thread: keep it short and non-blocking).</summary>
    public Dom0EventChannel BindInterdomain(ushort remoteDomid, uint remotePort, Action onEvent)
    {
        var remote = Guest(remoteDomid);
        long rc = Dom0.Evtchn.BindInterdomain(remote, remotePort, out uint local, onEvent);
        if (rc != 0)
            throw new HypervisorException($"port {remotePort} of domain {remoteDomid} is not an unbound port for Domain-0", (int)-rc);
        return new Dom0EventChannel(this, local, remoteDomid);
    }

    /// <summary>Allocates a Domain-0 port that guest <paramref name="remoteDomid"/> may bind with EVTCHNOP_bind_interdomain.</summary>
    public Dom0EventChannel AllocUnboundInDom0(ushort remoteDomid, Action onEvent)
    {
        Guest(remoteDomid);
        long rc = Dom0.Evtchn.AllocUnbound(remoteDomid, out uint port, onEvent);
        if (rc != 0)
            throw new HypervisorException("no free event channel in Domain-0", (int)-rc);
        return new Dom0EventChannel(this, port, remoteDomid);
    }

    internal void Dom0Send(uint port) => Dom0.Evtchn.Send(port);
    internal void Dom0Close(uint port) => Dom0.Evtchn.Close(port);

    /// <summary>Maps a RAM frame of a guest into the host (privcmd's foreign mapping).</summary>
    public GuestMapping MapGuestFrame(ushort domid, ulong gfn, bool writable = true)
    {
        var d = Guest(domid);
        uint mfn;
        lock (d.Lock)
        {
            if (!d.P2m.TryLookup(gfn, out mfn, out var t) || t is not (P2mType.RamRw or P2mType.RamRo or P2mType.XenShared))
                throw new HypervisorException($"domain {domid} has no RAM at gfn {gfn:x}", Errno.EINVAL);
            if (writable && t == P2mType.RamRo)
                throw new HypervisorException($"gfn {gfn:x} of domain {domid} is read-only", Errno.EACCES);
            Frames.AddRef(mfn);
        }
        return new GuestMapping(Frames.PageAddress(mfn), domid, gfn, writable, () => Frames.Release(mfn, dropRef: true));
    }

    /// <summary>Maps grant <paramref name="gref"/> of domain <paramref name="domid"/> into the host; returns the GNTST_* status.</summary>
    public short TryMapGrant(ushort domid, uint gref, bool readOnly, out GrantMapping? mapping)
    {
        mapping = null;
        var op = new GnttabMapGrantRef { Dom = domid, Ref = gref, Flags = GNTMAP_host_map | (readOnly ? GNTMAP_readonly : 0) };
        short st = Dom0.Gnttab.Map(ref op, host: true, out byte* p);
        if (st != GNTST_okay)
            return st;
        uint handle = op.Handle;
        mapping = new GrantMapping(p, domid, gref, readOnly, () => Dom0.Gnttab.Unmap(handle, 0, host: true));
        return GNTST_okay;
    }

    /// <summary>Copies from a granted page (GNTTABOP_copy with a source gref); returns the GNTST_* status.</summary>
    public short GrantCopyFrom(ushort domid, uint gref, int offset, Span<byte> destination)
    {
        short st = PinForHostCopy(domid, gref, offset, destination.Length, write: false, out var d, out uint mfn);
        if (st != GNTST_okay)
            return st;
        new ReadOnlySpan<byte>(Frames.PageAddress(mfn) + offset, destination.Length).CopyTo(destination);
        d!.Gnttab.ReleasePin(gref, mfn, readOnly: true);
        return GNTST_okay;
    }

    /// <summary>Copies into a granted page (GNTTABOP_copy with a destination gref); returns the GNTST_* status.</summary>
    public short GrantCopyTo(ushort domid, uint gref, int offset, ReadOnlySpan<byte> source)
    {
        short st = PinForHostCopy(domid, gref, offset, source.Length, write: true, out var d, out uint mfn);
        if (st != GNTST_okay)
            return st;
        source.CopyTo(new Span<byte>(Frames.PageAddress(mfn) + offset, source.Length));
        d!.Gnttab.ReleasePin(gref, mfn, readOnly: false);
        return GNTST_okay;
    }

    private short PinForHostCopy(ushort domid, uint gref, int offset, int length, bool write, out Domain? d, out uint mfn)
    {
        mfn = 0;
        d = null;
        if (offset < 0 || length < 0 || offset + length > FrameTable.PageSize)
            return GNTST_bad_copy_arg;
        d = FindDomain(domid);
        if (d is null || d.IsHost)
            return GNTST_bad_domain;
        short st = d.Gnttab.Acquire(0, gref, readOnly: !write, allowSubPage: true, out mfn, out int subOff, out int subLen);
        if (st != GNTST_okay)
            return st;
        if (offset < subOff || offset + length > subOff + subLen)
        {
            d.Gnttab.ReleasePin(gref, mfn, readOnly: !write);
            return GNTST_general_error;
        }
        return GNTST_okay;
    }

    // ================= vCPU lifecycle (used by vcpu_op and the vLAPIC) =================

    internal void BringUp(Vcpu v)
    {
        v.IsUp = true;
        v.WaitForSipi = false;
        v.SetRunstate(Runstate.Runnable, Time.NowNs);
        StartPcpus();
        Scheduler.Wake(v);
    }

    internal void TakeDown(Vcpu v)
    {
        v.IsUp = false;
        v.DescheduleRequested = true;
        v.Engine?.RequestExit();
    }

    /// <summary>INIT IPI: the vCPU stops and waits for a start-up IPI.</summary>
    internal void InitVcpu(Vcpu v)
    {
        v.Lapic.Reset();
        v.WaitForSipi = true;
        if (v.IsUp)
            TakeDown(v);
    }

    /// <summary>Start-up IPI: a vCPU waiting after INIT starts in real mode at vector × 4096.</summary>
    internal void StartupVcpu(Vcpu v, byte vector)
    {
        if (!v.WaitForSipi)
            return;
        var regs = new Registers { Rip = 0, Rflags = 2 };
        var code = new Segment { Selector = (ushort)(vector << 8), Base = (ulong)vector << 12, Limit = 0xFFFF, Attributes = 0x9B };
        var data = new Segment { Limit = 0xFFFF, Attributes = 0x93 };
        var sregs = new SpecialRegisters
        {
            Cs = code, Ds = data, Es = data, Fs = data, Gs = data, Ss = data,
            Tr = new Segment { Limit = 0xFFFF, Attributes = 0x8B },
            Ldt = new Segment { Limit = 0xFFFF, Attributes = 0x82 },
            Gdt = new DescriptorTable { Limit = 0xFFFF },
            Idt = new DescriptorTable { Limit = 0xFFFF },
            Cr0 = 0x60000010,
            ApicBase = v.Lapic.ApicBase,
        };
        v.PendingContext = (regs, sregs);
        v.Initialised = true;
        v.Blocked = false;
        BringUp(v);
    }

    internal bool IsAmdVendor(Vcpu v)
    {
        if (v.Cpuid is null)
            return false;
        v.Cpuid.Cpuid(0, 0, out _, out uint ebx, out _, out _);
        return ebx is 0x68747541 /* Auth */ or 0x6f677948 /* Hygo */;
    }

    internal void StartPcpus()
    {
        lock (_pcpus)
        {
            if (_pcpusStarted || _disposed)
                return;
            _pcpusStarted = true;
            for (int i = 0; i < Math.Max(1, _options.Pcpus); i++)
            {
                var p = new Pcpu(this, Scheduler, i);
                _pcpus.Add(p);
                p.Start();
            }
        }
    }

    private void FireTimer(object owner, TimerKind kind, long now)
    {
        switch (owner)
        {
            case Vcpu v when !v.Domain.IsDying:
                TimeOps.Fire(v, kind, now);
                break;
            case Domain d when kind == TimerKind.Watchdog && !d.IsDying:
                SchedOp.CheckWatchdogs(d, now);
                break;
            case CodeAging aging:
                aging.Fire();
                break;
        }
    }

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        lock (_pcpus)
            foreach (var p in _pcpus)
                p.Stop();
        Scheduler.Dispose();
        Timers.Dispose();
        Domain[] all;
        lock (_domains)
            all = _domains.Values.ToArray();
        foreach (var d in all)
        {
            d.IsDying = true;
            d.Teardown();
        }
        Frames.Dispose();
    }
}
