using System.Runtime.InteropServices;
using XenSharp.Public;
using XenSharp.Public.Compat;
using static XenSharp.Public.Memory;

namespace XenSharp.Hypervisor.Common;

/// <summary>__HYPERVISOR_memory_op (XENMEM_*): reservations, the physmap and the memory map.</summary>
internal static class MemoryOp
{
    /// <summary>Largest extent order a guest may ask for (Xen's CONFIG_DOMU_MAX_ORDER / CONFIG_HWDOM_MAX_ORDER).</summary>
    public const int MaxOrderDomU = 9, MaxOrderPrivileged = 12;

    public static long Do(Vcpu v, in HypercallArgs a)
    {
        int op = (int)(a.A1 & MEMOP_CMD_MASK);
        ulong startExtent = a.A1 >> MEMOP_EXTENT_SHIFT;
        ulong arg = a.A2;
        switch (op)
        {
            case XENMEM_increase_reservation:
            case XENMEM_decrease_reservation:
            case XENMEM_populate_physmap:
                return Reservation(v, op, arg, startExtent);
            case XENMEM_maximum_ram_page:
                return v.Domain.Host.Frames.MaxMfn;
            case XENMEM_current_reservation:
            case XENMEM_maximum_reservation:
            case XENMEM_maximum_gpfn:
            {
                if (!GuestAccess.Read(v, arg, out ushort domid))
                    return -Errno.EFAULT;
                var d = v.Domain.Host.LookupForGuest(v.Domain, domid, out long err);
                if (d is null)
                    return err;
                return op switch
                {
                    XENMEM_current_reservation => d.TotPages,
                    XENMEM_maximum_reservation => (long)d.MaxPages,
                    _ => (long)d.P2m.MaxMappedGfn,
                };
            }
            case XENMEM_exchange:
                return startExtent != 0 ? -Errno.EINVAL : MemoryExchange.Do(v, a);
            case XENMEM_add_to_physmap:
                return AddToPhysmap(v, arg, startExtent);
            case XENMEM_add_to_physmap_batch:
                return AddToPhysmapBatch(v, arg, startExtent);
            case XENMEM_remove_from_physmap:
            {
                XenRemoveFromPhysmap r;
                if (v.Compat)
                {
                    if (!GuestAccess.Read(v, arg, out XenRemoveFromPhysmap32 r32))
                        return -Errno.EFAULT;
                    r = new XenRemoveFromPhysmap { Domid = r32.Domid, Gpfn = r32.Gpfn };
                }
                else if (!GuestAccess.Read(v, arg, out r))
                    return -Errno.EFAULT;
                var d = v.Domain.Host.LookupForGuest(v.Domain, r.Domid, out long err);
                if (d is null)
                    return err;
                return d.RemovePage(r.Gpfn) ? 0 : -Errno.ENOENT;
            }
            case XENMEM_machphys_mapping:
                return MachphysMapping(v, arg);
            case XENMEM_machphys_mfn_list when v.Compat:
            case XENMEM_machphys_compat_mfn_list:
                return MachphysCompatMfnList(v, arg);
            case XENMEM_machphys_mfn_list:
                return MachphysMfnList(v, arg);
            case XENMEM_memory_map:
                return MemoryMap(v, arg);
            case XENMEM_set_memory_map:
                return SetMemoryMap(v, arg);
            case XENMEM_claim_pages:
                return ClaimPages(v, arg);
            case XENMEM_set_pod_target:
            case XENMEM_get_pod_target:
                return PodTarget(v, op, arg);
            case Public.VmEvent.XENMEM_access_op:
                return MemAccess.Op(v, arg, startExtent);
            case Public.MemSharing.XENMEM_sharing_op:
                return v.Domain.Host.Sharing.Op(v, arg);
            case Public.MemPaging.XENMEM_paging_op:
                return MemPaging.Op(v, arg);
            case Public.MemSharing.XENMEM_get_sharing_freed_pages:
                return v.Domain.Host.Sharing.SavedPages;
            case Public.MemSharing.XENMEM_get_sharing_shared_pages:
                return v.Domain.Host.Sharing.SharedPages;
            case XENMEM_get_vnumainfo:
            {
                // No domain has a virtual NUMA topology: -EOPNOTSUPP, which is how libxl's save learns there is none.
                if (!GuestAccess.Read(v, arg, out ushort domid))
                    return -Errno.EFAULT;
                return v.Domain.Host.LookupForGuest(v.Domain, domid, out long err) is null ? err : -Errno.EOPNOTSUPP;
            }
            default:
                return -Errno.ENOSYS;
        }
    }

