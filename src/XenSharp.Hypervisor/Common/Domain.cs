using XenSharp.Cpu;
using XenSharp.Hypervisor.X86;
using XenSharp.Hypervisor.X86.Pv;
using XenSharp.Public;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.Common;

/// <summary>A domain: its memory, vCPUs, event channels, grant table and lifecycle state (Xen's struct domain).</summary>
internal sealed unsafe class Domain
{
    public Domain(HostServices host, ushort domid, DomainKind type, ulong maxPages, int vcpuCount, bool isHost = false, bool privileged = false)
    {
        Host = host;
        DomainId = domid;
        Type = type;
        MaxPages = maxPages;
        IsHost = isHost;
        IsPrivileged = isHost || privileged;
        P2m = new P2m(host.Frames);
        Pod = new P2mPod(this);
        if (!isHost)
        {
            P2m.Pod = Pod;
            P2m.Unshare = gfn => host.Sharing.Unshare(this, gfn);
            P2m.Populate = gfn => MemPaging.Populate(this, gfn, null);
        }
        Handle = Guid.NewGuid();
        Arch = new HvmDomain(this);
        if (type == DomainKind.Pv)
            Pv = new PvDomain(this);
        Evtchn = new EventChannels(this);
        Gnttab = new GrantTable(this);
        if (!isHost)
        {
            if (!host.Frames.TryAllocate(domid, FrameType.XenShared, out uint mfn))
                throw new HypervisorException("out of machine memory for shared_info");
            SharedInfoMfn = mfn;
            SharedInfo = (SharedInfo*)host.Frames.PageAddress(mfn);
        }
        Vcpus = new Vcpu[vcpuCount];
        for (int i = 0; i < vcpuCount; i++)
            Vcpus[i] = new Vcpu(this, i);
        Console = new DomainConsole();
    }

    public HostServices Host { get; }
    public ushort DomainId { get; }
    public DomainKind Type { get; }
    public Guid Handle { get; set; }
    /// <summary>Domain-0: the host process itself; it has no vCPUs or memory of its own and its event channels are callbacks.</summary>
    public bool IsHost { get; }
    public bool IsPrivileged { get; }
    public P2m P2m { get; }
    public P2mPod Pod { get; }
    public Vcpu[] Vcpus { get; }
    public EventChannels Evtchn { get; }
    public GrantTable Gnttab { get; }
    public DomainConsole Console { get; }
    public ICpuEngine? Engine { get; set; }
    /// <summary>XEN_DOMCTL_settscinfo may change it (each vCPU's TSC leaf follows).</summary>
    public TscMode TscMode { get; set; }
    /// <summary>Credit scheduler weight (xl sched-credit -w).</summary>
    public int Weight { get; set; } = 256;

    /// <summary>Serialises changes to this domain's p2m, reservation, event channels and grant table.</summary>
    public readonly object Lock = new();

    /// <summary>Threads waiting in <see cref="HostServices.WaitOffCpu"/> for a vCPU of this domain to leave its
    /// pCPU, and what they wait on.</summary>
    internal int OffCpuWaiters;
    internal readonly object OffCpuSignal = new();

    public ulong MaxPages { get; set; }
    private long _totPages;
    public long TotPages => Interlocked.Read(ref _totPages);

    public uint SharedInfoMfn { get; }
    public SharedInfo* SharedInfo { get; }
    /// <summary>GFN where the guest placed shared_info, if it did.</summary>
    public ulong? SharedInfoGfn { get; set; }

    /// <summary>The guest type's x86 state: HVM parameters, event callback, emulated devices and GSIs.</summary>
    public HvmDomain Arch { get; }

    private X86.DomainMonitor? _monitor;

    /// <summary>Introspection: the vm_event monitor ring and monitor events (made on first use).</summary>
    public X86.DomainMonitor Monitor => LazyInitializer.EnsureInitialized(ref _monitor, () => new X86.DomainMonitor(this));

