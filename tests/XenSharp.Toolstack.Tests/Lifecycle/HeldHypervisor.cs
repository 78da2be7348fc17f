using XenSharp.Public;
using System.Text;
using XenSharp.Cpu;

using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Tests.Lifecycle;

/// <summary>
/// The hypervisor side of the toolstack's lifecycle tests: domains get real memory (built by the
/// domain builder), parameters, event channel ports and pause state, but their vCPUs never run;
/// shutdowns come only from outside, which is what lets the tests drive every on_* action.
/// </summary>
internal sealed class HeldHypervisor : IHypervisor
{
    private readonly StringBuilder _console = new();
    private readonly Lock _lock = new();
    private readonly Dictionary<uint, HeldDomain> _domains = [];
    private readonly List<uint> _heldNotices = [];
    private bool _holdNotices;
    private int _created;

    public int HostCpus { get; } = Environment.ProcessorCount;
    public string Version => "4.14.0-xensharp";
    public string Capabilities => "hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64";

    public event Action<uint>? DomainStateChanged;

    /// <summary>Domain-0's services over the held domains: foreign mappings of their memory and Domain-0 ports
    /// that nothing signals (no vCPU runs); they have no grant tables.</summary>
    public XenSharp.Dom0.IDom0Services Dom0Services => field ??= new HeldDom0(this);

    /// <summary>Machine memory of the held platform: 16 GiB less what its domains' builders populated.</summary>
    public (ulong Total, ulong Free) MachineMemory
    {
        get
        {
            const ulong total = 16UL << 30;
            List<HeldDomain> all;
            lock (_lock) all = [.. _domains.Values];
            return (total, total - (ulong)all.Sum(d => d.State.CurrentMemKb * 1024));
        }
    }

    /// <summary>Runs before each read of a domain's memory by the toolstack (a core dump reads it all).</summary>
    public Action<uint>? Reading { get; set; }

    /// <summary>Domains created so far (restarts included).</summary>
    public int Created => Volatile.Read(ref _created);

    /// <summary>Runs at the start of each domain creation (a test may block there: the toolstack is then building).</summary>
    public Action<uint>? Creating { get; set; }

    /// <summary>Keeps shutdown notifications from the toolstack until <see cref="ReleaseNotices"/>.</summary>
    public void HoldNotices() { lock (_lock) _holdNotices = true; }

    public void ReleaseNotices()
    {
        List<uint> held;
        lock (_lock)
        {
            _holdNotices = false;
            held = [.. _heldNotices];
            _heldNotices.Clear();
        }
        foreach (var id in held) ThreadPool.QueueUserWorkItem(_ => DomainStateChanged?.Invoke(id));
    }

    public IHypervisorDomain CreateDomain(uint domId, DomainCreateInfo info)
    {
        Creating?.Invoke(domId);
        Interlocked.Increment(ref _created);
        var d = new HeldDomain(this, domId, info);
        lock (_lock) _domains[domId] = d;
        ConsoleWrite($"HVM d{domId}: created ({info.Kind.ToString().ToLowerInvariant()}, {info.MaxVcpus} vcpus, no execution engine bound)");
        return d;
    }

    /// <summary>A domain made by <see cref="CreateDomain"/>, for tests that set what its guest would.</summary>
    public IHypervisorDomain Domain(uint domId) { lock (_lock) return _domains[domId]; }

    /// <summary>Destroys the domain as another toolstack would, without telling this one.</summary>
    public void Vanish(uint domId) { lock (_lock) _domains[domId].Vanish(); }

    public string ReadConsole(bool clear)
    {
        lock (_lock)
        {
            string s = _console.ToString();
            if (clear) _console.Clear();
            return s;
        }
    }

    public void ConsoleWrite(string line)
    {
        lock (_lock)
        {
            _console.Append("(XEN) ").Append(line).Append('\n');
            // A ring, as Xen's: keep the newest 64 KiB.
            if (_console.Length > 65536) _console.Remove(0, _console.Length - 65536);
        }
    }