    /// <summary>XENMEM_machphys_mapping: where the M2P is, as the caller's ABI has it — the 64-bit table for a
    /// 64-bit caller, the compat one at HYPERVISOR_COMPAT_VIRT_START for a 32-bit caller (Xen's
    /// MACH2PHYS_COMPAT_* values).</summary>
    private static long MachphysMapping(Vcpu v, ulong arg)
    {
        if (v.Compat)
        {
            var m32 = new XenMachphysMapping32
            {
                VStart = X86.Pv.MachToPhys.CompatVirtStart, VEnd = X86.Pv.MachToPhys.CompatVirtEnd,
                MaxMfn = (uint)(X86.Pv.MachToPhys.CompatMaxEntries - 1),
            };
            return GuestAccess.Write(v, arg, m32) ? 0 : -Errno.EFAULT;
        }
        var m = new XenMachphysMapping
        {
            VStart = Public.Mmu.MACH2PHYS_VIRT_START, VEnd = Public.Mmu.MACH2PHYS_VIRT_END,
            MaxMfn = (Public.Mmu.MACH2PHYS_VIRT_END - Public.Mmu.MACH2PHYS_VIRT_START) / 8 - 1,
        };
        return GuestAccess.Write(v, arg, m) ? 0 : -Errno.EFAULT;
    }

    /// <summary>XENMEM_machphys_compat_mfn_list (and XENMEM_machphys_mfn_list from a 32-bit caller): the first MFN of
    /// each 2 MiB superpage of the compat M2P, up to max_extents, in the caller's xen_pfn_t; nr_extents says how
    /// many were written.</summary>
    private static long MachphysCompatMfnList(Vcpu v, ulong arg)
    {
        uint max;
        ulong array;
        if (v.Compat)
        {
            if (!GuestAccess.Read(v, arg, out XenMachphysMfnList32 l32))
                return -Errno.EFAULT;
            (max, array) = (l32.MaxExtents, l32.ExtentStart);
        }
        else
        {
            if (!GuestAccess.Read(v, arg, out XenMachphysMfnList l))
                return -Errno.EFAULT;
            (max, array) = (l.MaxExtents, l.ExtentStart);
        }
        var chunks = v.Domain.Host.MachToPhys.CompatChunks;
        uint i = 0;
        for (; i < max && i < chunks.Length; i++)
        {
            bool ok = v.Compat ? GuestAccess.WriteElement(v, array, i, chunks[(int)i]) : GuestAccess.WriteElement(v, array, i, (ulong)chunks[(int)i]);
            if (!ok)
                return -Errno.EFAULT;
        }
        bool written = v.Compat
            ? GuestAccess.Write(v, arg + 8, i)
            : GuestAccess.Write(v, arg + 16, i);
        return written ? 0 : -Errno.EFAULT;
    }

    /// <summary>XENMEM_machphys_mfn_list from a 64-bit caller: the first MFN of each 2 MiB superpage of the M2P, up to
    /// max_extents; nr_extents says how many were written.</summary>
    private static long MachphysMfnList(Vcpu v, ulong arg)
    {
        if (!GuestAccess.Read(v, arg, out XenMachphysMfnList l))
            return -Errno.EFAULT;
        var chunks = v.Domain.Host.MachToPhys.Chunks;
        uint i = 0;
        for (; i < l.MaxExtents && i < chunks.Length; i++)
            if (!GuestAccess.WriteElement(v, l.ExtentStart, i, (ulong)chunks[(int)i]))
                return -Errno.EFAULT;
        return GuestAccess.Write(v, arg + 16, i) ? 0 : -Errno.EFAULT;
    }

