using XenSharp.Cpu;
using XenSharp.Hypervisor;
using XenSharp.Public;
using Hv = XenSharp.Hypervisor;

namespace XenSharp.Toolstack.Platform;

/// <summary>
/// <see cref="IHypervisor"/> bound to XenSharp's hypervisor (<see cref="XenHypervisor"/>): domains
/// really run on the x86 engine, on the hypervisor's pCPU threads.
/// </summary>
public sealed class XenHypervisorPlatform : IHypervisor, IScheduling
{
    private readonly XenHypervisor _hv;
    private readonly bool _owns;

    public XenHypervisorPlatform(XenHypervisor hv, bool ownsHypervisor = true)
    {
        _hv = hv;
        _owns = ownsHypervisor;
        _hv.DomainShutdown += (_, e) => DomainStateChanged?.Invoke(e.DomainId);
        _hv.DomainDestroyed += id => DomainDestroyed?.Invoke(id);
        _hv.DomainCreatedByDom0 += id => DomainCreatedOutside?.Invoke(id);
    }

    public event Action<uint>? DomainDestroyed;
    public event Action<uint>? DomainCreatedOutside;

    public ForeignDomain? AdoptDomain(uint domId)
    {
        if (domId == 0 || domId > ushort.MaxValue)
            return null;
        DomctlDomainInfo info;
        try { info = _hv.GetDomainInfo((ushort)domId); }
        catch (HypervisorException) { return null; }
        return new ForeignDomain(new Domain(_hv, (ushort)domId), info.Handle, info.Vcpus, info.Type);
    }

    public bool HasDomain(uint domId) => domId <= ushort.MaxValue && _hv.ListDomains().Any(x => x.DomainId == domId);

    public XenHypervisor Hypervisor => _hv;

    public XenSharp.Dom0.IDom0Services Dom0Services => _hv.Dom0Services;

    public int HostCpus => _hv.GetHostInfo().Pcpus;
    public int OnlineHostCpus => _hv.GetHostInfo().OnlinePcpus;

    public string Version
    {
        get
        {
            var h = _hv.GetHostInfo();
            return $"{h.XenMajor}.{h.XenMinor}{h.XenExtra}";
        }
    }

    public string Capabilities => _hv.GetHostInfo().Capabilities;

    public (ulong Total, ulong Free) MachineMemory
    {
        get
        {
            var h = _hv.GetHostInfo();
            return (h.TotalMemoryBytes, h.FreeMemoryBytes);
        }
    }

    public event Action<uint>? DomainStateChanged;

    public IScheduling Scheduling => this;

    public IReadOnlyList<CpupoolInfo> ListCpupools() => _hv.ListCpupools();
    public IReadOnlyList<int> FreeCpus => _hv.GetFreeCpus();
    public IReadOnlyList<int> CpuNodes => _hv.CpuNodes;
    public int CreateCpupool(string name, string scheduler, IEnumerable<int> cpus) => _hv.CreateCpupool(name, scheduler, cpus);
    public void DestroyCpupool(int poolId) => _hv.DestroyCpupool(poolId);
    public void RenameCpupool(int poolId, string newName) => _hv.RenameCpupool(poolId, newName);
    public void CpupoolAddCpu(int poolId, int cpu) => _hv.CpupoolAddCpu(poolId, cpu);
    public void CpupoolRemoveCpu(int poolId, int cpu) => _hv.CpupoolRemoveCpu(poolId, cpu);
    public void CpupoolMigrate(uint domId, int poolId) => _hv.CpupoolMigrate((ushort)domId, poolId);
    public IReadOnlyList<int> CpupoolNumaSplit() => _hv.CpupoolNumaSplit();
    public int DomainCpupool(uint domId) => _hv.GetDomainCpupool((ushort)domId);
    public CreditParams GetCreditParams(uint domId) => _hv.GetCreditParams((ushort)domId);
    public void SetCreditParams(uint domId, int? weight, int? cap) => _hv.SetCreditParams((ushort)domId, weight, cap);
    public CreditPoolParams GetCreditPoolParams(int poolId) => _hv.GetCreditPoolParams(poolId);
    public void SetCreditPoolParams(int poolId, int? tsliceMs, int? ratelimitUs, int? migrationDelayUs = null) =>
        _hv.SetCreditPoolParams(poolId, tsliceMs, ratelimitUs, migrationDelayUs);
    public CreditParams GetCredit2Params(uint domId) => _hv.GetCredit2Params((ushort)domId);
    public void SetCredit2Params(uint domId, int? weight, int? cap) => _hv.SetCredit2Params((ushort)domId, weight, cap);
    public CreditPoolParams GetCredit2PoolParams(int poolId) => _hv.GetCredit2PoolParams(poolId);
    public void SetCredit2PoolParams(int poolId, int ratelimitUs) => _hv.SetCredit2PoolParams(poolId, ratelimitUs);
    public IReadOnlyList<RtdsVcpuParams> GetRtdsParams(uint domId) => _hv.GetRtdsParams((ushort)domId);
    public void SetRtdsParams(uint domId, int? vcpu, long? periodUs, long? budgetUs, bool? extratime) =>
        _hv.SetRtdsParams((ushort)domId, vcpu, periodUs, budgetUs, extratime);
    public IReadOnlyList<VcpuSchedInfo> GetVcpuSchedInfo(uint domId) => _hv.GetVcpuSchedInfo((ushort)domId);
    public IReadOnlyList<CpuTopologyInfo> CpuTopology => _hv.GetCpuTopology();
    public IReadOnlyList<NumaNodeInfo> NumaInfo => _hv.GetNumaInfo();
    public IReadOnlyList<int> GetNodeAffinity(uint domId) => _hv.GetDomainNodeAffinity((ushort)domId);
    public void SetNodeAffinity(uint domId, IEnumerable<int> nodes) => _hv.SetDomainNodeAffinity((ushort)domId, nodes);