    public void DebugKeys(string keys)
    {
        foreach (char k in keys)
        {
            switch (k)
            {
                case 'h':
                    ConsoleWrite("'h' pressed -> showing installed handlers");
                    ConsoleWrite(" key 'h' (ascii '68') => show this message");
                    ConsoleWrite(" key 'q' (ascii '71') => dump domain (and guest debug) info");
                    break;
                case 'q':
                    ConsoleWrite("'q' pressed -> dumping domain info (now = 0)");
                    lock (_lock)
                        foreach (var d in _domains.Values)
                            ConsoleWrite($"General information for domain {d.DomId}: max_pages={d.Info.MaxMemKb / 4} vcpus={d.Info.MaxVcpus} paused={d.State.Paused}");
                    break;
                default:
                    ConsoleWrite($"'{k}' pressed -> no handler");
                    break;
            }
        }
    }

    internal void Remove(uint domId) { lock (_lock) _domains.Remove(domId); }

    private sealed class HeldDom0(HeldHypervisor owner) : XenSharp.Dom0.IDom0Services
    {
        private int _nextPort;

        private HeldDomain? Find(ushort dom) { lock (owner._lock) return owner._domains.GetValueOrDefault(dom); }

        public void MapGrantRefs(Span<XenSharp.Dom0.GrantMapOp> ops) { foreach (ref var o in ops) o.Status = XenSharp.Public.GrantTable.GNTST_bad_domain; }
        public void UnmapGrantRefs(Span<XenSharp.Dom0.GrantUnmapOp> ops) { foreach (ref var o in ops) o.Status = XenSharp.Public.GrantTable.GNTST_bad_handle; }
        public void CopyGrants(Span<XenSharp.Dom0.GrantCopyOp> ops) { foreach (ref var o in ops) o.Status = XenSharp.Public.GrantTable.GNTST_bad_domain; }

        public long AllocUnboundInGuest(ushort dom, ushort remoteDom, out uint port)
        {
            port = Find(dom)?.AllocUnboundPort(remoteDom) ?? 0;
            return port == 0 ? -XenSharp.Public.Errno.ESRCH : 0;
        }

        public long BindInterdomain(ushort remoteDom, uint remotePort, Action onEvent, out uint localPort) => AllocUnbound(remoteDom, onEvent, out localPort);

        public long AllocUnbound(ushort remoteDom, Action onEvent, out uint localPort)
        {
            localPort = Find(remoteDom) is null ? 0 : (uint)Interlocked.Increment(ref _nextPort);
            return localPort == 0 ? -XenSharp.Public.Errno.ESRCH : 0;
        }

        public long Notify(uint localPort) => 0;
        public long Unbind(uint localPort) => 0;

        public long MapForeign(ushort dom, ulong gfn, bool writable, out XenSharp.Dom0.IForeignMapping? mapping)
        {
            var d = Find(dom);
            mapping = d is null ? null : new Mapping(d.Memory, dom, gfn);
            return d is null ? -XenSharp.Public.Errno.ESRCH : 0;
        }

        private sealed class Mapping(IGuestPhysicalMemory memory, ushort dom, ulong gfn) : XenSharp.Dom0.IForeignMapping
        {
            public ushort DomainId => dom;
            public ulong Gfn => gfn;
            public Span<byte> Span => memory.Page(gfn);
            public void Dispose() { }
        }
    }
    internal void Raise(uint domId)
    {
        lock (_lock)
            if (_holdNotices)
            {
                _heldNotices.Add(domId);
                return;
            }
        DomainStateChanged?.Invoke(domId);
    }

    public void Dispose()
    {
        List<HeldDomain> all;
        lock (_lock) all = [.. _domains.Values];
        foreach (var d in all) d.Dispose();
    }

    private sealed class HeldDomain(HeldHypervisor owner, uint domId, DomainCreateInfo info) : IHypervisorDomain
    {
        private readonly SparseGuestMemory _memory = new((ulong)info.MaxMemKb / 4 + 1024);
        private readonly Dictionary<int, ulong> _params = [];
        private readonly Lock _lock = new();
        private uint _nextPort = 1;
        private bool _paused = true;
        private bool _shutdown;
        private ShutdownReason _reason;
        private int _online = 1;
        private bool _disposed;
        private bool _gone;

        /// <summary>The domain is destroyed behind the toolstack's back (another toolstack's destroydomain), which is
        /// told only later.</summary>
        public void Vanish() { lock (_lock) _gone = true; }

        public uint DomId { get; } = domId;
        public DomainCreateInfo Info { get; } = info;
        public IGuestPhysicalMemory Memory => field ??= new ReadHook(_memory, () => owner.Reading?.Invoke(DomId));