    /// <summary>increase/decrease_reservation and populate_physmap: returns the number of extents done,
    /// stopping at the first that fails (Xen's convention; a bad argument struct yields the start extent).</summary>
    private static long Reservation(Vcpu v, int op, ulong arg, ulong start)
    {
        XenMemoryReservation r;
        if (v.Compat)
        {
            if (!GuestAccess.Read(v, arg, out XenMemoryReservation32 r32))
                return (long)start;
            r = new XenMemoryReservation { ExtentStart = r32.ExtentStart, NrExtents = r32.NrExtents, ExtentOrder = r32.ExtentOrder, MemFlags = r32.MemFlags, Domid = r32.Domid };
        }
        else if (!GuestAccess.Read(v, arg, out r))
            return (long)start;
        // Beyond what a continuation can encode in the command's upper bits.
        if (r.NrExtents > (uint.MaxValue >> MEMOP_EXTENT_SHIFT))
            return (long)start;
        if (r.ExtentOrder > (v.Domain.IsPrivileged ? MaxOrderPrivileged : MaxOrderDomU) || start > r.NrExtents)
            return (long)start;
        var d = v.Domain.Host.LookupForGuest(v.Domain, r.Domid, out long err);
        if (d is null)
            return err;
        if (Xsm.XsmHooks.MemoryForeign(v.Domain, d, physmap: false) is < 0 and var denied)
            return denied;
        // PoD entries are the toolstack's to place: a domain may not mark its own memory populate-on-demand.
        bool pod = op == XENMEM_populate_physmap && (r.MemFlags & XENMEMF_populate_on_demand) != 0;
        if (pod && d == v.Domain)
            return (long)start;
        ulong pages = 1UL << (int)r.ExtentOrder;
        ulong i = start;
        ulong budget = 0;
        for (; i < r.NrExtents; i++)
        {
            if (budget >= (ulong)Hypercall.PreemptBudget)
                return Hypercall.CreateContinuation(v, new HypercallArgs((uint)op | (i << MEMOP_EXTENT_SHIFT), arg));
            budget += pages;
            switch (op)
            {
                case XENMEM_populate_physmap:
                {
                    if (!ReadPfn(v, r.ExtentStart, i, out ulong gpfn))
                        return (long)i;
                    gpfn &= ~(pages - 1);
                    if (pod)
                    {
                        if (d.Pod.MarkPopulateOnDemand(gpfn, pages) != 0)
                            return (long)i;
                        break;
                    }
                    if ((ulong)d.TotPages + pages > d.MaxPages)
                        return (long)i;
                    for (ulong p = 0; p < pages; p++)
                        if (!d.PopulateRam(gpfn + p))
                            return (long)i;
                    break;
                }
                case XENMEM_increase_reservation:
                    // Every domain here is auto-translated: the frames are the domain's, but Xen neither
                    // maps them nor writes their MFNs back (that is for PV guests); populate_physmap places memory.
                    if (!d.AllocateUnplaced(pages))
                        return (long)i;
                    break;
                default:
                {
                    if (!ReadPfn(v, r.ExtentStart, i, out ulong gpfn))
                        return (long)i;
                    for (ulong p = 0; p < pages; p++)
                        if (!d.Pod.DecreaseReservation(gpfn + p))
                            return (long)i;
                    break;
                }
            }
        }
        return (long)i;
    }

    /// <summary>xen_pfn_t array elements: 8 bytes, or 4 for a 32-bit caller.</summary>
    public static bool ReadPfn(Vcpu v, ulong array, ulong i, out ulong pfn)
    {
        if (!v.Compat)
            return GuestAccess.ReadElement(v, array, i, out pfn);
        bool ok = GuestAccess.ReadElement(v, array, i, out uint p32);
        pfn = p32;
        return ok;
    }

    public static bool WritePfn(Vcpu v, ulong array, ulong i, ulong pfn) =>
        v.Compat ? GuestAccess.WriteElement(v, array, i, (uint)pfn) : GuestAccess.WriteElement(v, array, i, pfn);

