using System.Numerics;
using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using static XenSharp.Public.Mmu;

namespace XenSharp.Hypervisor.X86.Pv;

/// <summary>
/// The PV MMU (Xen's arch/x86/mm.c for 64-bit PV guests): page types with type counts on the frame table, every
/// page-table entry validated before it is written, and the hypercalls that change page tables — mmu_update,
/// mmuext_op, update_va_mapping(_otherdomain). A frame is an L1–L4 table only while no writable mapping of it
/// exists, so a guest can change its page tables only through here; each present entry of a validated table holds
/// a general reference (and for a table or a writable mapping, a type reference) on the frame it names.
/// </summary>
internal static unsafe class PvMm
{
    public const ulong PAGE_PRESENT = 1, PAGE_RW = 2, PAGE_USER = 4, PAGE_PWT = 8, PAGE_PCD = 0x10,
        PAGE_ACCESSED = 0x20, PAGE_DIRTY = 0x40, PAGE_PSE = 0x80, PAGE_PAT = 0x80, PAGE_GLOBAL = 0x100,
        PAGE_AVAIL = 0xE00, PAGE_AVAIL_HIGH = 0x7FFUL << 52, PAGE_NX = 1UL << 63;
    public const ulong AddressMask = 0x000F_FFFF_FFFF_F000;

    /// <summary>Flags a guest may set at every level (Xen's base_disallow_mask is the rest).</summary>
    private const ulong BaseAllowed = PAGE_PRESENT | PAGE_RW | PAGE_USER | PAGE_ACCESSED | PAGE_DIRTY | PAGE_AVAIL
        | PAGE_AVAIL_HIGH | PAGE_NX;
    /// <summary>An L1 may also be global; cache attributes stay Xen's for a domain without I/O access.</summary>
    private const ulong L1Allowed = BaseAllowed | PAGE_GLOBAL;

    /// <summary>L4 slots 256–271 (0xFFFF800000000000–0xFFFF87FFFFFFFFFF) are Xen's in every guest L4.</summary>
    public const int FirstXenSlot = 256, LastXenSlot = 271;
    private const int M2pSlot = 256;
    /// <summary>Descriptors a guest GDT may have: pages 0–13, below Xen's reserved ones (FIRST_RESERVED_GDT_ENTRY).</summary>
    public const ulong FirstReservedGdtEntry = PvDomain.ReservedGdtPage * 512;
    private const int Entries = 512;

    public static bool IsXenL4Slot(int i) => i is >= FirstXenSlot and <= LastXenSlot;

    private static PvDomain? Pv(Domain d) => d.Pv;

    // ---- page types (Xen's get_page_type / put_page_type) ----

    /// <summary>Takes a type reference for <paramref name="type"/> on a frame the caller holds a general reference
    /// on, validating its contents the first time it takes a page-table type. 0, or -EINVAL when the frame is in
    /// use as another type or its contents are not a valid table.</summary>
    public static long GetPageType(FrameTable frames, ulong mfn, PageType type, bool paeXenL2 = false)
    {
        lock (frames.TypeLock)
        {
            ref var ti = ref frames.TypeInfoOf(mfn);
            if (ti.Count > 0 && (ti.Type != type || ti.PaeXenL2 != paeXenL2))
                return -Errno.EINVAL;
            if (ti.Count > 0 && !ti.Validated)
                return -Errno.EINVAL; // being validated further up this walk: a table that names itself
            if (ti.Count == 0)
            {
                ti.Type = type;
                ti.PaeXenL2 = paeXenL2;
                ti.Validated = type is PageType.None or PageType.Writable;
            }
            ti.Count++;
            if (ti.Validated)
                return 0;
            long rc = Validate(frames, mfn, type, paeXenL2);
            ref var after = ref frames.TypeInfoOf(mfn);
            if (rc != 0)
            {
                after.Count--;
                if (after.Count == 0)
                    after = default;
                return rc;
            }
            after.Validated = true;
            if (type is >= PageType.L1 and <= PageType.L4)
                MarkDirty(frames, mfn);
            // Writable translations of the frame may still sit in soft TLBs: none may outlive this.
            FlushOwner(frames, mfn);
            return 0;
        }
    }

    /// <summary>Drops a type reference; the last one of a page-table type drops the references its entries hold.</summary>
    public static void PutPageType(FrameTable frames, ulong mfn)
    {
        lock (frames.TypeLock)
        {
            ref var ti = ref frames.TypeInfoOf(mfn);
            if (ti.Count == 0)
                return;
            if (--ti.Count > 0)
                return;
            var type = ti.Type;
            bool validated = ti.Validated, paeXenL2 = ti.PaeXenL2;
            ti = default;
            if (validated && type is >= PageType.L1 and <= PageType.L4)
            {
                Devalidate(frames, mfn, type, paeXenL2);
                MarkDirty(frames, mfn);
            }
        }
    }

    /// <summary>A frame the hypervisor wrote, or whose page-table type or pin came or went, counts as dirty in its
    /// owner's log-dirty mode: a live migration sends it again, with its contents and type as they are then (Xen
    /// marks a page table dirty when its type goes; here its gaining a type counts too, since a page sent before it
    /// was validated went with the machine frames in it unconverted).</summary>
    internal static void MarkDirty(FrameTable frames, ulong mfn)
    {
        if (P2m.AnyLogDirty && XenHost(frames) is { } host && host.PvDomains.TryGetValue(frames.OwnerOf((uint)mfn), out var pv))
            pv.MarkDirty(mfn);
    }

    private static void FlushOwner(FrameTable frames, ulong mfn)
    {
        if (XenHost(frames) is { } host && host.PvDomains.TryGetValue(frames.OwnerOf((uint)mfn), out var pv))
            pv.FlushTlbs(null);
    }

    // The frame table does not know the domain table; the PV MMU reaches it through the host services that
    // registered the table.
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<FrameTable, HostServices> Hosts = new();
    public static void Register(HostServices host) => Hosts.AddOrUpdate(host.Frames, host);
    private static HostServices? XenHost(FrameTable frames) => Hosts.TryGetValue(frames, out var h) ? h : null;

