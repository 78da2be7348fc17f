namespace XenSharp.Hypervisor.Common;

/// <summary>What a frame is in use as for a PV domain (Xen's PGT_* types of type_info).</summary>
internal enum PageType : byte
{
    None,
    L1,
    L2,
    L3,
    L4,
    /// <summary>A GDT or LDT page: its descriptors were checked, so the guest may not write it.</summary>
    SegDesc,
    /// <summary>Mapped writable somewhere: it may not become a page table or descriptor page.</summary>
    Writable,
}

/// <summary>The type part of a frame's page_info: the type, how many uses hold it, whether its contents were
/// validated for it, and whether the guest pinned it.</summary>
internal struct PageTypeInfo
{
    public PageType Type;
    public bool Validated;
    public bool Pinned;
    /// <summary>An L2 in slot 3 of a 32-bit guest's PAE L3 (Xen's PGT_pae_xen_l2): it holds Xen's slots of the
    /// top of the address space (the compat M2P), so it is a different type from a plain L2.</summary>
    public bool PaeXenL2;
    public int Count;
}

/// <summary>The frame table's side of the PV MMU: general references taken for a domain, and the type info the
/// PV MMU (<see cref="X86.Pv.PvMm"/>) keeps under <see cref="TypeLock"/>.</summary>
internal sealed unsafe partial class FrameTable
{
    /// <summary>Held while page types change. It is the frame table's own lock, so a frame cannot be freed or
    /// released in the middle of a type change.</summary>
    public object TypeLock => _lock;

    /// <summary>Takes a general reference on a frame that <paramref name="owner"/> owns and has not given up
    /// (Xen's get_page); false for a free, quarantined, orphaned or foreign frame, or one out of range.</summary>
    public bool TryGetPage(ulong mfn, ushort owner)
    {
        lock (_lock)
        {
            if (mfn >= FrameCount)
                return false;
            var p = PageOrFree((uint)mfn);
            if (p.Type == FrameType.Free || p.Quarantined || p.Orphaned || p.Owner != owner)
                return false;
            Page((uint)mfn).Refs++;
            return true;
        }
    }

    /// <summary>Drops a reference <see cref="TryGetPage"/> took (Xen's put_page).</summary>
    public void PutPage(ulong mfn) => Release((uint)mfn, dropRef: true);

    /// <summary>The type info of an allocated frame; the caller holds <see cref="TypeLock"/>.</summary>
    public ref PageTypeInfo TypeInfoOf(ulong mfn) => ref Page((uint)mfn).TypeInfo;

    /// <summary>Whether a PV domain's own accesses may reach the frame: frames it owns (a write not to one
    /// typed as a page table or descriptor page) and Xen's read-only frames (the M2P). Called on a soft-TLB miss,
    /// not per instruction.</summary>
    public bool IsGuestAccessible(ulong mfn, ushort domid, bool write)
    {
        lock (_lock)
        {
            if (mfn >= FrameCount)
                return false;
            var p = PageOrFree((uint)mfn);
            if (p.Type == FrameType.Free || p.Quarantined)
                return false;
            if (p.Owner == Public.Xen.DOMID_XEN)
                return !write;
            // Grant-mapped frames of other domains come with PV grant mappings; until then only its own.
            if (p.Owner != domid)
                return false;
            return !write || p.TypeInfo.Type is PageType.None or PageType.Writable;
        }
    }
}