    public IHypervisorDomain CreateDomain(uint domId, DomainCreateInfo info)
    {
        // Room for the ACPI tables and the special pages beyond the guest's RAM.
        ulong maxKiB = (ulong)info.MaxMemKb + 1024;
        ushort id;
        if (info.TscMode is not (TscMode.Default or TscMode.AlwaysEmulate or TscMode.Native))
            throw new NotSupportedException("TSC Mode native_paravirt (a.k.a PVRDTSCP) has been removed");
        try { id = _hv.CreateDomain(new DomainCreateConfig(info.Kind, maxKiB, info.MaxVcpus) { DomainId = (ushort)domId, TscMode = info.TscMode, TimeOffsetSeconds = info.TimeOffsetSeconds, Ssidref = info.Ssidref }); }
        catch (HypervisorException e) { throw new HypervisorException($"cannot create domain {domId}: {e.Message}", e.Errno); }
        return new Domain(_hv, id);
    }

    public void StartPcpus() => _hv.StartPcpus();

    public string ReadConsole(bool clear) => _hv.ReadDmesg(clear);

    public bool FlaskEnabled => _hv.FlaskEnabled;
    public long FlaskContextToSid(string context, out uint sid) => _hv.FlaskContextToSid(context, out sid);
    public long FlaskRelabelDomain(uint domId, uint sid) => domId > ushort.MaxValue ? -Errno.ESRCH : _hv.FlaskRelabelDomain((ushort)domId, sid);

    /// <summary>The hypervisor's ring takes only its own messages; the toolstack's go to the daemon's log.</summary>
    public void ConsoleWrite(string line) => Console.Error.WriteLine($"xensharpd: {line}");

    public void DebugKeys(string keys) => _hv.DebugKeys(keys);

    public void Dispose()
    {
        if (_owns) _hv.Dispose();
    }

    private sealed class Domain(XenHypervisor hv, ushort domId) : IHypervisorDomain, IGuestPhysicalMemory
    {
        private readonly Dictionary<ulong, GuestMapping> _mappings = [];
        private readonly HashSet<ulong> _populated = [];
        private readonly Lock _lock = new();
        private readonly List<Dom0EventChannel> _channels = [];
        private bool _destroyed;

        public uint DomId => domId;
        public IGuestPhysicalMemory Memory => this;
        public IPvBuildTarget? Pv => hv.IsPvDomain(domId) ? new PvTarget(hv, domId) : null;

        public void Populate(ulong gfn, ulong count)
        {
            try { hv.PopulatePhysmap(domId, gfn, count); }
            catch (HypervisorException e) { throw new OutOfMemoryException(e.Message, e); }
            lock (_lock) for (ulong i = 0; i < count; i++) _populated.Add(gfn + i);
        }

        public void PopulateOnDemand(ulong gfn, ulong count)
        {
            try { hv.PopulateOnDemand(domId, gfn, count); }
            catch (HypervisorException e) { throw new InvalidOperationException(e.Message, e); }
        }

        public void SetPodTarget(ulong targetPages)
        {
            try { hv.SetPodTarget(domId, targetPages); }
            catch (HypervisorException e) { throw new OutOfMemoryException(e.Message, e); }
        }