    /// <summary>Whether slot <paramref name="i"/> of a table is the guest's (Xen's is_guest_l2_slot and
    /// is_guest_l4_slot): not one of Xen's L4 slots, nor one of the slots of a PAE guest's top L2 that hold Xen's
    /// mappings.</summary>
    private static bool IsGuestSlot(PageType type, bool paeXenL2, int i) =>
        type == PageType.L4 ? !IsXenL4Slot(i) : !(paeXenL2 && i >= MachToPhys.CompatFirstL2Slot);

    private static long Validate(FrameTable frames, ulong mfn, PageType type, bool paeXenL2)
    {
        if (type == PageType.SegDesc)
            return ValidateDescriptorPage(frames, mfn);
        ushort owner = frames.OwnerOf((uint)mfn);
        var table = (ulong*)frames.PageAddress(mfn);
        bool compat = IsCompat(frames, owner);
        if (compat && type == PageType.L4)
            return -Errno.EINVAL;
        if (compat && type == PageType.L3)
        {
            // A PAE L3 has four entries; the rest of the page is seen by the engine's long-mode walk, so it is
            // cleared rather than trusted. The last quarter must be there, as Xen wants it for its own mappings.
            new Span<ulong>(table + 4, Entries - 4).Clear();
            if ((table[3] & PAGE_PRESENT) == 0)
                return -Errno.EINVAL;
        }
        for (int i = 0; i < Entries; i++)
        {
            if (!IsGuestSlot(type, paeXenL2, i))
                continue;
            ulong e = table[i];
            if ((e & PAGE_PRESENT) == 0)
                continue;
            // Slot 3 of a PAE L3 names the L2 that gets Xen's slots: a type of its own, in this one L3 only
            // (Xen's pae_xen_mappings_check).
            bool xenL2 = compat && type == PageType.L3 && i == 3;
            long rc = GetFromEntry(frames, type, e, owner, xenL2);
            if (rc == 0 && xenL2 && frames.TypeInfoOf((e & AddressMask) >> FrameTable.PageShift).Count != 1)
            {
                PutFromEntry(frames, type, e);
                rc = -Errno.EINVAL;
            }
            if (rc != 0)
            {
                while (--i >= 0)
                    if (IsGuestSlot(type, paeXenL2, i) && (table[i] & PAGE_PRESENT) != 0)
                        PutFromEntry(frames, type, table[i]);
                return rc;
            }
            table[i] = Adjust(e, type, compat);
        }
        if (type == PageType.L4)
            InitXenL4Slots(frames, table);
        if (paeXenL2 && XenHost(frames) is { } host)
            host.MachToPhys.InitPaeXenL2Slots(table);
        return 0;
    }

    private static void Devalidate(FrameTable frames, ulong mfn, PageType type, bool paeXenL2)
    {
        var table = (ulong*)frames.PageAddress(mfn);
        for (int i = 0; i < Entries; i++)
        {
            if (!IsGuestSlot(type, paeXenL2, i))
                continue;
            if ((table[i] & PAGE_PRESENT) != 0)
                PutFromEntry(frames, type, table[i]);
        }
    }

    /// <summary>Xen's slots of a new L4: the read-only M2P at slot 256, the rest empty.</summary>
    private static void InitXenL4Slots(FrameTable frames, ulong* l4)
    {
        ulong self = ((ulong)l4 - (ulong)frames.PageAddress(0)) >> FrameTable.PageShift;
        PvDomain? pv = null;
        XenHost(frames)?.PvDomains.TryGetValue(frames.OwnerOf((uint)self), out pv);
        InitXenL4Slots(frames, l4, pv);
    }

    /// <summary>Xen's slots of an L4 used by <paramref name="pv"/>'s vCPUs: the read-only M2P (and Xen's GDT after
    /// it) at slot 256, the per-domain slot, the rest empty.</summary>
    public static void InitXenL4Slots(FrameTable frames, ulong* l4, PvDomain? pv)
    {
        for (int i = FirstXenSlot; i <= LastXenSlot; i++)
            l4[i] = 0;
        if (XenHost(frames) is not { } host)
            return;
        if (host.MachToPhysIfMade is { } m2p)
            l4[M2pSlot] = ((ulong)m2p.L3Mfn << FrameTable.PageShift) | PAGE_PRESENT | PAGE_USER | PAGE_ACCESSED;
        if (pv is not null)
            l4[PvDomain.PerDomainSlot] = ((ulong)pv.PerDomainL3 << FrameTable.PageShift) | PAGE_PRESENT | PAGE_USER | PAGE_ACCESSED;
    }

    /// <summary>A 64-bit PV kernel runs in ring 3 on its own page tables, so every present entry is a user one
    /// (Xen's adjust_guest_lNe); kernel and user are kept apart by the two L4s. A 32-bit kernel runs in ring 1, so
    /// its L1s and L2s stay as written; its L3 entries, PAE PDPTEs without rights of their own, get RW and USER so
    /// that the long-mode walk leaves the rights to the lower levels.</summary>
    private static ulong Adjust(ulong e, PageType level, bool compat) => (e & PAGE_PRESENT) == 0 ? e
        : !compat ? e | PAGE_USER
        : level == PageType.L3 ? e | PAGE_USER | PAGE_RW
        : e;

    /// <summary>Whether <paramref name="owner"/> is a 32-bit PV domain (Xen's is_pv_32bit_domain).</summary>
    public static bool IsCompat(FrameTable frames, ushort owner) =>
        XenHost(frames) is { } host && host.PvDomains.TryGetValue(owner, out var pv) && pv.Is32;

    /// <summary>A descriptor page may hold no descriptor the guest could use to reach ring 0–2; the ones it may
    /// hold are adjusted in place (Xen's alloc_segdesc_page).</summary>
    private static long ValidateDescriptorPage(FrameTable frames, ulong mfn)
    {
        var d = (ulong*)frames.PageAddress(mfn);
        int kernelDpl = IsCompat(frames, frames.OwnerOf((uint)mfn)) ? 1 : 3;
        for (int i = 0; i < Entries; i++)
        {
            ulong desc = d[i];
            if (!CheckDescriptor(ref desc, kernelDpl))
                return -Errno.EINVAL;
            d[i] = desc;
        }
        return 0;
    }

