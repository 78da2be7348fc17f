using System.Runtime.CompilerServices;
using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using XenSharp.Public.Hvm;
using static XenSharp.Public.Hvm.DmOp;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// __HYPERVISOR_dm_op (Xen's arch/x86/hvm/dm.c): what a device model does to the HVM domain it serves. The interrupt
/// operations (set_isa_irq_level, set_pci_intx_level, set_pci_link_route) drive the domain's <see cref="PlatformIrq"/>;
/// nr_vcpus reports its vCPUs; the IOREQ server operations manage the domain's <see cref="IoreqServers"/>. The
/// pages of a server are not placed in the guest's physical space, so get_ioreq_server_info answers only with
/// XEN_DMOP_no_gfns (a device model maps them as a resource).
/// </summary>
internal static class DmOps
{
    /// <summary>Xen's dmop_args holds at most two buffers.</summary>
    private const uint MaxBufs = 2;

    /// <summary>The size of each op's part of the union (Xen's op_size table); 0 for ops beyond it.</summary>
    private static readonly int[] OpSize = BuildSizes();

    private static unsafe int[] BuildSizes()
    {
        var s = new int[XEN_DMOP_nr_vcpus + 1];
        s[XEN_DMOP_create_ioreq_server] = sizeof(XenDmOpCreateIoreqServer);
        s[XEN_DMOP_get_ioreq_server_info] = sizeof(XenDmOpGetIoreqServerInfo);
        s[XEN_DMOP_map_io_range_to_ioreq_server] = s[XEN_DMOP_unmap_io_range_from_ioreq_server] = sizeof(XenDmOpIoreqServerRange);
        s[XEN_DMOP_set_ioreq_server_state] = sizeof(XenDmOpSetIoreqServerState);
        s[XEN_DMOP_destroy_ioreq_server] = sizeof(XenDmOpDestroyIoreqServer);
        s[XEN_DMOP_track_dirty_vram] = sizeof(XenDmOpTrackDirtyVram);
        s[XEN_DMOP_set_pci_intx_level] = sizeof(XenDmOpSetPciIntxLevel);
        s[XEN_DMOP_set_isa_irq_level] = sizeof(XenDmOpSetIsaIrqLevel);
        s[XEN_DMOP_set_pci_link_route] = sizeof(XenDmOpSetPciLinkRoute);
        s[XEN_DMOP_modified_memory] = sizeof(XenDmOpModifiedMemory);
        s[XEN_DMOP_set_mem_type] = sizeof(XenDmOpSetMemType);
        s[XEN_DMOP_inject_event] = 24;
        s[XEN_DMOP_inject_msi] = sizeof(XenDmOpInjectMsi);
        s[XEN_DMOP_map_mem_type_to_ioreq_server] = 16;
        s[XEN_DMOP_remote_shutdown] = sizeof(XenDmOpRemoteShutdown);
        s[XEN_DMOP_relocate_memory] = sizeof(XenDmOpRelocateMemory);
        s[XEN_DMOP_pin_memory_cacheattr] = sizeof(XenDmOpPinMemoryCacheattr);
        s[XEN_DMOP_set_irq_level] = 8;
        s[XEN_DMOP_nr_vcpus] = sizeof(XenDmOpNrVcpus);
        return s;
    }

    /// <summary>set_pci_intx_level and set_isa_irq_level: a line of the domain's <see cref="PlatformIrq"/>.</summary>
    private static unsafe long IrqLevel(PlatformIrq? irq, in XenDmOp op)
    {
        fixed (byte* u = op.U)
        {
            if (op.Op == XEN_DMOP_set_pci_intx_level)
            {
                var p = Unsafe.Read<XenDmOpSetPciIntxLevel>(u);
                return p.Level > 1 ? -Errno.EINVAL
                    : irq?.SetPciIntxLevel(p.Domain, p.Bus, p.Device, p.Intx, p.Level != 0) ?? ValidPciIntx(p);
            }
            var q = Unsafe.Read<XenDmOpSetIsaIrqLevel>(u);
            return q.Level > 1 ? -Errno.EINVAL
                : irq?.SetIsaIrqLevel(q.IsaIrq, q.Level != 0) ?? (q.IsaIrq < PlatformIrq.NrIsaIrqs ? 0 : -Errno.EINVAL);
        }
    }