    private static long AddToPhysmap(Vcpu v, ulong arg, ulong start)
    {
        if (start > ushort.MaxValue)
            return -Errno.EDOM;
        XenAddToPhysmap x;
        if (v.Compat)
        {
            if (!GuestAccess.Read(v, arg, out XenAddToPhysmap32 x32))
                return -Errno.EFAULT;
            x = new XenAddToPhysmap { Domid = x32.Domid, Size = x32.Size, Space = x32.Space, Idx = x32.Idx, Gpfn = x32.Gpfn };
        }
        else if (!GuestAccess.Read(v, arg, out x))
            return -Errno.EFAULT;
        // Foreign frames are mapped only through add_to_physmap_batch.
        if (x.Space == XENMAPSPACE_gmfn_foreign)
            return -Errno.ENOSYS;
        var d = v.Domain.Host.LookupForGuest(v.Domain, x.Domid, out long err);
        if (d is null)
            return err;
        if (x.Space == XENMAPSPACE_gmfn_range)
        {
            if (x.Size < start)
                return -Errno.EILSEQ;
            for (ulong i = start; i < x.Size; i++)
            {
                if (i > start && (i - start) % (ulong)Hypercall.PreemptBudget == 0)
                    return Hypercall.CreateContinuation(v, new HypercallArgs((ulong)XENMEM_add_to_physmap | (i << MEMOP_EXTENT_SHIFT), arg));
                long rc = AddOne(v.Domain, d, x.Space, 0, x.Idx + i, x.Gpfn + i);
                if (rc != 0)
                    return rc;
            }
            return 0;
        }
        return AddOne(v.Domain, d, x.Space, 0, x.Idx, x.Gpfn);
    }

    /// <summary>XENMEM_add_to_physmap_batch: each entry's result goes to errs[]; only a fault reading or writing the
    /// arrays fails the call. gmfn_foreign maps another domain's frame into a privileged caller's physmap.</summary>
    private static long AddToPhysmapBatch(Vcpu v, ulong arg, ulong start)
    {
        if (start > ushort.MaxValue)
            return -Errno.EDOM;
        XenAddToPhysmapBatch b;
        if (v.Compat)
        {
            if (!GuestAccess.Read(v, arg, out XenAddToPhysmapBatch32 b32))
                return -Errno.EFAULT;
            b = new XenAddToPhysmapBatch { Domid = b32.Domid, Space = b32.Space, Size = b32.Size, ForeignDomid = b32.ForeignDomid, Idxs = b32.Idxs, Gpfns = b32.Gpfns, Errs = b32.Errs };
        }
        else if (!GuestAccess.Read(v, arg, out b))
            return -Errno.EFAULT;
        if (b.Space == XENMAPSPACE_gmfn_range)
            return -Errno.EOPNOTSUPP;
        var d = v.Domain.Host.LookupForGuest(v.Domain, b.Domid, out long err);
        if (d is null)
            return err;
        if (b.Size < start)
            return -Errno.EILSEQ;
        for (ulong i = start; i < b.Size; i++)
        {
            if (i > start && (i - start) % (ulong)Hypercall.PreemptBudget == 0)
                return Hypercall.CreateContinuation(v, new HypercallArgs((ulong)XENMEM_add_to_physmap_batch | (i << MEMOP_EXTENT_SHIFT), arg));
            ulong idx;
            if (v.Compat)
            {
                if (!GuestAccess.ReadElement(v, b.Idxs, i, out uint idx32))
                    return -Errno.EFAULT;
                idx = idx32;
            }
            else if (!GuestAccess.ReadElement(v, b.Idxs, i, out idx))
                return -Errno.EFAULT;
            if (!ReadPfn(v, b.Gpfns, i, out ulong gpfn))
                return -Errno.EFAULT;
            int rc = (int)AddOne(v.Domain, d, b.Space, b.ForeignDomid, idx, gpfn);
            if (!GuestAccess.WriteElement(v, b.Errs, i, rc))
                return -Errno.EFAULT;
        }
        return 0;
    }

