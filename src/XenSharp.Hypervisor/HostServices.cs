using System.Text;
using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.Scheduling;
using XenSharp.Hypervisor.X86;
using XenSharp.Public;

namespace XenSharp.Hypervisor;

/// <summary>
/// The hypervisor's own machinery, what domains, vCPUs and hypercall handlers reach through
/// <see cref="Domain.Host"/> (Xen keeps these as globals): machine memory (<see cref="Frames"/>),
/// system time and timers, the domain table, the console ring (<see cref="Log"/>), the cpupools and
/// the pCPU threads, and the domain and vCPU state changes that hypercalls and exits cause (shutdown,
/// pause, bring-up). <see cref="XenHypervisor"/> is the control face over it: the domctl/sysctl-shaped
/// calls of the toolstack and dom0.
/// </summary>
internal sealed class HostServices : IDisposable
{
    private readonly Dictionary<ushort, Domain> _domains = new();
    private readonly List<Pcpu> _pcpus = new();
    private readonly ConsoleRing _ring = new();
    private readonly Dictionary<ushort, StringBuilder> _lineBuffers = new();
    private ushort _nextDomid = 1;
    private bool _pcpusStarted;
    private bool _disposed;

    public HostServices(HypervisorOptions options)
    {
        Options = options;
        Frames = new FrameTable(options.MachineMemoryBytes);
        X86.Pv.PvMm.Register(this);
        Time = new Time(options.GuestTscHz, options.GuestTscAtSystemTime);
        Timers = new Timers(Time, FireTimer, TimeOps.IsCurrent);
        CodeAging = new CodeAging(this, options.TrimHostHeap);
        CodeAging.Start();
        Scheduler = new Cpupools(this, options.Pcpus, options.Scheduler, options.NumaSysfsPath);
        TraceBuffers = new TraceBuffers(this, Scheduler.NrPcpus, baseMfn: Frames.FrameCount);
        Sharing = new Common.MemSharing(this);
        CommandLine = options.CommandLine;
        Dom0 = new Domain(this, 0, DomainKind.Pvh, 0, 0, isHost: true) { State = DomainRunState.Running, PauseCount = 0 };
        _domains[0] = Dom0;
        Flask = options.Flask == Xsm.FlaskMode.Disabled ? null : new Xsm.Flask(this, options.Flask, options.FlaskPolicy);
    }

    public HypervisorOptions Options { get; }
    public FrameTable Frames { get; }

    private X86.Pv.MachToPhys? _machToPhys;
    /// <summary>The M2P table, made with the first PV domain.</summary>
    public X86.Pv.MachToPhys MachToPhys
    {
        get
        {
            if (Volatile.Read(ref _machToPhys) is { } m)
                return m;
            lock (Frames.TypeLock)
                return _machToPhys ??= new X86.Pv.MachToPhys(Frames);
        }
    }
    public X86.Pv.MachToPhys? MachToPhysIfMade => Volatile.Read(ref _machToPhys);
    /// <summary>The live PV domains by domid, for TLB flushes the PV MMU asks of a frame's owner.</summary>
    public readonly System.Collections.Concurrent.ConcurrentDictionary<ushort, X86.Pv.PvDomain> PvDomains = new();
    public Time Time { get; }
    public Timers Timers { get; }
    public CodeAging CodeAging { get; }
    public Cpupools Scheduler { get; }
    /// <summary>The trace buffers xentrace reads (XEN_SYSCTL_tbuf_op).</summary>
    public TraceBuffers TraceBuffers { get; }
    /// <summary>Memory sharing's frames and counts (host-wide, as Xen's).</summary>
    public Common.MemSharing Sharing { get; }
    private X86.HostMca? _mca;
    /// <summary>The pCPUs' machine-check banks (XEN_MC_msrinject, XEN_MC_mceinject).</summary>
    public X86.HostMca Mca => LazyInitializer.EnsureInitialized(ref _mca, () => new X86.HostMca(this));
    public Domain Dom0 { get; }
    /// <summary>FLASK when the host enables it (<see cref="HypervisorOptions.Flask"/>); null is Xen's dummy XSM.</summary>
    public Xsm.Flask? Flask { get; }
    public string CommandLine { get; }
    /// <summary>Where port I/O and MMIO that no emulated device claims go (the device model, when one is attached).</summary>
    public IIoreqServer? IoreqServer { get; set; }