    /// <summary>Xen's check_descriptor for code and data segments: a not-present descriptor is safe (it can only
    /// fault); a present code or data segment has its DPL raised to at least <paramref name="kernelDpl"/> — 3 for a
    /// 64-bit guest, whose kernel runs in ring 3, 1 for a 32-bit one — and its accessed bit set, so the CPU never
    /// writes the read-only page. System descriptors (gates, TSS, LDT) are refused.</summary>
    public static bool CheckDescriptor(ref ulong desc, int kernelDpl = 3)
    {
        if ((desc & (1UL << 47)) == 0)
            return true;
        if ((desc & (1UL << 44)) == 0)
            return false;
        if ((int)((desc >> 45) & 3) < kernelDpl)
            desc = (desc & ~(3UL << 45)) | ((ulong)kernelDpl << 45);
        desc |= 1UL << 40;
        return true;
    }

    // ---- entries (Xen's get_page_from_lNe / put_page_from_lNe) ----

    /// <summary>The references a present entry of a <paramref name="level"/> table holds: an L1 entry on the page
    /// (and a writable type if RW), a higher entry on the next table, which must validate as level − 1.</summary>
    private static long GetFromEntry(FrameTable frames, PageType level, ulong e, ushort pageOwner, bool paeXenL2 = false)
    {
        ulong allowed = level == PageType.L1 ? L1Allowed : BaseAllowed;
        if ((e & ~AddressMask & ~allowed) != 0)
            return -Errno.EINVAL;
        ulong target = (e & AddressMask) >> FrameTable.PageShift;
        if (!frames.TryGetPage(target, pageOwner))
            return -Errno.EINVAL;
        if (level == PageType.L1)
        {
            if ((e & PAGE_RW) == 0)
                return 0;
            if (GetPageType(frames, target, PageType.Writable) == 0)
                return 0;
        }
        else if (GetPageType(frames, target, (PageType)((int)level - 1), paeXenL2) == 0)
            return 0;
        frames.PutPage(target);
        return -Errno.EINVAL;
    }

    private static void PutFromEntry(FrameTable frames, PageType level, ulong e)
    {
        ulong target = (e & AddressMask) >> FrameTable.PageShift;
        if (level != PageType.L1 || (e & PAGE_RW) != 0)
            PutPageType(frames, target);
        frames.PutPage(target);
    }

    /// <summary>Changes entry <paramref name="index"/> of a validated table (Xen's mod_lN_entry): the new entry's
    /// references are taken before the old one's are dropped, so a failure changes nothing.</summary>
    public static long ModEntry(FrameTable frames, ulong tableMfn, PageType level, int index, ulong value, ushort pgOwner, bool preserveAd)
    {
        if (level == PageType.L4 && IsXenL4Slot(index))
            return -Errno.EINVAL;
        bool compat = IsCompat(frames, frames.OwnerOf((uint)tableMfn));
        // The slots of a PAE guest's top L2 that hold Xen's mappings are not the guest's to change (Xen's
        // mod_l2_entry: -EPERM).
        if (level == PageType.L2 && index >= MachToPhys.CompatFirstL2Slot)
            lock (frames.TypeLock)
                if (frames.TypeInfoOf(tableMfn).PaeXenL2)
                    return -Errno.EPERM;
        // A 32-bit guest's L3 has four entries, and the last stays as it was validated (Xen keeps its own mappings
        // under it and refuses to change it).
        if (compat && level == PageType.L3 && index >= 3)
            return -Errno.EINVAL;
        lock (frames.TypeLock)
        {
            ref ulong slot = ref ((ulong*)frames.PageAddress(tableMfn))[index];
            ulong old = slot;
            if (preserveAd)
                value |= old & (PAGE_ACCESSED | PAGE_DIRTY);
            if ((value & PAGE_PRESENT) != 0)
            {
                // The same frame with the same rights needs no new references (Xen's fast path).
                if ((old & PAGE_PRESENT) != 0 && ((old ^ value) & (AddressMask | PAGE_RW | PAGE_PRESENT)) == 0)
                {
                    ulong allowed = level == PageType.L1 ? L1Allowed : BaseAllowed;
                    if ((value & ~AddressMask & ~allowed) != 0)
                        return -Errno.EINVAL;
                    Volatile.Write(ref slot, Adjust(value, level, compat));
                    MarkDirty(frames, tableMfn);
                    return 0;
                }
                ushort owner = level == PageType.L1 ? pgOwner : frames.OwnerOf((uint)tableMfn);
                long rc = GetFromEntry(frames, level, value, owner);
                if (rc != 0)
                    return rc;
                value = Adjust(value, level, compat);
            }
            Volatile.Write(ref slot, value);
            MarkDirty(frames, tableMfn);
            if ((old & PAGE_PRESENT) != 0)
                PutFromEntry(frames, level, old);
            return 0;
        }
    }

    // ---- hypercalls ----

    /// <summary>mmu_update(reqs, count, pdone, foreigndom).</summary>
    public static long MmuUpdate(Vcpu v, in HypercallArgs a)
    {
        var d = v.Domain;
        if (d.Pv is null)
            return -Errno.ENOSYS;
        var frames = d.Host.Frames;
        ulong reqs = a.A1;
        uint count = (uint)a.A2;
        ulong pdone = a.A3;
        uint foreigndom = (uint)a.A4;
        uint done = 0;
        if ((count & MMU_UPDATE_PREEMPTED) != 0)
        {
            count &= ~MMU_UPDATE_PREEMPTED;
            if (pdone != 0)
                GuestAccess.Read(v, pdone, out done);
        }
        if ((foreigndom >> 16) != 0 && (foreigndom >> 16) - 1 != d.DomainId)
            return -Errno.EPERM; // page tables of another domain: a privileged domain's tool, not implemented
        if (PgOwner(d, (ushort)foreigndom, out long err) is not { } pgOwner)
            return err;

        long result = 0;
        uint i = 0;
        for (; i < count; i++)
        {
            if (i > 0 && i % Hypercall.PreemptBudget == 0)
            {
                WriteDone(v, pdone, done);
                return Hypercall.CreateContinuation(v, new HypercallArgs(reqs + i * 16UL, (count - i) | MMU_UPDATE_PREEMPTED, pdone, foreigndom));
            }
            if (!GuestAccess.ReadElement(v, reqs, i, out MmuUpdate req))
            {
                result = -Errno.EFAULT;
                break;
            }
            result = MmuUpdateOne(v, frames, req, pgOwner);
            if (result != 0)
                break;
            done++;
        }
        WriteDone(v, pdone, done);
        return result;
    }