    /// <summary>One page of add_to_physmap (Xen's xenmem_add_to_physmap_one) into domain <paramref name="d"/>.</summary>
    private static long AddOne(Domain caller, Domain d, uint space, ushort foreignDomid, ulong idx, ulong gpfn)
    {
        if (gpfn > P2m.MaxGfn)
            return -Errno.EINVAL;
        switch (space)
        {
            case XENMAPSPACE_shared_info:
                if (idx != 0)
                    return -Errno.EINVAL;
                lock (d.Lock)
                {
                    if (d.SharedInfoGfn is ulong oldGfn)
                        d.P2m.Remove(oldGfn);
                    d.ReleaseOld(d.P2m.Set(gpfn, d.SharedInfoMfn, P2mType.XenShared));
                    d.SharedInfoGfn = gpfn;
                }
                d.Host.Time.UpdateWallclock(d);
                foreach (var vc in d.Vcpus)
                    d.Host.Time.UpdateVcpuTime(vc);
                return 0;
            case XENMAPSPACE_grant_table:
                return d.Gnttab.MapFrameIntoPhysmap(idx, gpfn);
            case XENMAPSPACE_gmfn:
            case XENMAPSPACE_gmfn_range:
                return MoveGmfn(d, idx, gpfn);
            case XENMAPSPACE_gmfn_foreign:
                return AddForeign(caller, d, foreignDomid, idx, gpfn);
            case XENMAPSPACE_dev_mmio:
                return -Errno.EACCES; // hardware domains only, and there is no hardware here
            default:
                return -Errno.ENOSYS;
        }
    }

    /// <summary>Maps frame <paramref name="fgfn"/> of a foreign domain at <paramref name="gpfn"/> of <paramref name="d"/> (Xen's
    /// p2m_add_foreign). The mapping holds a reference, so the frame outlives its owner freeing it until it is unmapped.</summary>
    private static unsafe long AddForeign(Domain caller, Domain d, ushort foreignDomid, ulong fgfn, ulong gpfn)
    {
        // Foreign entries are for backends in a privileged domain (Xen limits them to the hardware domain).
        if (!caller.IsPrivileged || !d.IsPrivileged)
            return -Errno.EPERM;
        var f = d.Host.FindDomain(foreignDomid);
        if (f is null)
            return -Errno.ESRCH;
        if (f == d || f.IsHost)
            return -Errno.EINVAL;
        uint mfn;
        // A populate-on-demand frame is filled first, as Xen's get_page_from_gfn with P2M_ALLOC does, and a shared one
        // unshared (P2M_UNSHARE).
        if (f.P2m.TryLookup(fgfn, out _, out var ft) && ft == P2mType.RamShared)
            f.Host.Sharing.Unshare(f, fgfn);
        else
            f.P2m.GetPage(fgfn, write: false);
        lock (f.Lock)
        {
            if (!f.P2m.TryLookup(fgfn, out mfn, out var t) || t is not (P2mType.RamRw or P2mType.RamRo))
                return -Errno.EINVAL;
            d.Host.Frames.AddRef(mfn);
        }
        lock (d.Lock)
            d.ReleaseOld(d.P2m.Set(gpfn, mfn, P2mType.Foreign));
        return 0;
    }

    internal static long MoveGmfn(Domain d, ulong fromGfn, ulong toGfn)
    {
        lock (d.Lock)
        {
            if (!d.P2m.TryLookup(fromGfn, out uint mfn, out var t) || t is not (P2mType.RamRw or P2mType.RamRo))
                return -Errno.EINVAL;
            if (fromGfn == toGfn)
                return 0;
            d.P2m.Remove(fromGfn);
            d.ReleaseOld(d.P2m.Set(toGfn, mfn, t));
            return 0;
        }
    }

    /// <summary>XENMEM_set_pod_target / XENMEM_get_pod_target: the control domain's (XSM_PRIV); both report
    /// tot_pages, the PoD cache and the outstanding PoD entries.</summary>
    private static long PodTarget(Vcpu v, int op, ulong arg)
    {
        XenPodTarget t;
        if (v.Compat)
        {
            if (!GuestAccess.Read(v, arg, out XenPodTarget32 t32))
                return -Errno.EFAULT;
            t = new XenPodTarget { TargetPages = t32.TargetPages, Domid = t32.Domid };
        }
        else if (!GuestAccess.Read(v, arg, out t))
            return -Errno.EFAULT;
        var d = t.Domid == Xen.DOMID_SELF ? v.Domain : v.Domain.Host.FindDomain(t.Domid);
        if (d is null)
            return -Errno.ESRCH;
        if (!v.Domain.IsPrivileged)
            return -Errno.EPERM;
        if (d.IsHost)
            return -Errno.EINVAL;
        if (op == XENMEM_set_pod_target)
        {
            if (t.TargetPages > d.MaxPages)
                return -Errno.EINVAL;
            long rc = d.Pod.SetMemTarget(t.TargetPages);
            if (rc < 0)
                return rc;
        }
        t.TotPages = (ulong)d.TotPages;
        t.PodCachePages = (ulong)d.Pod.Count;
        t.PodEntries = (ulong)d.Pod.EntryCount;
        bool ok = v.Compat
            ? GuestAccess.Write(v, arg, new XenPodTarget32 { TargetPages = t.TargetPages, TotPages = t.TotPages, PodCachePages = t.PodCachePages, PodEntries = t.PodEntries, Domid = t.Domid })
            : GuestAccess.Write(v, arg, t);
        return ok ? 0 : -Errno.EFAULT;
    }