    /// <summary>The control face over these services, which XEN_DOMCTL_* and XEN_SYSCTL_* from a control domain's
    /// toolstack reach (set by <see cref="XenHypervisor"/>).</summary>
    public XenHypervisor? Control { get; set; }

    /// <summary>A domain shut down (after VIRQ_DOM_EXC was sent): the control face tells the toolstack.</summary>
    public Action<ushort, ShutdownReason>? DomainShutDown { get; set; }

    // ================= the domain table =================

    public Domain? FindDomain(ushort domid)
    {
        lock (_domains)
            return _domains.TryGetValue(domid, out var d) && !d.IsDying ? d : null;
    }

    /// <summary>Resolves a domid a guest named (DOMID_SELF or its own id, or any domain when privileged).</summary>
    public Domain? LookupForGuest(Domain caller, ushort domid, out long err)
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

    public Domain[] AllDomains()
    {
        lock (_domains)
            return _domains.Values.OrderBy(d => d.DomainId).ToArray();
    }

    /// <summary>Enters a new domain under <paramref name="wanted"/> or the next free domid, built by
    /// <paramref name="create"/> while the table is held so that no other creation takes the id.</summary>
    public Domain AddDomain(ushort? wanted, Func<ushort, Domain> create)
    {
        lock (_domains)
        {
            ushort id;
            if (wanted is ushort want)
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
            var d = create(id);
            _domains[id] = d;
            return d;
        }
    }

    public void RemoveDomain(ushort domid)
    {
        lock (_domains)
            _domains.Remove(domid);
        lock (_lineBuffers)
            _lineBuffers.Remove(domid);
    }

    // ================= the console ring =================

    /// <summary>A line of the hypervisor's own in its console ring (`xl dmesg`).</summary>
    public void Log(string message) => _ring.WriteLine("(XEN) " + Timestamp() + message);

    /// <summary>Xen's console_timestamps runtime parameter: what starts each line of the console ring.</summary>
    public ConsoleTimestamps ConsoleTimestamps { get; private set; }

    /// <summary>Parses a console_timestamps value as Xen does (a boolean, date, datems, boot, raw or none); -EINVAL otherwise.</summary>
    public long SetConsoleTimestamps(string value)
    {
        if (ConsoleTimestampsExtensions.Parse(value) is not { } mode)
            return -Errno.EINVAL;
        ConsoleTimestamps = mode;
        return 0;
    }

    private string Timestamp()
    {
        switch (ConsoleTimestamps)
        {
            case ConsoleTimestamps.Date:
                return DateTime.UtcNow.ToString("[yyyy-MM-dd HH:mm:ss] ", System.Globalization.CultureInfo.InvariantCulture);
            case ConsoleTimestamps.DateMs:
                return DateTime.UtcNow.ToString("[yyyy-MM-dd HH:mm:ss.fff] ", System.Globalization.CultureInfo.InvariantCulture);
            case ConsoleTimestamps.Boot:
                long ns = Time.NowNs;
                return $"[{ns / 1_000_000_000,5}.{ns % 1_000_000_000 / 1000:D6}] ";
            case ConsoleTimestamps.Raw:
                return $"[{Time.ReadTsc(Time.NowNs):x16}] ";
            default:
                return "";
        }
    }

    /// <summary>The hypervisor file system (__HYPERVISOR_hypfs_op).</summary>
    public HypfsTree Hypfs => _hypfs ??= new HypfsTree(this);
    private HypfsTree? _hypfs;

    /// <summary>The console ring (<paramref name="clear"/> for `xl dmesg -c`).</summary>
    public string ReadConsole(bool clear) => Encoding.UTF8.GetString(_ring.Read(clear));

    /// <summary>The console ring itself, for XEN_SYSCTL_readconsole's indexed reads.</summary>
    public ConsoleRing ConsoleRing => _ring;