    /// <summary>Whether <see cref="DoPosted"/> takes the op: the interrupt levels a device model changes on its
    /// devices' every register access, whose result it does not use.</summary>
    public static bool IsPostable(uint op) => op is XEN_DMOP_set_pci_intx_level or XEN_DMOP_set_isa_irq_level;

    /// <summary>
    /// A dm_op the caller does not wait for (the daemon's posted form of __HYPERVISOR_dm_op, one buffer whose bytes
    /// are <paramref name="buffer"/>): only <see cref="IsPostable"/> ops, with the same checks as
    /// <see cref="Do"/>. Returns what the hypercall would have, for the log.
    /// </summary>
    public static unsafe long DoPosted(Domain caller, ushort domid, ReadOnlySpan<byte> buffer)
    {
        if (domid == Xen.DOMID_SELF || domid == caller.DomainId)
            return -Errno.EPERM;
        var d = caller.Host.FindDomain(domid);
        if (d is null || d.IsHost)
            return -Errno.ESRCH;
        if (!caller.IsPrivileged)
            return -Errno.EPERM;
        if (buffer.Length < HeaderSize)
            return -Errno.EFAULT;
        XenDmOp op = default;
        buffer[..HeaderSize].CopyTo(new Span<byte>(&op, HeaderSize));
        if (!IsPostable(op.Op))
            return -Errno.EOPNOTSUPP;
        int size = OpSize[op.Op];
        if (buffer.Length < HeaderSize + size)
            return -Errno.EFAULT;
        buffer.Slice(HeaderSize, size).CopyTo(new Span<byte>(op.U, size));
        if (op.Pad != 0)
            return -Errno.EINVAL;
        return IrqLevel(d.Arch.Platform?.Irq, op);
    }