    /// <summary>The introspection state if any was ever set up (the pCPU loop's cheap test).</summary>
    public X86.DomainMonitor? MonitorIfAny => Volatile.Read(ref _monitor);
    /// <summary>A PV guest's x86 state (page tables over machine frames), null for HVM and PVH guests.</summary>
    public PvDomain? Pv { get; }
    /// <summary>The memory the domain's engine addresses: the p2m, or for a PV guest machine frames.</summary>
    public IGuestMemory GuestMemory => Pv is { } pv ? pv.Machine : P2m;
    /// <summary>shared_info has the x86_32 layout: latched when a 32-bit guest sets its callback (as Xen does for HVM).</summary>
    public bool Has32BitSharedInfo;
    public ulong VmAssist;
    /// <summary>Offset of this domain's wall clock from the host's (xl.cfg rtc_timeoffset).</summary>
    public long WallclockOffsetNs;
    /// <summary>XEN_DOMCTL_set_paging_mempool_size: the bytes the toolstack set aside for the domain's paging
    /// structures (the engine keeps its own, so this is only reported back).</summary>
    public ulong PagingMempoolBytes { get; set; }
    /// <summary>XEN_DOMCTL_mem_sharing_op's control (or the first XENMEM_sharing_op on the domain) turned sharing on.</summary>
    public bool MemSharingEnabled { get; set; }
    /// <summary>The pager's vm_event ring (XEN_DOMCTL_VM_EVENT_OP_PAGING), while one is enabled.</summary>
    public VmEventRing? PagingRing
    {
        get => Volatile.Read(ref _pagingRing);
        set
        {
            if (value is not null)
                PagingEverEnabled = P2m.PagingEnabled = true;
            Volatile.Write(ref _pagingRing, value);
        }
    }
    private VmEventRing? _pagingRing;
    /// <summary>A pager enabled its ring once: entries in paging states may exist (the exits' cheap test).</summary>
    public bool PagingEverEnabled { get; private set; }
    /// <summary>Gfns evicted and not loaded back (getdomaininfo's paged_pages).</summary>
    public long PagedPages;
    public E820Entry[] MemoryMap { get; set; } = [];

    // Lifecycle.
    public DomainRunState State { get; set; } = DomainRunState.Paused;
    public int PauseCount { get; set; } = 1;
    /// <summary>The domain's FLASK label (its SID); 0 while FLASK is off, as Xen's dummy XSM reports.</summary>
    public uint Ssid { get; set; }
    /// <summary>The label the domain acts on itself under (Xen's self_sid: its label's transition over itself in class
    /// domain); 0 is <see cref="Ssid"/>.</summary>
    public uint SelfSsid { get; set; }
    public uint? ShutdownReason { get; set; }

    /// <summary>When the domain last shut down (microseconds since 1970, on the host's clock): a migration's downtime
    /// starts with the guest's own SCHEDOP_shutdown(SHUTDOWN_suspend), not when a toolstack thread hears of it.</summary>
    public long ShutdownAtUnixMicros { get; set; }
    /// <summary>Reason stored by SCHEDOP_shutdown_code, reported when the domain later shuts down.</summary>
    public uint? ShutdownCode { get; set; }
    public bool IsDying { get; set; }
    /// <summary>Unpaused at least once: its build is over.</summary>
    public bool HasRun { get; set; }
    public long WatchdogDeadlineNs = long.MaxValue;
    public readonly Dictionary<uint, long> Watchdogs = new();

    /// <summary>Takes <paramref name="pages"/> from the reservation; false when it would exceed max_pages.</summary>
    public bool TryChargePages(long pages)
    {
        while (true)
        {
            long cur = TotPages;
            if ((ulong)(cur + pages) > MaxPages)
                return false;
            if (Interlocked.CompareExchange(ref _totPages, cur + pages, cur) == cur)
                return true;
        }
    }

    public void UnchargePages(long pages) => Interlocked.Add(ref _totPages, -pages);

    /// <summary>Allocates and maps one zeroed RAM frame at <paramref name="gfn"/>, freeing what was there.</summary>
    public bool PopulateRam(ulong gfn)
    {
        if (gfn > P2m.MaxGfn)
            return false;
        lock (Lock)
        {
            if (P2m.TryLookup(gfn, out _, out var t) && t == P2mType.RamRw)
                return true;
            if (!TryChargePages(1))
                return false;
            if (!Host.Frames.TryAllocate(DomainId, FrameType.Ram, out uint mfn))
            {
                UnchargePages(1);
                return false;
            }
            ReleaseOld(P2m.Set(gfn, mfn, P2mType.RamRw));
            return true;
        }
    }

    // Frames increase_reservation gave this (translated) domain: owned and counted, mapped at no GFN
    // (Xen reports MFNs only to PV guests), so they go back to the pool only with the domain.
    private readonly List<uint> _unplaced = new();