    private static void WriteDone(Vcpu v, ulong pdone, uint done)
    {
        if (pdone != 0)
            GuestAccess.Write(v, pdone, done);
    }

    /// <summary>The domain whose frames new entries may name: the caller's own, another only for a privileged caller.</summary>
    private static Domain? PgOwner(Domain d, ushort domid, out long err)
    {
        err = 0;
        if (domid == Xen.DOMID_SELF || domid == d.DomainId)
            return d;
        // Xen's get_pg_owner: an unprivileged caller, or a domain that does not exist, is -ESRCH.
        err = -Errno.ESRCH;
        return d.IsPrivileged ? d.Host.FindDomain(domid) : null;
    }

    private static long MmuUpdateOne(Vcpu v, FrameTable frames, in MmuUpdate req, Domain pgOwner)
    {
        var d = v.Domain;
        uint cmd = (uint)(req.Ptr & 7);
        switch (cmd)
        {
            case MMU_NORMAL_PT_UPDATE or MMU_PT_UPDATE_PRESERVE_AD or MMU_PT_UPDATE_NO_TRANSLATE:
            {
                ulong ptr = req.Ptr & ~7UL;
                ulong mfn = ptr >> FrameTable.PageShift;
                if (!frames.TryGetPage(mfn, d.DomainId))
                    return -Errno.EINVAL;
                try
                {
                    lock (frames.TypeLock)
                    {
                        var ti = frames.TypeInfoOf(mfn);
                        int index = (int)((ptr & (FrameTable.PageSize - 1)) >> 3);
                        if (ti.Count > 0 && ti.Type is >= PageType.L1 and <= PageType.L4)
                        {
                            if (ti.Type != PageType.L1 && pgOwner != d)
                                return -Errno.EINVAL;
                            return ModEntry(frames, mfn, ti.Type, index, req.Val, pgOwner.DomainId, cmd == MMU_PT_UPDATE_PRESERVE_AD);
                        }
                        // Not a page table: an ordinary write, allowed where a writable mapping would be.
                        if (GetPageType(frames, mfn, PageType.Writable) != 0)
                            return -Errno.EINVAL;
                        Volatile.Write(ref ((ulong*)frames.PageAddress(mfn))[index], req.Val);
                        MarkDirty(frames, mfn);
                        PutPageType(frames, mfn);
                        return 0;
                    }
                }
                finally
                {
                    frames.PutPage(mfn);
                }
            }
            case MMU_MACHPHYS_UPDATE:
            {
                ulong mfn = req.Ptr >> FrameTable.PageShift;
                if (!frames.TryGetPage(mfn, pgOwner.DomainId))
                    return -Errno.EINVAL;
                d.Pv!.MachToPhys.Set(mfn, req.Val);
                frames.PutPage(mfn);
                return 0;
            }
            default:
                return -Errno.ENOSYS;
        }
    }

    /// <summary>mmuext_op(ops, count, pdone, foreigndom).</summary>
    public static long MmuextOp(Vcpu v, in HypercallArgs a)
    {
        var d = v.Domain;
        if (d.Pv is null)
            return -Errno.ENOSYS;
        ulong ops = a.A1;
        uint count = (uint)a.A2;
        ulong pdone = a.A3;
        uint done = 0;
        if ((count & MMU_UPDATE_PREEMPTED) != 0)
        {
            count &= ~MMU_UPDATE_PREEMPTED;
            if (pdone != 0)
                GuestAccess.Read(v, pdone, out done);
        }
        if (PgOwner(d, (ushort)a.A4, out long err) is not { } pgOwner)
            return err;
        long result = 0;
        bool compat = v.Domain.Pv is { Is32: true };
        ulong size = compat ? 12UL : 24UL;
        for (uint i = 0; i < count; i++)
        {
            if (i > 0 && i % Hypercall.PreemptBudget == 0)
            {
                WriteDone(v, pdone, done);
                return Hypercall.CreateContinuation(v, new HypercallArgs(ops + i * size, (count - i) | MMU_UPDATE_PREEMPTED, pdone, a.A4));
            }
            MmuextOp op;
            bool read;
            if (compat)
            {
                // The compat layout: 32-bit arg1 and arg2, widened as Xen's compat translation does.
                read = GuestAccess.ReadElement(v, ops, i, out CompatMmuextOp c);
                op = new MmuextOp { Cmd = c.Cmd, Arg1 = c.Arg1, Arg2 = c.Arg2 };
            }
            else
                read = GuestAccess.ReadElement(v, ops, i, out op);
            if (!read)
            {
                result = -Errno.EFAULT;
                break;
            }
            result = MmuextOne(v, op, pgOwner);
            if (result != 0)
                break;
            done++;
        }
        WriteDone(v, pdone, done);
        return result;
    }