    /// <summary>Most entries a domain's e820 may have (Xen's E820MAX).</summary>
    private const uint E820Max = 128;

    /// <summary>XENMEM_set_memory_map (struct xen_foreign_memory_map): the toolstack sets the e820 another domain's
    /// XENMEM_memory_map will return.</summary>
    private static long SetMemoryMap(Vcpu v, ulong arg)
    {
        if (v.Compat || !GuestAccess.Read(v, arg, out XenForeignMemoryMap fmap))
            return -Errno.EFAULT;
        if (!v.Domain.IsPrivileged)
            return -Errno.EPERM;
        var d = v.Domain.Host.LookupForGuest(v.Domain, fmap.Domid, out long err);
        if (d is null)
            return err;
        if (d.IsHost || fmap.Map.NrEntries > E820Max)
            return -Errno.EINVAL;
        var entries = new E820Entry[fmap.Map.NrEntries];
        if (entries.Length > 0 && !GuestAccess.CopyFrom(v, fmap.Map.Buffer, MemoryMarshal.AsBytes(entries.AsSpan())))
            return -Errno.EFAULT;
        d.MemoryMap = entries;
        return 0;
    }

    /// <summary>XENMEM_claim_pages: the toolstack asks that a domain's build will find its pages. Machine memory is
    /// the daemon's alone, so a claim is only checked against what is free now (-ENOMEM); 0 pages cancels.</summary>
    private static long ClaimPages(Vcpu v, ulong arg)
    {
        if (v.Compat || !GuestAccess.Read(v, arg, out XenMemoryReservation r))
            return -Errno.EFAULT;
        if (!v.Domain.IsPrivileged)
            return -Errno.EPERM;
        if (r.ExtentOrder != 0 || r.MemFlags != 0)
            return -Errno.EINVAL;
        var d = v.Domain.Host.LookupForGuest(v.Domain, r.Domid, out long err);
        if (d is null)
            return err;
        if (d.IsHost)
            return -Errno.EINVAL;
        return r.NrExtents > (ulong)d.Host.Frames.FreeFrames ? -Errno.ENOMEM : 0;
    }

    private static unsafe long MemoryMap(Vcpu v, ulong arg)
    {
        XenMemoryMap m;
        if (v.Compat)
        {
            if (!GuestAccess.Read(v, arg, out XenMemoryMap32 m32))
                return -Errno.EFAULT;
            m = new XenMemoryMap { NrEntries = m32.NrEntries, Buffer = m32.Buffer };
        }
        else if (!GuestAccess.Read(v, arg, out m))
            return -Errno.EFAULT;
        var map = v.Domain.MemoryMap;
        if (map.Length == 0)
            return -Errno.ENOSYS;
        int n = (int)Math.Min(m.NrEntries, (uint)map.Length);
        if (!GuestAccess.CopyTo(v, m.Buffer, MemoryMarshal.AsBytes(map.AsSpan(0, n))))
            return -Errno.EFAULT;
        // nr_entries is the first field in both layouts.
        return GuestAccess.Write(v, arg, (uint)n) ? 0 : -Errno.EFAULT;
    }
}

