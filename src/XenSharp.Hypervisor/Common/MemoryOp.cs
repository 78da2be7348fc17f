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
            case XENMEM_add_to_physmap:
                return AddToPhysmap(v, arg);
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
            case XENMEM_memory_map:
                return MemoryMap(v, arg);
            default:
                return -Errno.ENOSYS;
        }
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
        if (r.ExtentOrder > (v.Domain.IsPrivileged ? MaxOrderPrivileged : MaxOrderDomU) || start > r.NrExtents)
            return (long)start;
        if ((r.MemFlags & XENMEMF_populate_on_demand) != 0)
            return (long)start; // populate-on-demand is not offered
        var d = v.Domain.Host.LookupForGuest(v.Domain, r.Domid, out long err);
        if (d is null)
            return err;
        ulong pages = 1UL << (int)r.ExtentOrder;
        ulong i = start;
        for (; i < r.NrExtents; i++)
        {
            switch (op)
            {
                case XENMEM_populate_physmap:
                {
                    if (!ReadPfn(v, r.ExtentStart, i, out ulong gpfn))
                        return (long)i;
                    gpfn &= ~(pages - 1);
                    if ((ulong)d.TotPages + pages > d.MaxPages)
                        return (long)i;
                    for (ulong p = 0; p < pages; p++)
                        if (!d.PopulateRam(gpfn + p))
                            return (long)i;
                    break;
                }
                case XENMEM_increase_reservation:
                {
                    // Auto-translated guests get frames placed at the lowest free GFNs above their RAM.
                    if ((ulong)d.TotPages + pages > d.MaxPages)
                        return (long)i;
                    ulong gfn = d.P2m.MaxMappedGfn + 1;
                    gfn = (gfn + pages - 1) & ~(pages - 1);
                    for (ulong p = 0; p < pages; p++)
                        if (!d.PopulateRam(gfn + p))
                            return (long)i;
                    if (r.ExtentStart != 0 && !WritePfn(v, r.ExtentStart, i, gfn))
                        return (long)i;
                    break;
                }
                default:
                {
                    if (!ReadPfn(v, r.ExtentStart, i, out ulong gpfn))
                        return (long)i;
                    for (ulong p = 0; p < pages; p++)
                    {
                        if (!d.P2m.TryLookup(gpfn + p, out _, out var t) || t is not (Common.P2mType.RamRw or Common.P2mType.RamRo))
                            return (long)i;
                        d.RemovePage(gpfn + p);
                    }
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

    private static long AddToPhysmap(Vcpu v, ulong arg)
    {
        XenAddToPhysmap x;
        if (v.Compat)
        {
            if (!GuestAccess.Read(v, arg, out XenAddToPhysmap32 x32))
                return -Errno.EFAULT;
            x = new XenAddToPhysmap { Domid = x32.Domid, Size = x32.Size, Space = x32.Space, Idx = x32.Idx, Gpfn = x32.Gpfn };
        }
        else if (!GuestAccess.Read(v, arg, out x))
            return -Errno.EFAULT;
        var d = v.Domain.Host.LookupForGuest(v.Domain, x.Domid, out long err);
        if (d is null)
            return err;
        if (x.Gpfn > P2m.MaxGfn)
            return -Errno.EINVAL;
        switch (x.Space)
        {
            case XENMAPSPACE_shared_info:
                if (x.Idx != 0)
                    return -Errno.EINVAL;
                lock (d.Lock)
                {
                    if (d.SharedInfoGfn is ulong oldGfn)
                        d.P2m.Remove(oldGfn);
                    d.ReleaseOld(d.P2m.Set(x.Gpfn, d.SharedInfoMfn, P2mType.XenShared));
                    d.SharedInfoGfn = x.Gpfn;
                }
                d.Host.Time.UpdateWallclock(d);
                foreach (var vc in d.Vcpus)
                    d.Host.Time.UpdateVcpuTime(vc);
                return 0;
            case XENMAPSPACE_grant_table:
                return d.Gnttab.MapFrameIntoPhysmap(x.Idx, x.Gpfn);
            case XENMAPSPACE_gmfn:
                return MoveGmfn(d, x.Idx, x.Gpfn);
            case XENMAPSPACE_gmfn_range:
                for (uint i = 0; i < x.Size; i++)
                {
                    long rc = MoveGmfn(d, x.Idx + i, x.Gpfn + i);
                    if (rc != 0)
                        return rc;
                }
                return 0;
            default:
                return -Errno.ENOSYS;
        }
    }

    private static long MoveGmfn(Domain d, ulong fromGfn, ulong toGfn)
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

    public static long Do(Vcpu v, in HypercallArgs a)
    {
        if (a.A2 >= 64 || (Valid & (1UL << (int)a.A2)) == 0)
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

/// <summary>__HYPERVISOR_multicall: runs a batch of hypercalls, storing each result in its entry.</summary>
internal static unsafe class Multicall
{
    public static long Do(Vcpu v, in HypercallArgs a)
    {
        ulong list = a.A1;
        ulong n = a.A2;
        if (v.Compat)
        {
            for (ulong i = 0; i < n; i++)
            {
                if (!GuestAccess.ReadElement(v, list, i, out MulticallEntry32 e))
                    return -Errno.EFAULT;
                long r = e.Op == (uint)Xen.__HYPERVISOR_multicall
                    ? -Errno.EINVAL
                    : Hypercall.Dispatch(v, e.Op, new HypercallArgs(e.Args[0], e.Args[1], e.Args[2], e.Args[3], e.Args[4]));
                if (!GuestAccess.Write(v, list + i * (ulong)sizeof(MulticallEntry32) + 4, (uint)r))
                    return -Errno.EFAULT;
            }
            return 0;
        }
        for (ulong i = 0; i < n; i++)
        {
            if (!GuestAccess.ReadElement(v, list, i, out MulticallEntry e))
                return -Errno.EFAULT;
            long r = e.Op == (ulong)Xen.__HYPERVISOR_multicall
                ? -Errno.EINVAL
                : Hypercall.Dispatch(v, e.Op, new HypercallArgs(e.Args[0], e.Args[1], e.Args[2], e.Args[3], e.Args[4]));
            e.Result = (ulong)r;
            if (!GuestAccess.Write(v, list + i * (ulong)sizeof(MulticallEntry) + 8, e.Result))
                return -Errno.EFAULT;
        }
        return 0;
    }
}