    private static long MmuextOne(Vcpu v, in MmuextOp op, Domain pgOwner)
    {
        var d = v.Domain;
        var frames = d.Host.Frames;
        var pv = v.Pv!;
        switch (op.Cmd)
        {
            case MMUEXT_PIN_L1_TABLE or MMUEXT_PIN_L2_TABLE or MMUEXT_PIN_L3_TABLE or MMUEXT_PIN_L4_TABLE:
                return pgOwner != d ? -Errno.EINVAL : Pin(d, (PageType)((int)PageType.L1 + (int)(op.Cmd - MMUEXT_PIN_L1_TABLE)), op.Arg1);
            case MMUEXT_UNPIN_TABLE:
            {
                if (pgOwner != d || !frames.TryGetPage(op.Arg1, d.DomainId))
                    return -Errno.EINVAL;
                lock (frames.TypeLock)
                {
                    ref var ti = ref frames.TypeInfoOf(op.Arg1);
                    if (!ti.Pinned)
                    {
                        frames.PutPage(op.Arg1);
                        return -Errno.EINVAL;
                    }
                    ti.Pinned = false;
                    MarkDirty(frames, op.Arg1);
                    PutPageType(frames, op.Arg1);
                    frames.PutPage(op.Arg1);
                    frames.PutPage(op.Arg1);
                    return 0;
                }
            }
            case MMUEXT_NEW_BASEPTR:
                return pgOwner != d ? -Errno.EINVAL : NewBaseptr(v, op.Arg1, user: false);
            case MMUEXT_NEW_USER_BASEPTR:
                return pgOwner != d ? -Errno.EINVAL : NewBaseptr(v, op.Arg1, user: true);
            case MMUEXT_TLB_FLUSH_LOCAL or MMUEXT_INVLPG_LOCAL:
                pv.FlushTlb(now: true);
                return 0;
            case MMUEXT_TLB_FLUSH_MULTI or MMUEXT_INVLPG_MULTI:
            {
                if (!ReadVcpuMask(v, op.Arg2, out ulong mask))
                    return -Errno.EFAULT;
                d.Pv!.FlushTlbs(v, mask);
                return 0;
            }
            case MMUEXT_TLB_FLUSH_ALL or MMUEXT_INVLPG_ALL:
                d.Pv!.FlushTlbs(v);
                return 0;
            case MMUEXT_FLUSH_CACHE or MMUEXT_FLUSH_CACHE_GLOBAL:
                // Caches are coherent for an emulated CPU; only a domain with I/O access may ask (Xen's
                // cache_flush_permitted), which no domain here has.
                return -Errno.EACCES;
            case MMUEXT_SET_LDT:
            {
                ulong addr = op.Arg1;
                uint ents = (uint)op.Arg2;
                if (ents > LDT_MAX_ENTRIES || (addr & (FrameTable.PageSize - 1)) != 0
                    || (ents != 0 && (addr >= HYPERVISOR_VIRT_START && addr < HYPERVISOR_VIRT_END || addr + ents * 8UL < addr)))
                    return -Errno.EINVAL;
                SetLdt(v, addr, ents);
                return 0;
            }
            case MMUEXT_CLEAR_PAGE:
            {
                if (!frames.TryGetPage(op.Arg1, pgOwner.DomainId))
                    return -Errno.EINVAL;
                long rc = GetPageType(frames, op.Arg1, PageType.Writable);
                if (rc == 0)
                {
                    new Span<byte>(frames.PageAddress(op.Arg1), FrameTable.PageSize).Clear();
                    MarkDirty(frames, op.Arg1);
                    PutPageType(frames, op.Arg1);
                }
                frames.PutPage(op.Arg1);
                return rc;
            }
            case MMUEXT_COPY_PAGE:
            {
                if (!frames.TryGetPage(op.Arg2, pgOwner.DomainId))
                    return -Errno.EINVAL;
                if (!frames.TryGetPage(op.Arg1, pgOwner.DomainId))
                {
                    frames.PutPage(op.Arg2);
                    return -Errno.EINVAL;
                }
                long rc = GetPageType(frames, op.Arg1, PageType.Writable);
                if (rc == 0)
                {
                    new ReadOnlySpan<byte>(frames.PageAddress(op.Arg2), FrameTable.PageSize)
                        .CopyTo(new Span<byte>(frames.PageAddress(op.Arg1), FrameTable.PageSize));
                    MarkDirty(frames, op.Arg1);
                    PutPageType(frames, op.Arg1);
                }
                frames.PutPage(op.Arg1);
                frames.PutPage(op.Arg2);
                return rc;
            }
            case MMUEXT_MARK_SUPER or MMUEXT_UNMARK_SUPER:
                return -Errno.EOPNOTSUPP; // PV superpages are gone from Xen as well
            default:
                return -Errno.ENOSYS;
        }
    }

    /// <summary>A new LDT for the vCPU: the pages of the old one leave its window (and lose their descriptor-page
    /// type); the new one's pages are mapped as the guest first reaches them (<see cref="TryLdtFault"/>).</summary>
    public static void SetLdt(Vcpu v, ulong addr, uint ents)
    {
        var pv = v.Pv!;
        var frames = v.Domain.Host.Frames;
        lock (frames.TypeLock)
        {
            for (int i = 0; i < pv.LdtFrames.Length; i++)
            {
                if (pv.LdtFrames[i] == 0)
                    continue;
                v.Domain.Pv!.MapLdtPage(v.Id, i, 0);
                PutPageType(frames, pv.LdtFrames[i]);
                frames.PutPage(pv.LdtFrames[i]);
                pv.LdtFrames[i] = 0;
            }
            pv.LdtBase = addr;
            pv.LdtEntries = ents;
        }
        pv.LoadCr3();
    }