/// <summary>__HYPERVISOR_vm_assist: only the assists that mean something for HVM/PVH guests.</summary>
internal static class VmAssist
{
    private const ulong Valid = 1UL << Xen.VMASST_TYPE_runstate_update_flag;
    /// <summary>What a 64-bit PV guest may ask for as well (Xen's NATIVE_VM_ASSIST_VALID).</summary>
    private const ulong ValidPv = Valid | 1UL << Xen.VMASST_TYPE_4gb_segments | 1UL << Xen.VMASST_TYPE_4gb_segments_notify
        | 1UL << Xen.VMASST_TYPE_writable_pagetables | 1UL << Xen.VMASST_TYPE_pae_extended_cr3
        | 1UL << Xen.VMASST_TYPE_architectural_iopl | 1UL << Xen.VMASST_TYPE_m2p_strict;

    public static long Do(Vcpu v, in HypercallArgs a)
    {
        if (a.A2 >= 64 || ((v.Domain.Pv is null ? Valid : ValidPv) & (1UL << (int)a.A2)) == 0)
            return -Errno.EINVAL;
        switch ((int)a.A1)
        {
            case Xen.VMASST_CMD_enable:
                Interlocked.Or(ref v.Domain.VmAssist, 1UL << (int)a.A2);
                return 0;
            case Xen.VMASST_CMD_disable:
                Interlocked.And(ref v.Domain.VmAssist, ~(1UL << (int)a.A2));
                return 0;
            default:
                return -Errno.ENOSYS;
        }
    }
}

/// <summary>__HYPERVISOR_multicall: runs a batch of hypercalls, storing each result in its entry. A call that
/// asks for a continuation has its arguments rewritten in its entry and the batch resumes at it.</summary>
internal static unsafe class Multicall
{
    public static long Do(Vcpu v, in HypercallArgs a)
    {
        ulong list = a.A1;
        ulong n = a.A2;
        bool compat = v.Compat;
        ulong size = compat ? (ulong)sizeof(MulticallEntry32) : (ulong)sizeof(MulticallEntry);
        for (ulong i = 0; i < n; i++)
        {
            if (i > 0 && i % (ulong)Hypercall.PreemptBudget == 0)
                return Hypercall.CreateContinuation(v, new HypercallArgs(list + i * size, n - i));
            ulong op;
            HypercallArgs args;
            if (compat)
            {
                if (!GuestAccess.ReadElement(v, list, i, out MulticallEntry32 e))
                    return -Errno.EFAULT;
                op = e.Op;
                args = new HypercallArgs(e.Args[0], e.Args[1], e.Args[2], e.Args[3], e.Args[4]);
            }
            else
            {
                if (!GuestAccess.ReadElement(v, list, i, out MulticallEntry e))
                    return -Errno.EFAULT;
                op = e.Op;
                args = new HypercallArgs(e.Args[0], e.Args[1], e.Args[2], e.Args[3], e.Args[4]);
            }
            v.Continuation = null;
            long r = op == (ulong)Xen.__HYPERVISOR_multicall ? -Errno.EINVAL : Hypercall.Dispatch(v, op, args);
            v.Compat = compat;
            ulong entry = list + i * size;
            if (v.Continuation is { } next)
            {
                v.Continuation = null;
                bool ok = compat
                    ? WriteArgs32(v, entry + 8, next)
                    : WriteArgs64(v, entry + 16, next);
                if (!ok)
                    return -Errno.EFAULT;
                return Hypercall.CreateContinuation(v, new HypercallArgs(entry, n - i));
            }
            bool stored = compat ? GuestAccess.Write(v, entry + 4, (uint)r) : GuestAccess.Write(v, entry + 8, (ulong)r);
            if (!stored)
                return -Errno.EFAULT;
        }
        return 0;
    }

    private static bool WriteArgs64(Vcpu v, ulong at, in HypercallArgs a) =>
        GuestAccess.Write(v, at, a.A1) && GuestAccess.Write(v, at + 8, a.A2) && GuestAccess.Write(v, at + 16, a.A3)
        && GuestAccess.Write(v, at + 24, a.A4) && GuestAccess.Write(v, at + 32, a.A5);

    private static bool WriteArgs32(Vcpu v, ulong at, in HypercallArgs a) =>
        GuestAccess.Write(v, at, (uint)a.A1) && GuestAccess.Write(v, at + 4, (uint)a.A2) && GuestAccess.Write(v, at + 8, (uint)a.A3)
        && GuestAccess.Write(v, at + 12, (uint)a.A4) && GuestAccess.Write(v, at + 16, (uint)a.A5);
}