    /// <summary>A domain's console_io and port 0xE9 output: to its console stream, and line by line into the ring.</summary>
    public void GuestConsoleWrite(Domain d, ReadOnlySpan<byte> data)
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
                    _ring.WriteLine($"(d{d.DomainId}) {Timestamp()}{line}");
                    line.Clear();
                }
                else if (b != '\r')
                    line.Append((char)b);
            }
        }
    }

    // ================= domain state (domain_pause, domain_unpause, domain_shutdown) =================

    public void UnpauseDomain(Domain d)
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
        if (firstRun && Options.TrimHostHeap)
            HostHeap.RequestTrim();
        StartPcpus();
        foreach (var v in d.Vcpus)
            Scheduler.Wake(v);
    }

    /// <summary>Pauses the domain and returns once none of its vCPUs is on a pCPU.</summary>
    public void PauseDomain(Domain d)
    {
        lock (d.Lock)
        {
            d.PauseCount++;
            if (d.State == DomainRunState.Running)
                d.State = DomainRunState.Paused;
        }
        WaitOffCpu(d);
    }

    public void WaitOffCpu(Domain d)
    {
        if (_pcpus.Any(p => p.Current?.Domain == d && Thread.CurrentThread.Name == $"pcpu{p.Id}"))
            return; // called from one of the domain's own vCPUs: it leaves the CPU when the exit is handled
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        Interlocked.Increment(ref d.OffCpuWaiters);
        try
        {
            while (AnyRunning(d) && DateTime.UtcNow < deadline)
            {
                foreach (var v in d.Vcpus)
                    if (v.IsRunning)
                        v.Engine?.RequestExit();
                // A vCPU leaves at its next block boundary, microseconds away, and wakes this thread as it goes
                // (Vcpu.IsRunning): no spinning or yielding, which on a loaded 2-core host takes the core its
                // thread needs to get there. The timeout covers a vCPU that halts without leaving.
                lock (d.OffCpuSignal)
                    if (AnyRunning(d))
                        Monitor.Wait(d.OffCpuSignal, TimeSpan.FromMilliseconds(1));
            }
        }
        finally { Interlocked.Decrement(ref d.OffCpuWaiters); }
    }

    private static bool AnyRunning(Domain d)
    {
        foreach (var v in d.Vcpus)
            if (v.IsRunning)
                return true;
        return false;
    }

    public void ShutdownDomain(Domain d, uint reason)
    {
        lock (d.Lock)
        {
            if (d.State is DomainRunState.Shutdown or DomainRunState.Dying)
                return;
            // A reason stored earlier with SCHEDOP_shutdown_code wins (as in Xen).
            reason = d.ShutdownCode ?? reason;
            // The reason first: readers do not lock, and one that sees the state must see why (Info).
            d.ShutdownReason = reason;
            d.State = DomainRunState.Shutdown;
            d.ShutdownAtUnixMicros = (DateTime.UtcNow - DateTime.UnixEpoch).Ticks / 10;
        }
        foreach (var v in d.Vcpus)
        {
            v.DescheduleRequested = true;
            v.Engine?.RequestExit();
        }
        Log($"domain {d.DomainId} shut down: {(ShutdownReason)reason}");
        Dom0.Evtchn.SendVirq(null, Xen.VIRQ_DOM_EXC);
        DomainShutDown?.Invoke(d.DomainId, (ShutdownReason)reason);
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

    /// <summary>HLT with interrupts disabled (Xen's hvm_hlt): the vCPU goes down, and with no vCPU of the domain left
    /// up the domain shuts down as powered off.</summary>
    internal void HaltVcpu(Vcpu v)
    {
        TakeDown(v);
        var d = v.Domain;
        if (d.Vcpus.All(x => !x.IsUp))
        {
            Log($"(d{d.DomainId}) all vCPUs offline: powering off");
            ShutdownDomain(d, XenSharp.Public.Sched.SHUTDOWN_poweroff);
        }
    }

    /// <summary>INIT IPI: the vCPU stops and waits for a start-up IPI.</summary>
    internal void InitVcpu(Vcpu v)
    {
        v.Arch.Reset();
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
            ApicBase = v.Arch.Vlapic.ApicBase,
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

    // ================= pCPUs =================

    /// <summary>Starts the pCPU threads when the first vCPU can run.</summary>
    internal void StartPcpus()
    {
        lock (_pcpus)
        {
            if (_pcpusStarted || _disposed)
                return;
            _pcpusStarted = true;
            for (int i = 0; i < Math.Max(1, Options.Pcpus); i++)
            {
                var p = new Pcpu(this, Scheduler, i);
                _pcpus.Add(p);
                p.Start();
            }
        }
    }

    /// <summary>The pCPU <paramref name="v"/> is running on, or null.</summary>
    public int? PcpuOf(Vcpu v) => _pcpus.FirstOrDefault(p => p.Current == v)?.Id;

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
            case IDeviceTimer t when kind == TimerKind.Device && !t.Domain.IsDying:
                t.OnTimer(now);
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
        TraceBuffers.Dispose();
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