    public static unsafe long Do(Vcpu v, in HypercallArgs a)
    {
        ushort domid = (ushort)a.A1;
        uint nrBufs = (uint)a.A2;
        if (nrBufs > MaxBufs)
            return -Errno.E2BIG;
        if (nrBufs == 0 || !GuestAccess.ReadElement(v, a.A3, 0, out XenDmOpBuf buf0))
            return -Errno.EFAULT;

        // A device model acts on another domain (Xen's rcu_lock_remote_domain_by_id), an HVM one, and must be privileged.
        if (domid == Xen.DOMID_SELF || domid == v.Domain.DomainId)
            return -Errno.EPERM;
        var d = v.Domain.Host.FindDomain(domid);
        if (d is null || d.IsHost)
            return -Errno.ESRCH;
        if (!v.Domain.IsPrivileged)
            return -Errno.EPERM;

        if (buf0.Size < HeaderSize)
            return -Errno.EFAULT;
        XenDmOp op = default;
        if (!GuestAccess.CopyFrom(v, buf0.H, new Span<byte>(&op, HeaderSize)))
            return -Errno.EFAULT;
        if (op.Op >= OpSize.Length || OpSize[op.Op] == 0)
            return -Errno.EOPNOTSUPP;
        int size = OpSize[op.Op];
        if (buf0.Size < (ulong)(HeaderSize + size))
            return -Errno.EFAULT;
        if (!GuestAccess.CopyFrom(v, buf0.H + HeaderSize, new Span<byte>(op.U, size)))
            return -Errno.EFAULT;
        if (op.Pad != 0)
            return -Errno.EINVAL;

        var irq = d.Arch.Platform?.Irq;
        long rc;
        bool copyBack = false;
        switch (op.Op)
        {
            case XEN_DMOP_set_pci_intx_level:
            case XEN_DMOP_set_isa_irq_level:
                rc = IrqLevel(irq, op);
                break;
            case XEN_DMOP_set_pci_link_route:
            {
                var p = Unsafe.Read<XenDmOpSetPciLinkRoute>(op.U);
                rc = irq?.SetPciLinkRoute(p.Link, p.IsaIrq)
                    ?? (p.Link < PlatformIrq.NrLinks && p.IsaIrq < PlatformIrq.NrIsaIrqs ? 0 : -Errno.EINVAL);
                break;
            }
            case XEN_DMOP_create_ioreq_server:
            {
                var p = Unsafe.Read<XenDmOpCreateIoreqServer>(op.U);
                if (p.Pad[0] != 0 || p.Pad[1] != 0 || p.Pad[2] != 0)
                {
                    rc = -Errno.EINVAL;
                    break;
                }
                rc = d.Arch.Ioreq.Create(v.Domain.DomainId, p.HandleBufioreq, out p.Id);
                Unsafe.Write(op.U, p);
                copyBack = true;
                break;
            }
            case XEN_DMOP_get_ioreq_server_info:
            {
                var p = Unsafe.Read<XenDmOpGetIoreqServerInfo>(op.U);
                if ((p.Flags & ~XenDmOpGetIoreqServerInfo.XEN_DMOP_no_gfns) != 0)
                {
                    rc = -Errno.EINVAL;
                    break;
                }
                var s = d.Arch.Ioreq.Get(p.Id, v.Domain.DomainId, out rc);
                if (s is null)
                    break;
                if ((p.Flags & XenDmOpGetIoreqServerInfo.XEN_DMOP_no_gfns) == 0)
                {
                    rc = -Errno.EOPNOTSUPP; // the pages have no gfns here
                    break;
                }
                p.BufioreqPort = s.BufIoreqPort;
                Unsafe.Write(op.U, p);
                copyBack = true;
                break;
            }
            case XEN_DMOP_map_io_range_to_ioreq_server:
            case XEN_DMOP_unmap_io_range_from_ioreq_server:
            {
                var p = Unsafe.Read<XenDmOpIoreqServerRange>(op.U);
                if (p.Pad != 0)
                {
                    rc = -Errno.EINVAL;
                    break;
                }
                var s = d.Arch.Ioreq.Get(p.Id, v.Domain.DomainId, out rc);
                if (s is not null)
                    rc = p.Type > XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PCI ? -Errno.EINVAL
                        : s.MapRange((int)p.Type, p.Start, p.End, op.Op == XEN_DMOP_map_io_range_to_ioreq_server);
                break;
            }
            case XEN_DMOP_set_ioreq_server_state:
            {
                var p = Unsafe.Read<XenDmOpSetIoreqServerState>(op.U);
                if (p.Pad != 0)
                {
                    rc = -Errno.EINVAL;
                    break;
                }
                var s = d.Arch.Ioreq.Get(p.Id, v.Domain.DomainId, out rc);
                if (s is not null)
                    s.Enabled = p.Enabled != 0;
                break;
            }
            case XEN_DMOP_destroy_ioreq_server:
            {
                var p = Unsafe.Read<XenDmOpDestroyIoreqServer>(op.U);
                rc = p.Pad != 0 ? -Errno.EINVAL : d.Arch.Ioreq.Destroy(p.Id, v.Domain.DomainId);
                break;
            }
            case XEN_DMOP_track_dirty_vram:
                rc = TrackDirtyVram(v, d, a, nrBufs, Unsafe.Read<XenDmOpTrackDirtyVram>(op.U));
                break;
            case XEN_DMOP_modified_memory:
            {
                var p = Unsafe.Read<XenDmOpModifiedMemory>(op.U);
                rc = ModifiedMemory(v, d, a, nrBufs, p);
                if (rc == 0)
                {
                    p.NrExtents = 0;
                    Unsafe.Write(op.U, p);
                    copyBack = true;
                }
                break;
            }
            case XEN_DMOP_set_mem_type:
                rc = SetMemType(d, Unsafe.Read<XenDmOpSetMemType>(op.U));
                break;
            case XEN_DMOP_inject_event:
                rc = DomainMonitor.InjectEvent(d, op.U);
                break;
            case XEN_DMOP_inject_msi:
            {
                var p = Unsafe.Read<XenDmOpInjectMsi>(op.U);
                rc = p.Pad != 0 ? -Errno.EINVAL : InjectMsi(d, p.Addr, p.Data);
                break;
            }
            case XEN_DMOP_remote_shutdown:
                d.Host.ShutdownDomain(d, Unsafe.Read<XenDmOpRemoteShutdown>(op.U).Reason);
                rc = 0;
                break;
            case XEN_DMOP_relocate_memory:
            {
                var p = Unsafe.Read<XenDmOpRelocateMemory>(op.U);
                rc = RelocateMemory(d, ref p);
                Unsafe.Write(op.U, p);
                copyBack = rc == 0;
                break;
            }
            case XEN_DMOP_pin_memory_cacheattr:
            {
                var p = Unsafe.Read<XenDmOpPinMemoryCacheattr>(op.U);
                rc = PinMemoryCacheattr(p);
                break;
            }
            case XEN_DMOP_nr_vcpus:
                Unsafe.Write(op.U, new XenDmOpNrVcpus { Vcpus = (uint)d.Vcpus.Length });
                rc = 0;
                copyBack = true;
                break;
            default:
                rc = -Errno.EOPNOTSUPP;
                break;
        }
        if (rc == 0 && copyBack && !GuestAccess.CopyTo(v, buf0.H + HeaderSize, new ReadOnlySpan<byte>(op.U, size)))
            return -Errno.EFAULT;
        return rc;
    }