    /// <summary>Allocates <paramref name="pages"/> frames to the domain without mapping them (Xen's
    /// increase_reservation for an auto-translated domain); false, with nothing taken, when they do not fit.</summary>
    public bool AllocateUnplaced(ulong pages)
    {
        lock (Lock)
        {
            if (!TryChargePages((long)pages))
                return false;
            int before = _unplaced.Count;
            for (ulong i = 0; i < pages; i++)
            {
                if (Host.Frames.TryAllocate(DomainId, FrameType.Ram, out uint mfn))
                    _unplaced.Add(mfn);
                else
                {
                    for (int j = before; j < _unplaced.Count; j++)
                        Host.Frames.Free(_unplaced[j]);
                    _unplaced.RemoveRange(before, _unplaced.Count - before);
                    UnchargePages((long)pages);
                    return false;
                }
            }
            return true;
        }
    }

    /// <summary>Removes whatever is at <paramref name="gfn"/>; RAM goes back to the machine pool.</summary>
    public bool RemovePage(ulong gfn)
    {
        lock (Lock)
        {
            var old = P2m.Remove(gfn);
            if (old.Type == P2mType.Invalid)
                return false;
            ReleaseOld(old, gfn);
            return true;
        }
    }

    /// <summary>Drops the references an old p2m entry held (caller holds <see cref="Lock"/>); <paramref name="gfn"/>,
    /// where the caller knows it, lets the pager hear of a paged gfn that went.</summary>
    public void ReleaseOld((uint Mfn, P2mType Type) old, ulong gfn = ulong.MaxValue)
    {
        switch (old.Type)
        {
            case P2mType.RamRw or P2mType.RamRo:
                Host.Frames.Free(old.Mfn);
                UnchargePages(1);
                break;
            case P2mType.XenShared:
                if (old.Mfn == SharedInfoMfn)
                    SharedInfoGfn = null;
                else
                    Gnttab.OnFrameUnmapped(old.Mfn);
                break;
            case P2mType.Foreign:
                Host.Frames.Release(old.Mfn, dropRef: true);
                break;
            case P2mType.PopulateOnDemand:
                Pod.EntryReplaced();
                break;
            case P2mType.RamShared:
                Host.Sharing.EntryRemoved(this, old.Mfn);
                break;
            case P2mType.PagingOut or P2mType.Paged or P2mType.PagingIn:
                MemPaging.EntryRemoved(this, old.Mfn, old.Type, gfn);
                break;
            case P2mType.GrantMapRw or P2mType.GrantMapRo:
                // The mapping stays tracked by the grant table until unmapped; only the p2m slot goes.
                break;
        }
    }

    public Vcpu? GetVcpu(uint id) => id < (uint)Vcpus.Length ? Vcpus[id] : null;

    /// <summary>Frees everything the domain owns. Caller makes sure no vCPU runs.</summary>
    public void Teardown()
    {
        Arch.Ioreq.DestroyAll();
        MonitorIfAny?.Ring?.Disable(); // lets go of the ring page
        PagingRing?.Disable();
        ArgoOp.Teardown(this);
        // Channels and grants reach into other domains: release them before taking our own lock.
        Evtchn.CloseAll();
        Gnttab.Teardown();
        lock (Lock)
        {
            foreach (var v in Vcpus)
                v.Teardown();
            Arch.Teardown();
            Pv?.Teardown();
            P2m.DisableLogDirty();
            using (Host.Frames.DeferReclaim())
            {
                foreach (var (gfn, _, _) in P2m.Entries().ToList())
                    ReleaseOld(P2m.Remove(gfn));
                Pod.Teardown();
                foreach (uint mfn in _unplaced)
                    Host.Frames.Free(mfn);
                UnchargePages(_unplaced.Count);
                _unplaced.Clear();
                if (!IsHost)
                    Host.Frames.Free(SharedInfoMfn);
            }
            // A domain created later with this domid gets a memfd of its own: mappings of this one never show it.
            Host.Frames.CloseOwner(DomainId);
            Engine?.Dispose();
            Engine = null;
            // Whoever still holds a Vcpu (a pending timer, a trace) must not keep the engine's code caches alive.
            foreach (var v in Vcpus)
                v.Engine = null;
        }
    }
}