    /// <summary>A page fault in the vCPU's LDT window (Xen's map_ldt_shadow_page): the guest's LDT page at that
    /// offset, found through the kernel's page tables, becomes a descriptor page mapped read-only in the window and
    /// the instruction runs again; a page that is not mapped or not valid as descriptors turns the fault into a #GP
    /// on the LDT selector, as Xen raises it. False for a fault anywhere else.</summary>
    public static bool TryLdtFault(Vcpu v, ulong cr2, out uint? gpErrorCode)
    {
        gpErrorCode = null;
        var pv = v.Pv!;
        if (v.Id >= PvDomain.MaxLdtWindows)
            return false;
        ulong window = PvDomain.LdtVirt(v.Id);
        if (cr2 < window || cr2 >= window + PvDomain.LdtWindowPages * FrameTable.PageSize)
            return false;
        ulong offset = cr2 - window;
        int page = (int)(offset >> FrameTable.PageShift);
        var frames = v.Domain.Host.Frames;
        lock (frames.TypeLock)
        {
            if (offset < pv.LdtEntries * 8UL && pv.LdtFrames[page] == 0
                && TryFindL1e(frames, pv.GuestTable, pv.LdtBase + ((ulong)page << FrameTable.PageShift), out ulong l1, out int index))
            {
                ulong e = ((ulong*)frames.PageAddress(l1))[index];
                ulong mfn = (e & AddressMask) >> FrameTable.PageShift;
                if ((e & PAGE_PRESENT) != 0 && frames.TryGetPage(mfn, v.Domain.DomainId))
                {
                    if (GetPageType(frames, mfn, PageType.SegDesc) == 0)
                    {
                        pv.LdtFrames[page] = mfn;
                        v.Domain.Pv!.MapLdtPage(v.Id, page, mfn);
                        pv.FlushTlb(now: true);
                        return true;
                    }
                    frames.PutPage(mfn);
                }
            }
        }
        gpErrorCode = (uint)(offset & ~7UL) | 4; // the selector's index, with TI
        return true;
    }

    /// <summary>MMUEXT_PIN_Lx_TABLE: a general and a type reference that stay until the unpin.</summary>
    public static long Pin(Domain d, PageType type, ulong mfn)
    {
        var frames = d.Host.Frames;
        if (type == PageType.L4 && d.Pv is { Is32: true })
            return -Errno.EINVAL; // a 32-bit guest's tables have three levels
        if (!frames.TryGetPage(mfn, d.DomainId))
            return -Errno.EINVAL;
        lock (frames.TypeLock)
        {
            long rc = GetPageType(frames, mfn, type);
            if (rc != 0)
            {
                frames.PutPage(mfn);
                return rc;
            }
            ref var ti = ref frames.TypeInfoOf(mfn);
            if (ti.Pinned)
            {
                PutPageType(frames, mfn);
                frames.PutPage(mfn);
                return -Errno.EINVAL;
            }
            ti.Pinned = true;
            MarkDirty(frames, mfn);
            return 0;
        }
    }

    /// <summary>MMUEXT_NEW_BASEPTR / NEW_USER_BASEPTR: the new L4 is referenced and validated before the old one
    /// is let go. A user base of 0 means no user page tables.</summary>
    public static long NewBaseptr(Vcpu v, ulong mfn, bool user)
    {
        var frames = v.Domain.Host.Frames;
        var pv = v.Pv!;
        // A 32-bit guest's base is its PAE L3, and it has no separate user page tables.
        bool compat = v.Domain.Pv is { Is32: true };
        if (compat && user)
            return -Errno.EINVAL;
        if (user && mfn == 0)
        {
            Replace(ref pv.GuestTableUser, 0, frames);
            return 0;
        }
        if (!frames.TryGetPage(mfn, v.Domain.DomainId))
            return -Errno.EINVAL;
        long rc = GetPageType(frames, mfn, compat ? PageType.L3 : PageType.L4);
        if (rc != 0)
        {
            frames.PutPage(mfn);
            return rc;
        }
        if (user)
            Replace(ref pv.GuestTableUser, mfn, frames);
        else
            Replace(ref pv.GuestTable, mfn, frames);
        pv.LoadCr3();
        return 0;
    }

    private static void Replace(ref ulong table, ulong mfn, FrameTable frames)
    {
        ulong old = table;
        table = mfn;
        if (old != 0)
        {
            PutPageType(frames, old);
            frames.PutPage(old);
        }
    }

    /// <summary>update_va_mapping(va, val, flags): writes the L1 entry the current page tables use for
    /// <paramref name="a"/>.A1, then flushes as the flags ask. A 32-bit guest passes the 64-bit PTE as two halves
    /// (va, lo, hi, flags).</summary>
    public static long UpdateVaMapping(Vcpu v, in HypercallArgs a) => v.Domain.Pv is { Is32: true }
        ? UpdateVa(v, (uint)a.A1, (uint)a.A2 | (a.A3 << 32), (uint)a.A4, Xen.DOMID_SELF)
        : UpdateVa(v, a.A1, a.A2, a.A3, Xen.DOMID_SELF);

    /// <summary>update_va_mapping_otherdomain(va, val, flags, domid): the entry may name the other domain's frame.</summary>
    public static long UpdateVaMappingOtherdomain(Vcpu v, in HypercallArgs a) => v.Domain.Pv is { Is32: true }
        ? UpdateVa(v, (uint)a.A1, (uint)a.A2 | (a.A3 << 32), (uint)a.A4, (ushort)a.A5)
        : UpdateVa(v, a.A1, a.A2, a.A3, (ushort)a.A4);

    /// <summary>A vCPU bitmap the guest passes by pointer: unsigned longs, 32-bit ones for a 32-bit guest.</summary>
    private static bool ReadVcpuMask(Vcpu v, ulong ptr, out ulong mask)
    {
        if (v.Domain.Pv is not { Is32: true })
            return GuestAccess.Read(v, ptr, out mask);
        bool ok = GuestAccess.Read(v, ptr, out uint low);
        mask = low;
        return ok;
    }

    private static long UpdateVa(Vcpu v, ulong va, ulong val, ulong flags, ushort domid)
    {
        var d = v.Domain;
        if (d.Pv is null)
            return -Errno.ENOSYS;
        if (PgOwner(d, domid, out long err) is not { } pgOwner)
            return err;
        var frames = d.Host.Frames;
        if (!TryFindL1e(frames, v.Pv!.CurrentTable, va, out ulong l1Mfn, out int index))
            return -Errno.EINVAL;
        long rc = ModEntry(frames, l1Mfn, PageType.L1, index, val, pgOwner.DomainId, preserveAd: false);
        if (rc != 0)
            return rc;
        switch (flags & UVMF_FLUSHTYPE_MASK)
        {
            case UVMF_TLB_FLUSH or UVMF_INVLPG:
                ulong target = flags & ~UVMF_FLUSHTYPE_MASK;
                if (target == UVMF_LOCAL)
                    v.Pv!.FlushTlb(now: true);
                else if (target == UVMF_ALL)
                    d.Pv.FlushTlbs(v);
                else if (ReadVcpuMask(v, target, out ulong mask))
                    d.Pv.FlushTlbs(v, mask);
                else
                    return -Errno.EFAULT;
                break;
        }
        return 0;
    }