        public bool IsPopulated(ulong gfn) { lock (_lock) return _populated.Contains(gfn); }
        public ulong MaxGfn => hv.MaxGfn(domId);
        public bool TryReadFrame(ulong gfn, Span<byte> page) => hv.TryReadRamFrame(domId, gfn, page);
        public XenSharp.Public.ArchX86.VcpuGuestContext GetVcpuContext(int vcpu) => hv.GetVcpuContext(domId, vcpu);
        public byte[] GetHvmContext() => hv.GetHvmContext(domId);
        public void SetHvmContext(ReadOnlySpan<byte> context) => hv.SetHvmContext(domId, context);
        public bool TryReadSaveFrame(ulong gfn, Span<byte> page) => hv.TryReadSaveFrame(domId, gfn, page);
        public (uint Faults, uint Dirtied) ShadowOp(uint op, Span<ulong> bitmap) => hv.ShadowOp(domId, op, bitmap);
        public void ResumeSuspended(bool cancelHypercall) => hv.ResumeSuspended(domId, cancelHypercall);
        public void SoftReset() => hv.SoftReset(domId);
        public uint TscKhz => (uint)(hv.GetHostInfo().GuestTscHz / 1000);
        public ulong SystemTimeNs => (ulong)hv.SystemTimeNs;
        public void ReadSharedInfo(Span<byte> page) => hv.ReadSharedInfo(domId, page);

        public void Write(ulong gpa, ReadOnlySpan<byte> data) => hv.WriteGuestMemory(domId, gpa, data);
        public void Read(ulong gpa, Span<byte> data) => hv.ReadGuestMemory(domId, gpa, data);

        public Span<byte> Page(ulong gfn)
        {
            GuestMapping? m;
            lock (_lock)
            {
                if (_destroyed) throw new ObjectDisposedException($"domain {domId}");
                if (!_mappings.TryGetValue(gfn, out m))
                    _mappings[gfn] = m = hv.Dom0Services.MapGuestFrame(domId, gfn);
            }
            return m.Span;
        }

        public void SetVcpuContext(int vcpu, in Registers regs, in SpecialRegisters sregs) =>
            hv.SetVcpuRegisters(domId, vcpu, regs, sregs);

        // vCPUs beyond the first are brought up by the guest (INIT-SIPI); the toolstack keeps the hotplug view in xenstore.
        public void SetOnlineVcpus(int count) { }

        public void SetVcpuAffinity(int vcpu, IReadOnlyList<int>? hard, IReadOnlyList<int>? soft) =>
            hv.SetVcpuAffinity(domId, vcpu, hard, soft);

        public void SetMemoryMap(IReadOnlyList<(ulong Addr, ulong Size, uint Type)> entries) =>
            hv.SetMemoryMap(domId, entries.Select(e => new XenSharp.Public.E820Entry { Addr = e.Addr, Size = e.Size, Type = e.Type }).ToList());

        public void SetAcpiSleepControl(ushort pm1aControlPort, int s5SleepType) =>
            hv.SetAcpiSleepControl(domId, pm1aControlPort, s5SleepType);
        public void ReleaseAcpiSleepControl() => hv.ReleaseAcpiSleepControl(domId);

        public void SetHvmParam(int index, ulong value) => hv.SetHvmParam(domId, index, value);
        public ulong GetHvmParam(int index) => hv.GetHvmParam(domId, index);
        public void SeedGrantEntry(uint gref, ushort flags, ushort grantee, ulong gfn) =>
            hv.SeedGrantEntry(domId, gref, flags, grantee, (uint)gfn);
        public uint AllocUnboundPort(uint remoteDomId) => hv.Dom0Services.AllocUnboundEventChannel(domId, (ushort)remoteDomId);

        public IEventChannelEndpoint BindInterdomain(uint remotePort, Action onEvent)
        {
            var ch = hv.Dom0Services.BindInterdomain(domId, remotePort, onEvent);
            lock (_lock) _channels.Add(ch);
            return new Endpoint(ch);
        }

        public void Pause() => hv.Pause(domId);
        public void Unpause() => hv.Unpause(domId);
        public void SetMaxMem(long kb) => hv.SetMaxMemory(domId, (ulong)kb + 1024);
        public void Shutdown(ShutdownReason reason) => hv.Shutdown(domId, reason);

        public void SendTrigger(string trigger, int vcpu)
        {
            // libxl_send_trigger: s3resume is an HVM param write (a no-op unless the guest sleeps in S3, which
            // XenSharp's guests cannot); the others are XEN_DOMCTL_sendtrigger.
            if (trigger == "s3resume")
            {
                hv.GetDomainInfo(domId);
                return;
            }
            uint t = trigger switch
            {
                "nmi" => XenSharp.Public.Domctl.XEN_DOMCTL_SENDTRIGGER_NMI,
                "reset" => XenSharp.Public.Domctl.XEN_DOMCTL_SENDTRIGGER_RESET,
                "init" => XenSharp.Public.Domctl.XEN_DOMCTL_SENDTRIGGER_INIT,
                "power" => XenSharp.Public.Domctl.XEN_DOMCTL_SENDTRIGGER_POWER,
                "sleep" => XenSharp.Public.Domctl.XEN_DOMCTL_SENDTRIGGER_SLEEP,
                _ => throw new ArgumentException($"Invalid trigger \"{trigger}\""),
            };
            hv.SendTrigger(domId, t, vcpu);
        }