        public void SetVcpuContext(int vcpu, in Registers regs, in SpecialRegisters sregs)
        {
            if (vcpu < 0 || vcpu >= Info.MaxVcpus) throw new ArgumentOutOfRangeException(nameof(vcpu));
        }

        public void SetOnlineVcpus(int count) { lock (_lock) _online = Math.Clamp(count, 1, Info.MaxVcpus); }
        public void SetVcpuAffinity(int vcpu, IReadOnlyList<int>? hard, IReadOnlyList<int>? soft) { }
        public void SetMemoryMap(IReadOnlyList<(ulong Addr, ulong Size, uint Type)> entries) { }

        // No engine is bound: every vCPU is as created, and shared info is all zeroes.
        public XenSharp.Public.ArchX86.VcpuGuestContext GetVcpuContext(int vcpu) => default;
        public void ReadSharedInfo(Span<byte> page) => page.Clear();
        public void SetAcpiSleepControl(ushort pm1aControlPort, int s5SleepType) { }
        public void SetHvmParam(int index, ulong value) { lock (_lock) _params[index] = value; }
        public ulong GetHvmParam(int index) { lock (_lock) return _params.GetValueOrDefault(index); }
        public uint AllocUnboundPort(uint remoteDomId) { lock (_lock) return _nextPort++; }
        public IEventChannelEndpoint BindInterdomain(uint remotePort, Action onEvent) => new Endpoint(remotePort);
        public void Pause() { lock (_lock) _paused = true; }
        public void Unpause() { lock (_lock) _paused = false; }
        public void SetMaxMem(long kb) { }

        public void Shutdown(ShutdownReason reason)
        {
            lock (_lock)
            {
                if (_shutdown) return;
                _shutdown = true;
                _reason = reason;
            }
            owner.ConsoleWrite($"Domain {DomId} shutdown: reason {(int)reason}");
            ThreadPool.QueueUserWorkItem(_ => owner.Raise(DomId));
        }

        public void SendTrigger(string trigger, int vcpu)
        {
            switch (trigger)
            {
                case "power": Shutdown(ShutdownReason.Poweroff); break;
                case "reset": Shutdown(ShutdownReason.Reboot); break;
                case "nmi" or "init" or "sleep" or "s3resume":
                    throw new NotSupportedException($"trigger {trigger} needs a running vCPU, and no execution engine is bound");
                default: throw new ArgumentException($"Invalid trigger \"{trigger}\"");
            }
        }

        public DomainRunInfo State
        {
            get
            {
                lock (_lock)
                    return _gone ? new DomainRunInfo(false, false, false, false, 0, true, 0, 0, 0, Gone: true)
                        : new DomainRunInfo(false, false, _paused, _shutdown, _reason, _disposed, 0, _online,
                        (long)_memory.PopulatedFrames * 4);
            }
        }

        public IReadOnlyList<VcpuRunState> Vcpus
        {
            get
            {
                lock (_lock)
                    return Enumerable.Range(0, Info.MaxVcpus).Select(i => new VcpuRunState(i, i < _online, false, false, -1, 0)).ToList();
            }
        }

        public void Dispose()
        {
            lock (_lock)
            {
                if (_disposed) return;
                _disposed = true;
            }
            _memory.Dispose();
            owner.Remove(DomId);
        }

        private sealed class ReadHook(SparseGuestMemory memory, Action reading) : IGuestPhysicalMemory
        {
            public void Populate(ulong gfn, ulong count) => memory.Populate(gfn, count);
            public void PopulateOnDemand(ulong gfn, ulong count) => memory.PopulateOnDemand(gfn, count);
            public void SetPodTarget(ulong targetPages) => memory.SetPodTarget(targetPages);
            public bool IsPopulated(ulong gfn) => memory.IsPopulated(gfn);
            public ulong MaxGfn => memory.MaxGfn;

            public bool TryReadFrame(ulong gfn, Span<byte> page)
            {
                reading();
                return memory.TryReadFrame(gfn, page);
            }
            public void Write(ulong gpa, ReadOnlySpan<byte> data) => memory.Write(gpa, data);
            public Span<byte> Page(ulong gfn) => memory.Page(gfn);

            public void Read(ulong gpa, Span<byte> data)
            {
                reading();
                memory.Read(gpa, data);
            }
        }

        private sealed class Endpoint(uint port) : IEventChannelEndpoint
        {
            public uint LocalPort { get; } = port;
            public void Notify() { }
            public void Dispose() { }
        }
    }
}