    /// <summary>Walks a validated L4 to the L1 table and slot that map <paramref name="va"/> (Xen's guest_map_l1e).
    /// False when a level on the way is not present or is a superpage.</summary>
    public static bool TryFindL1e(FrameTable frames, ulong l4Mfn, ulong va, out ulong l1Mfn, out int index)
    {
        l1Mfn = 0;
        index = 0;
        if (l4Mfn == 0 || (long)va >> 47 is not (0 or -1))
            return false;
        // A 32-bit guest's root is a PAE L3 over its 4 GiB.
        bool pae = frames.TypeInfoOf(l4Mfn).Type == PageType.L3;
        if (pae && va >> 32 != 0)
            return false;
        int i4 = (int)((va >> 39) & 511);
        if (!pae && IsXenL4Slot(i4))
            return false;
        ulong table = l4Mfn;
        int top = pae ? 30 : 39;
        for (int shift = top; shift > 12; shift -= 9)
        {
            ulong e = ((ulong*)frames.PageAddress(table))[(va >> shift) & 511];
            if ((e & PAGE_PRESENT) == 0 || (shift < top && (e & PAGE_PSE) != 0))
                return false;
            table = (e & AddressMask) >> FrameTable.PageShift;
        }
        l1Mfn = table;
        index = (int)((va >> 12) & 511);
        return true;
    }

    // ---- grant mappings (Xen's create_grant_host_mapping / replace_grant_host_mapping for PV) ----

    /// <summary>Finds the L1 slot a PV grant host mapping goes into: the entry at machine address
    /// <paramref name="addr"/> of an L1 of the caller's with GNTMAP_contains_pte, else the one the vCPU's current
    /// page tables use for linear address <paramref name="addr"/>. False when there is no such L1.</summary>
    public static bool TryGrantSlot(Vcpu v, ulong addr, bool containsPte, out ulong l1Mfn, out int index)
    {
        var frames = v.Domain.Host.Frames;
        if (!containsPte)
            return TryFindL1e(frames, v.Pv!.CurrentTable, addr, out l1Mfn, out index);
        l1Mfn = addr >> FrameTable.PageShift;
        index = (int)((addr & (FrameTable.PageSize - 1)) >> 3);
        if ((addr & 7) != 0 || !frames.TryGetPage(l1Mfn, v.Domain.DomainId))
            return false;
        bool isL1;
        lock (frames.TypeLock)
        {
            var ti = frames.TypeInfoOf(l1Mfn);
            isL1 = ti.Count > 0 && ti.Type == PageType.L1 && ti.Validated;
        }
        frames.PutPage(l1Mfn);
        return isL1;
    }

    /// <summary>Writes a grant's PTE into an L1 slot: the entry holds a general reference on the granted frame and,
    /// when writable, a writable type, as any L1 entry does, so a later change of the entry lets them go the usual
    /// way. The entry that was there is let go. False when the slot is no longer in a validated L1 or a writable
    /// type cannot be had.</summary>
    public static bool WriteGrantPte(FrameTable frames, ulong l1Mfn, int index, uint mfn, bool readOnly)
    {
        // Xen's GRANT_PTE_FLAGS: present, accessed, dirty, not executable; writable unless read-only.
        ulong pte = ((ulong)mfn << FrameTable.PageShift) | PAGE_PRESENT | PAGE_ACCESSED | PAGE_DIRTY | PAGE_NX
            | (readOnly ? 0 : PAGE_RW);
        lock (frames.TypeLock)
        {
            var ti = frames.TypeInfoOf(l1Mfn);
            if (ti.Count == 0 || ti.Type != PageType.L1 || !ti.Validated)
                return false;
            frames.AddRef(mfn);
            if (!readOnly && GetPageType(frames, mfn, PageType.Writable) != 0)
            {
                frames.PutPage(mfn);
                return false;
            }
            ref ulong slot = ref ((ulong*)frames.PageAddress(l1Mfn))[index];
            ulong old = slot;
            Volatile.Write(ref slot, Adjust(pte, PageType.L1, IsCompat(frames, frames.OwnerOf((uint)l1Mfn))));
            MarkDirty(frames, l1Mfn);
            if ((old & PAGE_PRESENT) != 0)
                PutFromEntry(frames, PageType.L1, old);
            return true;
        }
    }

    /// <summary>Clears a grant's PTE from an L1 slot if it still maps <paramref name="mfn"/> (Xen's
    /// replace_grant_host_mapping with no replacement); false when the entry maps something else or the slot is
    /// no longer in an L1, and then nothing changes.</summary>
    public static bool ClearGrantPte(FrameTable frames, ulong l1Mfn, int index, uint mfn)
    {
        lock (frames.TypeLock)
        {
            var ti = frames.TypeInfoOf(l1Mfn);
            if (ti.Count == 0 || ti.Type != PageType.L1)
                return false;
            ref ulong slot = ref ((ulong*)frames.PageAddress(l1Mfn))[index];
            ulong old = slot;
            if ((old & PAGE_PRESENT) == 0 || ((old & AddressMask) >> FrameTable.PageShift) != mfn)
                return false;
            Volatile.Write(ref slot, 0UL);
            MarkDirty(frames, l1Mfn);
            PutFromEntry(frames, PageType.L1, old);
            return true;
        }
    }

    /// <summary>The frame is <paramref name="d"/>'s and could take a writable type now (what Xen's
    /// get_page_and_type(PGT_writable_page) checks before it places a vcpu_info or shared structure there).</summary>
    public static bool IsOwnWritableFrame(Domain d, ulong mfn)
    {
        var frames = d.Host.Frames;
        if (mfn > uint.MaxValue || !frames.TryGetPage(mfn, d.DomainId))
            return false;
        bool ok;
        lock (frames.TypeLock)
        {
            ok = GetPageType(frames, mfn, PageType.Writable) == 0;
            if (ok)
                PutPageType(frames, mfn);
        }
        frames.PutPage(mfn);
        return ok;
    }