        public long ShutdownTime
        {
            get
            {
                try { return hv.ShutdownTime(domId); }
                catch (HypervisorException) { return 0; }
            }
        }

        public DomainRunInfo State
        {
            get
            {
                DomctlDomainInfo i;
                try { i = hv.GetDomainInfo(domId); }
                catch (HypervisorException) { return new DomainRunInfo(false, false, false, false, 0, true, 0, 0, 0, Gone: true); }
                return new DomainRunInfo(
                    Running: i.IsRunningNow,
                    // As Xen's getdomaininfo: every online vCPU blocked, whether or not the domain is also paused.
                    Blocked: !i.IsRunningNow && i.IsBlocked && i.OnlineVcpus > 0
                        && i.State is Hv.DomainRunState.Running or Hv.DomainRunState.Paused,
                    Paused: i.State == Hv.DomainRunState.Paused,
                    Shutdown: i.State == Hv.DomainRunState.Shutdown,
                    Reason: i.ShutdownReason ?? ShutdownReason.Poweroff,
                    Dying: i.State == Hv.DomainRunState.Dying,
                    CpuTimeNs: (ulong)Math.Max(0, i.CpuTimeNs),
                    OnlineVcpus: i.OnlineVcpus,
                    CurrentMemKb: Math.Max(0, i.TotPages * 4));
            }
        }

        public IReadOnlyList<VcpuRunState> Vcpus
        {
            get
            {
                try
                {
                    return hv.GetVcpuSchedInfo(domId).Select(v => new VcpuRunState(v.Vcpu, v.Online, v.Running, v.Blocked,
                        v.Cpu, (ulong)Math.Max(0, v.CpuTimeNs), v.HardAffinity, v.SoftAffinity)).ToList();
                }
                catch (HypervisorException) { return []; }
            }
        }

        public void Dispose()
        {
            List<GuestMapping> maps;
            List<Dom0EventChannel> chans;
            lock (_lock)
            {
                if (_destroyed) return;
                _destroyed = true;
                maps = [.. _mappings.Values];
                chans = [.. _channels];
                _mappings.Clear();
            }
            foreach (var c in chans) c.Dispose();
            foreach (var m in maps) m.Dispose();
            try { hv.Destroy(domId); } catch (HypervisorException) { }
        }

        private sealed class Endpoint(Dom0EventChannel ch) : IEventChannelEndpoint
        {
            public uint LocalPort => ch.LocalPort;
            public void Notify() => ch.Notify();
            public void Dispose() => ch.Dispose();
        }
    }
}

/// <summary>The PV builder's calls, on the hypervisor's PV build API.</summary>
internal sealed class PvTarget(XenHypervisor hv, ushort domId) : IPvBuildTarget
{
    public ulong MfnOf(ulong pfn) => hv.PvMfnOf(domId, pfn);
    public void SetMachToPhys(ulong firstPfn, ulong count) => hv.PvSetMachToPhys(domId, firstPfn, count);
    public ulong SharedInfoMfn => hv.SharedInfoMfn(domId);
    public void PinTable(int level, ulong mfn) => hv.PvPinTable(domId, level, mfn);
    public void SetBaseptr(int vcpu, ulong mfn) => hv.PvSetBaseptr(domId, vcpu, mfn);
    public void InitHypercallPage(ulong pfn) => hv.PvInitHypercallPage(domId, pfn);
    public void SetAddressSize(int bits) => hv.PvSetAddressSize(domId, bits);
    public bool Is32 => hv.PvIs32(domId);
    public IReadOnlyList<(ulong Pfn, ulong Mfn)> Physmap() => hv.PvPhysmap(domId);
    public (int Level, bool Pinned) PageType(ulong mfn) => hv.PvPageType(domId, mfn);
    public byte[]? GetVcpuContext(int vcpu) => hv.PvGetVcpuContext(domId, vcpu);
    public void SetVcpuContext(int vcpu, ReadOnlySpan<byte> context) => hv.PvSetVcpuContext(domId, vcpu, context);
    public byte[] GetExtVcpuContext(int vcpu) => hv.PvGetExtVcpuContext(domId, vcpu);
    public void SetExtVcpuContext(int vcpu, ReadOnlySpan<byte> context) => hv.PvSetExtVcpuContext(domId, vcpu, context);
    public void RestoreSharedInfo(ReadOnlySpan<byte> saved) => hv.PvRestoreSharedInfo(domId, saved);
}
