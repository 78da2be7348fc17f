using XenSharp.Cpu;

namespace XenSharp.Hypervisor.Common;

/// <summary>p2m entry types (Xen's p2m_type_t, the ones this hypervisor uses).</summary>
internal enum P2mType : byte
{
    Invalid,
    RamRw,
    RamRo,
    /// <summary>A Xen heap page (shared_info, grant frames) placed in the guest's physical space.</summary>
    XenShared,
    GrantMapRw,
    GrantMapRo,
    /// <summary>Another domain's page mapped by a privileged domain (gmfn_foreign).</summary>
    Foreign,
    /// <summary>RAM the guest may use but that has no frame yet: the first touch takes one from the
    /// domain's PoD cache (Xen's p2m_populate_on_demand).</summary>
    PopulateOnDemand,
    /// <summary>A frame shared copy-on-write with other gfns, of this domain or others (Xen's p2m_ram_shared): read
    /// as it is, copied to a private frame on the first write (<see cref="P2m.Unshare"/>).</summary>
    RamShared,
    /// <summary>RAM nominated by the pager (Xen's p2m_ram_paging_out): the frame is still there, for the pager to
    /// read and then evict, but the guest may not touch it (a touch starts the page-in path).</summary>
    PagingOut,
    /// <summary>RAM the pager evicted (p2m_ram_paged): no frame; its contents are in the pager's file.</summary>
    Paged,
    /// <summary>On its way back (p2m_ram_paging_in): a request went to the pager; the entry has a frame only when
    /// the page was nominated but never evicted.</summary>
    PagingIn,
}

/// <summary>
/// A domain's guest-physical map: GFN → MFN and type, in a two-level table (4096 leaves of 4096 entries:
/// 16M GFNs, 64 GiB of guest-physical space). Readers (the engine) do not lock; writers do and bump
/// <see cref="Generation"/> when a mapping goes away or changes so cached translations are dropped.
/// </summary>
internal sealed unsafe partial class P2m : IGuestMemory
{
    public const int LeafBits = 12, TopBits = 12;
    public const ulong MaxGfn = (1UL << (LeafBits + TopBits)) - 1;

    private readonly FrameTable _frames;
    // Entry: access restriction << 40 | mfn << 8 | type; 0 = no mapping (see P2mAccess.cs).
    private readonly ulong[]?[] _top = new ulong[1 << TopBits][];
    private readonly object _lock = new();
    private long _generation;

    public P2m(FrameTable frames) => _frames = frames;

    /// <summary>Fills populate-on-demand entries on first touch; set for every guest domain.</summary>
    public P2mPod? Pod { get; set; }

    /// <summary>Gives a shared entry a private copy before it is written (MemSharing); false when it cannot.</summary>
    public Func<ulong, bool>? Unshare { get; set; }

    /// <summary>Asks the pager for a gfn in a paging state that the hypervisor (not a vCPU) wants (MemPaging).</summary>
    public Action<ulong>? Populate { get; set; }

    /// <summary>A pager was set up once: entries may be in paging states.</summary>
    public bool PagingEnabled { get; set; }

    /// <summary>Whether a gfn is in one of the paging states (the guest cannot reach it until it is paged in).</summary>
    public static bool IsPaging(P2mType t) => t is P2mType.PagingOut or P2mType.Paged or P2mType.PagingIn;

    public long Generation => Volatile.Read(ref _generation);

    /// <summary>Highest GFN ever mapped (XENMEM_maximum_gpfn).</summary>
    public ulong MaxMappedGfn { get; private set; }

    /// <summary>The hypervisor's view: a page in a paging state is asked for (Xen's get_page_from_gfn with
    /// P2M_ALLOC populates it) and is not there this time.</summary>
    public byte* GetPage(ulong gfn, bool write) => GetPage(gfn, write, mayUnshare: true, populate: true);

    private byte* GetPage(ulong gfn, bool write, bool mayUnshare, bool populate = false)
    {
        if (gfn > MaxGfn)
            return null;
        var leaf = Volatile.Read(ref _top[gfn >> LeafBits]);
        if (leaf is null)
            return null;
        ulong e = Volatile.Read(ref leaf[gfn & ((1 << LeafBits) - 1)]);
        var type = (P2mType)(byte)e;
        if (type == P2mType.Invalid)
            return null;
        if (type == P2mType.PopulateOnDemand)
            return Pod is { } pod && pod.DemandPopulate(gfn) ? GetPage(gfn, write, mayUnshare, populate) : null;
        if (type >= P2mType.PagingOut)
        {
            // Nothing reaches a page in a paging state; the engine's exit asks for it with the vCPU paused.
            if (populate)
                Populate?.Invoke(gfn);
            return null;
        }
        if (write && (type is P2mType.RamRo or P2mType.GrantMapRo or P2mType.RamShared))
            return type == P2mType.RamShared && mayUnshare && Unshare is { } unshare && unshare(gfn) ? GetPage(gfn, write) : null;
        if (write && _dirty is not null)
            MarkDirty(gfn);
        return _frames.PageAddress((uint)(e >> 8));
    }

    public bool TryLookup(ulong gfn, out uint mfn, out P2mType type)
    {
        mfn = 0;
        type = P2mType.Invalid;
        if (gfn > MaxGfn)
            return false;
        var leaf = Volatile.Read(ref _top[gfn >> LeafBits]);
        if (leaf is null)
            return false;
        ulong e = Volatile.Read(ref leaf[gfn & ((1 << LeafBits) - 1)]);
        type = (P2mType)(byte)e;
        mfn = (uint)(e >> 8);
        return type != P2mType.Invalid;
    }

    /// <summary>Installs a mapping and returns what was there before (Invalid when nothing).</summary>
    public (uint Mfn, P2mType Type) Set(ulong gfn, uint mfn, P2mType type)
    {
        if (gfn > MaxGfn)
            throw new ArgumentOutOfRangeException(nameof(gfn));
        lock (_lock)
        {
            ref var leaf = ref _top[gfn >> LeafBits];
            leaf ??= new ulong[1 << LeafBits];
            ref ulong slot = ref leaf[gfn & ((1 << LeafBits) - 1)];
            ulong old = slot;
            ulong entry = type == P2mType.Invalid ? 0 : ((ulong)mfn << 8) | (byte)type | DefaultAccessBits(type);
            CountRestriction(old, entry);
            Volatile.Write(ref slot, entry);
            // A PoD entry never gave anyone a host address, so replacing it invalidates nothing.
            if (old != 0 && (P2mType)(byte)old != P2mType.PopulateOnDemand)
                Interlocked.Increment(ref _generation);
            if (type != P2mType.Invalid && gfn > MaxMappedGfn)
                MaxMappedGfn = gfn;
            return ((uint)(old >> 8), (P2mType)(byte)old);
        }
    }

    public (uint Mfn, P2mType Type) Remove(ulong gfn) => gfn > MaxGfn ? (0, P2mType.Invalid) : Set(gfn, 0, P2mType.Invalid);

    /// <summary>Every mapping, for domain teardown.</summary>
    public IEnumerable<(ulong Gfn, uint Mfn, P2mType Type)> Entries()
    {
        for (int t = 0; t < _top.Length; t++)
        {
            var leaf = _top[t];
            if (leaf is null)
                continue;
            for (int i = 0; i < leaf.Length; i++)
                if (leaf[i] != 0)
                    yield return (((ulong)t << LeafBits) | (uint)i, (uint)(leaf[i] >> 8), (P2mType)(byte)leaf[i]);
        }
    }
}