    /// <summary>The writable RAM frame a guest names by its frame number: for a PV guest, which is not translated,
    /// a machine frame of its own that could be mapped writable; otherwise a gfn of its p2m.</summary>
    public static bool TryGuestWritableFrame(Domain d, ulong gfn, out uint mfn)
    {
        if (d.Pv is not null)
        {
            mfn = (uint)gfn;
            return IsOwnWritableFrame(d, gfn);
        }
        return d.P2m.TryLookup(gfn, out mfn, out var type) && type == P2mType.RamRw;
    }

    /// <summary>Drops a pin if the frame has one (domain teardown).</summary>
    public static void Unpin(FrameTable frames, ulong mfn)
    {
        lock (frames.TypeLock)
        {
            ref var ti = ref frames.TypeInfoOf(mfn);
            if (!ti.Pinned)
                return;
            ti.Pinned = false;
            PutPageType(frames, mfn);
            frames.PutPage(mfn);
        }
    }

    /// <summary>Frees what a vCPU holds here when its domain dies: its page-table bases and GDT frames.</summary>
    public static void ReleaseVcpu(Vcpu v)
    {
        if (v.Pv is not { } pv)
            return;
        var frames = v.Domain.Host.Frames;
        lock (frames.TypeLock)
        {
            Replace(ref pv.GuestTableUser, 0, frames);
            Replace(ref pv.GuestTable, 0, frames);
            SetGdtFrames(v, [], 0);
            SetLdt(v, 0, 0);
        }
    }

    /// <summary>set_gdt(frame_list, entries): the frames become descriptor pages (validated, read-only to the guest)
    /// and the vCPU's GDT; the old ones are let go. -EINVAL for too many entries or a frame that does not validate.</summary>
    public static long SetGdt(Vcpu v, in HypercallArgs a)
    {
        if (v.Pv is null)
            return -Errno.ENOSYS;
        ulong entries = a.A2;
        if (entries > FirstReservedGdtEntry)
            return -Errno.EINVAL;
        int nr = (int)((entries + 511) / 512);
        Span<ulong> mfns = stackalloc ulong[PvDomain.ReservedGdtPage];
        bool compat = v.Domain.Pv is { Is32: true };
        for (int i = 0; i < nr; i++)
        {
            // A 32-bit guest's frame list holds 32-bit MFNs.
            uint m32 = 0;
            bool ok = compat ? GuestAccess.ReadElement(v, a.A1, (ulong)i, out m32) : GuestAccess.ReadElement(v, a.A1, (ulong)i, out mfns[i]);
            if (compat)
                mfns[i] = m32;
            if (!ok)
                return -Errno.EFAULT;
        }
        return SetGdtFrames(v, mfns[..nr], entries);
    }

    internal static long SetGdtFrames(Vcpu v, ReadOnlySpan<ulong> mfns, ulong entries)
    {
        var pv = v.Pv!;
        var frames = v.Domain.Host.Frames;
        lock (frames.TypeLock)
        {
            for (int i = 0; i < mfns.Length; i++)
            {
                long rc = -Errno.EINVAL;
                if (frames.TryGetPage(mfns[i], v.Domain.DomainId))
                {
                    rc = GetPageType(frames, mfns[i], PageType.SegDesc);
                    if (rc != 0)
                        frames.PutPage(mfns[i]);
                }
                if (rc != 0)
                {
                    while (--i >= 0)
                    {
                        PutPageType(frames, mfns[i]);
                        frames.PutPage(mfns[i]);
                    }
                    return rc;
                }
            }
            for (int i = 0; i < pv.GdtFrameCount; i++)
            {
                PutPageType(frames, pv.GdtFrames[i]);
                frames.PutPage(pv.GdtFrames[i]);
            }
            mfns.CopyTo(pv.GdtFrames);
            pv.GdtFrameCount = mfns.Length;
            pv.GdtEntries = entries;
            v.Domain.Pv!.MapGdt(v.Id, mfns);
        }
        pv.FlushTlb(now: true);
        return 0;
    }

    /// <summary>update_descriptor(ma, desc): one descriptor, checked as a descriptor page's are, into a frame of the
    /// guest's (a GDT/LDT page, or one it could write anyway).</summary>
    public static long UpdateDescriptor(Vcpu v, in HypercallArgs a)
    {
        if (v.Pv is null)
            return -Errno.ENOSYS;
        // The compat ABI passes the machine address and the descriptor each as two 32-bit halves.
        bool compat = v.Domain.Pv is { Is32: true };
        ulong ma = compat ? (uint)a.A1 | (a.A2 << 32) : a.A1;
        ulong desc = compat ? (uint)a.A3 | (a.A4 << 32) : a.A2;
        ulong mfn = ma >> FrameTable.PageShift;
        var frames = v.Domain.Host.Frames;
        if ((ma & 7) != 0 || !CheckDescriptor(ref desc, compat ? 1 : 3) || !frames.TryGetPage(mfn, v.Domain.DomainId))
            return -Errno.EINVAL;
        try
        {
            lock (frames.TypeLock)
            {
                var ti = frames.TypeInfoOf(mfn);
                ref ulong slot = ref ((ulong*)frames.PageAddress(mfn))[(ma & (FrameTable.PageSize - 1)) >> 3];
                if (ti.Count > 0 && ti.Type == PageType.SegDesc)
                {
                    Volatile.Write(ref slot, desc);
                    MarkDirty(frames, mfn);
                    return 0;
                }
                if (GetPageType(frames, mfn, PageType.Writable) != 0)
                    return -Errno.EINVAL;
                Volatile.Write(ref slot, desc);
                MarkDirty(frames, mfn);
                PutPageType(frames, mfn);
                return 0;
            }
        }
        finally
        {
            frames.PutPage(mfn);
        }
    }
}
