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
        s[XEN_DMOP_track_dirty_vram] = 16;
        s[XEN_DMOP_set_pci_intx_level] = sizeof(XenDmOpSetPciIntxLevel);
        s[XEN_DMOP_set_isa_irq_level] = sizeof(XenDmOpSetIsaIrqLevel);
        s[XEN_DMOP_set_pci_link_route] = sizeof(XenDmOpSetPciLinkRoute);
        s[XEN_DMOP_modified_memory] = 8;
        s[XEN_DMOP_set_mem_type] = 16;
        s[XEN_DMOP_inject_event] = 24;
        s[XEN_DMOP_inject_msi] = 16;
        s[XEN_DMOP_map_mem_type_to_ioreq_server] = 16;
        s[XEN_DMOP_remote_shutdown] = 4;
        s[XEN_DMOP_relocate_memory] = 24;
        s[XEN_DMOP_pin_memory_cacheattr] = 24;
        s[XEN_DMOP_set_irq_level] = 8;
        s[XEN_DMOP_nr_vcpus] = sizeof(XenDmOpNrVcpus);
        return s;
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
            {
                var p = Unsafe.Read<XenDmOpSetPciIntxLevel>(op.U);
                rc = p.Level > 1 ? -Errno.EINVAL
                    : irq?.SetPciIntxLevel(p.Domain, p.Bus, p.Device, p.Intx, p.Level != 0) ?? ValidPciIntx(p);
                break;
            }
            case XEN_DMOP_set_isa_irq_level:
            {
                var p = Unsafe.Read<XenDmOpSetIsaIrqLevel>(op.U);
                rc = p.Level > 1 ? -Errno.EINVAL
                    : irq?.SetIsaIrqLevel(p.IsaIrq, p.Level != 0) ?? (p.IsaIrq < PlatformIrq.NrIsaIrqs ? 0 : -Errno.EINVAL);
                break;
            }
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

    // A PVH domain has no platform to drive: the arguments are still checked as Xen checks them.
    private static long ValidPciIntx(in XenDmOpSetPciIntxLevel p) =>
        p.Domain == 0 && p.Bus == 0 && p.Device < PlatformIrq.NrPciDevices && p.Intx < 4 ? 0 : -Errno.EINVAL;
}