    /// <summary>The largest VRAM Xen tracks (1 GiB of pages).</summary>
    private const uint MaxDirtyVramPages = (1u << 30) >> 12;

    /// <summary>XEN_DMOP_track_dirty_vram: the dirty bitmap of the VRAM range into buffer 1. Without per-range
    /// tracking every page of it is reported dirty, which costs the device model a redraw but never a stale one.</summary>
    private static long TrackDirtyVram(Vcpu v, Domain d, in HypercallArgs a, uint nrBufs, in XenDmOpTrackDirtyVram p)
    {
        if (p.Pad != 0 || p.Nr > MaxDirtyVramPages)
            return -Errno.EINVAL;
        if (p.Nr == 0)
            return 0; // tracking stops
        if (p.FirstPfn + p.Nr - 1 > P2m.MaxGfn)
            return -Errno.EINVAL;
        if (nrBufs < 2 || !GuestAccess.ReadElement(v, a.A3, 1, out XenDmOpBuf bitmap))
            return -Errno.EINVAL;
        ulong bytes = (p.Nr + 7) / 8;
        if (bitmap.Size < bytes)
            return -Errno.EINVAL;
        Span<byte> ones = stackalloc byte[256];
        ones.Fill(0xFF);
        for (ulong done = 0; done < bytes; done += (ulong)ones.Length)
        {
            int n = (int)Math.Min((ulong)ones.Length, bytes - done);
            if (!GuestAccess.CopyTo(v, bitmap.H + done, ones[..n]))
                return -Errno.EFAULT;
        }
        return 0;
    }

    /// <summary>XEN_DMOP_modified_memory: the device model wrote these pages (from buffer 1's extents); they are
    /// marked dirty for log-dirty (migration). An extent beyond the guest's space fails with -EINVAL.</summary>
    private static unsafe long ModifiedMemory(Vcpu v, Domain d, in HypercallArgs a, uint nrBufs, in XenDmOpModifiedMemory p)
    {
        if (p.Opaque != 0 || p.NrExtents == 0)
            return -Errno.EINVAL;
        if (nrBufs < 2 || !GuestAccess.ReadElement(v, a.A3, 1, out XenDmOpBuf extents))
            return -Errno.EINVAL;
        if (extents.Size < (ulong)p.NrExtents * (ulong)sizeof(XenDmOpModifiedMemoryExtent))
            return -Errno.EINVAL;
        for (uint i = 0; i < p.NrExtents; i++)
        {
            if (!GuestAccess.ReadElement(v, extents.H, i, out XenDmOpModifiedMemoryExtent e))
                return -Errno.EFAULT;
            if (e.Pad != 0)
                return -Errno.EINVAL;
            ulong last = e.FirstPfn + e.Nr - 1;
            if (e.Nr == 0 || last < e.FirstPfn || last > d.P2m.MaxMappedGfn)
                return -Errno.EINVAL;
            for (ulong gfn = e.FirstPfn; gfn <= last; gfn++)
                d.P2m.MarkDirty(gfn);
        }
        return 0;
    }

    /// <summary>XEN_DMOP_set_mem_type (Xen's set_mem_type): RAM between read-write and read-only (writes to it are then
    /// dropped), a hole to mmio_dm (where accesses already go to the device models). HVMMEM_ioreq_server needs a
    /// server claiming the type, which XEN_DMOP_map_mem_type_to_ioreq_server cannot make here.</summary>
    private static long SetMemType(Domain d, in XenDmOpSetMemType p)
    {
        if (p.Pad != 0 || p.MemType > XenDmOpSetMemType.HVMMEM_ioreq_server || p.MemType == XenDmOpSetMemType.HVMMEM_unused)
            return -Errno.EINVAL;
        if (p.Nr == 0)
            return 0;
        ulong last = p.FirstPfn + p.Nr - 1;
        if (last < p.FirstPfn || last > P2m.MaxGfn)
            return -Errno.EINVAL;
        if (p.MemType == XenDmOpSetMemType.HVMMEM_ioreq_server)
            return -Errno.EINVAL;
        lock (d.Lock)
        {
            for (ulong gfn = p.FirstPfn; gfn <= last; gfn++)
            {
                d.P2m.TryLookup(gfn, out uint mfn, out var t);
                switch (p.MemType)
                {
                    case XenDmOpSetMemType.HVMMEM_ram_rw or XenDmOpSetMemType.HVMMEM_ram_ro when t is P2mType.RamRw or P2mType.RamRo:
                    {
                        var want = p.MemType == XenDmOpSetMemType.HVMMEM_ram_rw ? P2mType.RamRw : P2mType.RamRo;
                        if (t != want)
                            d.P2m.Set(gfn, mfn, want);
                        break;
                    }
                    case XenDmOpSetMemType.HVMMEM_mmio_dm when t is P2mType.Invalid:
                        break;
                    default:
                        return -Errno.EINVAL;
                }
            }
        }
        return 0;
    }

