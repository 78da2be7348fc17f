using XenSharp.Cpu;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// mem_access (Xen's p2m_access_t): each RAM entry may deny the guest reads, writes or instruction fetches, as an
/// introspection agent asks with XENMEM_access_op. The denied bits live in the entry itself (bits 40-42: R, W, X
/// taken away), and the domain's default access applies to entries made later. Only the engine's view is
/// restricted: the engine reaches the p2m through <see cref="IGuestMemory"/>, implemented here, while the
/// hypervisor's own copies and backends' mappings use <see cref="GetPage"/> and pass, as Xen's do. A denied write
/// or read becomes an MMIO exit at a RAM page and a denied fetch a FetchDenied exit, which <c>MemAccess</c> turns
/// into a vm_event. With no restriction anywhere (<see cref="_restricted"/> zero) the engine's path costs one
/// field test more than before. With altp2m active the engine's accesses go through the running vCPU's view
/// (P2mAltp2m.cs).
/// </summary>
internal sealed unsafe partial class P2m
{
    private const int AccessShift = 40;
    private const ulong DenyMask = 7UL << AccessShift;

    // Entries with a restriction, plus one while the default access is not rwx.
    private int _restricted;
    private ulong _defaultDeny;

    /// <summary>Set by XEN_DOMCTL_set_access_required: a denied access with no listener crashes the domain rather
    /// than lifting the restriction.</summary>
    public bool AccessRequired { get; set; }

    /// <summary>Whether any access restriction is in force (a denied-access exit is possible at all).</summary>
    public bool AccessRestricted => Volatile.Read(ref _restricted) != 0;

    private static bool IsAccessType(P2mType type) => type is P2mType.RamRw or P2mType.RamRo;

    private ulong DefaultAccessBits(P2mType type) => IsAccessType(type) ? _defaultDeny : 0;

    private void CountRestriction(ulong old, ulong entry)
    {
        bool was = (old & DenyMask) != 0, now = (entry & DenyMask) != 0;
        if (was != now)
            Interlocked.Add(ref _restricted, now ? 1 : -1);
    }

    private static ulong DenyBits(byte access) => (ulong)(~access & 7) << AccessShift;
    private static byte AccessOf(ulong denied) => (byte)(~(denied >> AccessShift) & 7);

    /// <summary>The domain's default access (xenmem_access_t, 0-7).</summary>
    public byte DefaultAccess => AccessOf(_defaultDeny);

    /// <summary>Sets the default access for entries made from now on (pfn ~0 of XENMEM_access_op).</summary>
    public void SetDefaultAccess(byte access)
    {
        lock (_lock)
        {
            ulong deny = DenyBits(access);
            if ((_defaultDeny != 0) != (deny != 0))
                Interlocked.Add(ref _restricted, deny != 0 ? 1 : -1);
            _defaultDeny = deny;
        }
    }

    /// <summary>Sets the access of the RAM entries among <paramref name="count"/> gfns from <paramref name="first"/>
    /// (holes and other types are left alone). Taking a permission away drops every cached translation and decoded
    /// block of the domain's vCPUs (the generation moves), so that the next access is checked.</summary>
    public void SetAccess(ulong first, ulong count, byte access)
    {
        ulong deny = DenyBits(access);
        bool tightened = false;
        lock (_lock)
        {
            ulong end = Math.Min(first + count, MaxGfn + 1);
            for (ulong gfn = first; gfn < end;)
            {
                var leaf = _top[gfn >> LeafBits];
                if (leaf is null)
                {
                    gfn = ((gfn >> LeafBits) + 1) << LeafBits;
                    continue;
                }
                ref ulong slot = ref leaf[gfn & ((1 << LeafBits) - 1)];
                ulong e = slot;
                if (IsAccessType((P2mType)(byte)e) && (e & DenyMask) != deny)
                {
                    ulong n = (e & ~DenyMask) | deny;
                    tightened |= (deny & ~(e & DenyMask)) != 0;
                    CountRestriction(e, n);
                    Volatile.Write(ref slot, n);
                }
                gfn++;
            }
            if (tightened)
                Interlocked.Increment(ref _generation);
        }
    }

    /// <summary>The access of one gfn's entry; false when it has none (Xen's -ESRCH).</summary>
    public bool TryGetAccess(ulong gfn, out byte access)
    {
        access = 0;
        if (!TryLookupEntry(gfn, out ulong e) || (P2mType)(byte)e == P2mType.Invalid)
            return false;
        access = AccessOf(e & DenyMask);
        return true;
    }

    /// <summary>What the guest may not do at <paramref name="gfn"/> (MEM_ACCESS_R/W/X bits), 0 for a page without
    /// a restriction or one that is not RAM.</summary>
    public uint DeniedAccess(ulong gfn) =>
        TryLookupEntry(gfn, out ulong e) && IsAccessType((P2mType)(byte)e) ? (uint)((e & DenyMask) >> AccessShift) : 0;

    private bool TryLookupEntry(ulong gfn, out ulong e)
    {
        e = 0;
        if (gfn > MaxGfn)
            return false;
        var leaf = Volatile.Read(ref _top[gfn >> LeafBits]);
        if (leaf is null)
            return false;
        e = Volatile.Read(ref leaf[gfn & ((1 << LeafBits) - 1)]);
        return true;
    }

    // ---- the engine's view ----

    byte* IGuestMemory.GetPage(ulong gfn, bool write) =>
        Volatile.Read(ref _restricted) != 0 ? RestrictedGetPage(gfn, write, forWriteCache: false) : GetPage(gfn, write, mayUnshare: true);

    byte* IGuestMemory.GetPageForWriteCache(ulong gfn) =>
        Volatile.Read(ref _restricted) != 0 ? RestrictedGetPage(gfn, true, forWriteCache: true) : GetPageForWriteCache(gfn);

    bool IGuestMemory.IsPaged(ulong gfn) => TryLookup(gfn, out _, out var t) && IsPaging(t);

    bool IGuestMemory.MayBePaged => PagingEnabled;

    bool IGuestMemory.MayExecute(ulong gfn) =>
        Volatile.Read(ref _restricted) == 0 || (EngineDeniedAccess(gfn) & VmEvent.MEM_ACCESS_X) == 0;
}