    /// <summary>XEN_DMOP_inject_msi (Xen's hvm_inject_msi): an MSI write of the device model's device, decoded as the
    /// local APICs decode one (destination in address bits 12-19, logical mode in bit 2; vector, delivery mode and
    /// trigger in the data).</summary>
    private static long InjectMsi(Domain d, ulong addr, uint data)
    {
        uint dest = (uint)(addr >> 12) & 0xFF;
        bool logical = (addr & 4) != 0, level = (data & (1 << 15)) != 0;
        byte vector = (byte)data;
        int mode = (int)(data >> 8) & 7;
        foreach (var t in d.Vcpus)
        {
            if (!t.Arch.Vlapic.Matches(dest, logical, x2apic: false))
                continue;
            if (mode == 4) // NMI
            {
                t.PendingNmi = true;
                t.Kick();
            }
            else if (mode is 0 or 1) // fixed, lowest priority (to the first match, as every vLAPIC has one priority)
            {
                t.Arch.Vlapic.Accept(vector, level);
                if (mode == 1)
                    break;
            }
        }
        return 0;
    }

    /// <summary>XEN_DMOP_relocate_memory: moves <c>size</c> pages of RAM from src_gfn to dst_gfn (as
    /// XENMAPSPACE_gmfn_range), e.g. QEMU placing VRAM where its BAR is. On failure the fields say where it stopped.</summary>
    private static long RelocateMemory(Domain d, ref XenDmOpRelocateMemory p)
    {
        if (p.Pad != 0)
            return -Errno.EINVAL;
        while (p.Size > 0)
        {
            long rc = MemoryOp.MoveGmfn(d, p.SrcGfn, p.DstGfn);
            if (rc != 0)
                return rc;
            p.SrcGfn++;
            p.DstGfn++;
            p.Size--;
        }
        return 0;
    }

    /// <summary>XEN_DMOP_pin_memory_cacheattr: accepted for the types Xen accepts; the engine has no caches whose
    /// attributes matter, so nothing else changes.</summary>
    private static long PinMemoryCacheattr(in XenDmOpPinMemoryCacheattr p)
    {
        if (p.Pad != 0 || p.End < p.Start || p.End > P2m.MaxGfn)
            return -Errno.EINVAL;
        return p.Type switch
        {
            XenDmOpPinMemoryCacheattr.XEN_DMOP_MEM_CACHEATTR_UC or XenDmOpPinMemoryCacheattr.XEN_DMOP_MEM_CACHEATTR_WC
                or XenDmOpPinMemoryCacheattr.XEN_DMOP_MEM_CACHEATTR_WT or XenDmOpPinMemoryCacheattr.XEN_DMOP_MEM_CACHEATTR_WP
                or XenDmOpPinMemoryCacheattr.XEN_DMOP_MEM_CACHEATTR_WB or XenDmOpPinMemoryCacheattr.XEN_DMOP_MEM_CACHEATTR_UCM
                or XenDmOpPinMemoryCacheattr.XEN_DMOP_DELETE_MEM_CACHEATTR => 0,
            _ => -Errno.EINVAL,
        };
    }

    // A PVH domain has no platform to drive: the arguments are still checked as Xen checks them.
    private static long ValidPciIntx(in XenDmOpSetPciIntxLevel p) =>
        p.Domain == 0 && p.Bus == 0 && p.Device < PlatformIrq.NrPciDevices && p.Intx < 4 ? 0 : -Errno.EINVAL;
}
