using XenSharp.Public;
using XenSharp.Public.Compat;
using static XenSharp.Public.GrantTable;

namespace XenSharp.Hypervisor.Common;

/// <summary>__HYPERVISOR_grant_table_op(cmd, uop, count): batched map/unmap/copy, and the table's size and version.</summary>
internal static unsafe class GrantTableOp
{
    public static long Do(Vcpu v, in HypercallArgs a)
    {
        int cmd = (int)a.A1;
        ulong uop = a.A2;
        uint count = (uint)a.A3;
        var d = v.Domain;
        switch (cmd)
        {
            case GNTTABOP_map_grant_ref:
                for (uint i = 0; i < count; i++)
                {
                    ulong at = uop + i * (ulong)sizeof(GnttabMapGrantRef);
                    if (!GuestAccess.Read(v, at, out GnttabMapGrantRef op))
                        return -Errno.EFAULT;
                    op.Status = d.Gnttab.Map(ref op, host: false, out _, v);
                    if (!GuestAccess.Write(v, at, op))
                        return -Errno.EFAULT;
                }
                return 0;
            case GNTTABOP_unmap_grant_ref:
                for (uint i = 0; i < count; i++)
                {
                    ulong at = uop + i * (ulong)sizeof(GnttabUnmapGrantRef);
                    if (!GuestAccess.Read(v, at, out GnttabUnmapGrantRef op))
                        return -Errno.EFAULT;
                    op.Status = d.Gnttab.Unmap(op.Handle, op.HostAddr, host: false, v);
                    if (!GuestAccess.Write(v, at, op))
                        return -Errno.EFAULT;
                }
                return 0;
            case GNTTABOP_copy when v.Compat:
                for (uint i = 0; i < count; i++)
                {
                    ulong at = uop + i * (ulong)sizeof(GnttabCopy32);
                    if (!GuestAccess.Read(v, at, out GnttabCopy32 c32))
                        return -Errno.EFAULT;
                    var op = new GnttabCopy
                    {
                        Source = new GnttabCopyPtr { RefOrGmfn = c32.Source.RefOrGmfn, Domid = c32.Source.Domid, Offset = c32.Source.Offset },
                        Dest = new GnttabCopyPtr { RefOrGmfn = c32.Dest.RefOrGmfn, Domid = c32.Dest.Domid, Offset = c32.Dest.Offset },
                        Len = c32.Len,
                        Flags = c32.Flags,
                    };
                    c32.Status = d.Gnttab.Copy(ref op);
                    if (!GuestAccess.Write(v, at, c32))
                        return -Errno.EFAULT;
                }
                return 0;
            case GNTTABOP_copy:
                for (uint i = 0; i < count; i++)
                {
                    ulong at = uop + i * (ulong)sizeof(GnttabCopy);
                    if (!GuestAccess.Read(v, at, out GnttabCopy op))
                        return -Errno.EFAULT;
                    op.Status = d.Gnttab.Copy(ref op);
                    if (!GuestAccess.Write(v, at, op))
                        return -Errno.EFAULT;
                }
                return 0;
        }
        // The table-wide operations take exactly one argument.
        if (cmd is GNTTABOP_setup_table or GNTTABOP_query_size or GNTTABOP_set_version or GNTTABOP_get_version
            or GNTTABOP_get_status_frames && count != 1)
            return -Errno.EINVAL;
        switch (cmd)
        {
            case GNTTABOP_setup_table:
            {
                GnttabSetupTable op;
                if (v.Compat)
                {
                    if (!GuestAccess.Read(v, uop, out GnttabSetupTable32 s32))
                        return -Errno.EFAULT;
                    op = new GnttabSetupTable { Dom = s32.Dom, NrFrames = s32.NrFrames, FrameList = s32.FrameList };
                }
                else if (!GuestAccess.Read(v, uop, out op))
                    return -Errno.EFAULT;
                var t = Target(d, op.Dom, out op.Status);
                if (t is not null)
                {
                    bool ok;
                    lock (t.Lock)
                        ok = op.NrFrames <= (uint)t.Gnttab.MaxFrames && t.Gnttab.Grow((int)op.NrFrames);
                    if (!ok)
                        op.Status = GNTST_general_error;
                    else
                        for (int i = 0; i < (int)op.NrFrames; i++)
                            if (!MemoryOp.WritePfn(v, op.FrameList, (ulong)i, t.Gnttab.FrameGfnOrInvalid(i, status: false)))
                                return -Errno.EFAULT;
                }
                if (v.Compat)
                    return GuestAccess.Write(v, uop + 8, op.Status) ? 0 : -Errno.EFAULT; // status is at 8 in both layouts
                return GuestAccess.Write(v, uop, op) ? 0 : -Errno.EFAULT;
            }
            case GNTTABOP_query_size:
            {
                if (!GuestAccess.Read(v, uop, out GnttabQuerySize op))
                    return -Errno.EFAULT;
                var t = Target(d, op.Dom, out op.Status);
                if (t is not null)
                {
                    op.NrFrames = (uint)t.Gnttab.NrFrames;
                    op.MaxNrFrames = (uint)t.Gnttab.MaxFrames;
                }
                return GuestAccess.Write(v, uop, op) ? 0 : -Errno.EFAULT;
            }
            case GNTTABOP_set_version:
            {
                if (!GuestAccess.Read(v, uop, out GnttabSetVersion op))
                    return -Errno.EFAULT;
                long rc = d.Gnttab.SetVersion(op.Version);
                op.Version = (uint)d.Gnttab.Version;
                if (!GuestAccess.Write(v, uop, op))
                    return -Errno.EFAULT;
                return rc;
            }
            case GNTTABOP_get_version:
            {
                if (!GuestAccess.Read(v, uop, out GnttabGetVersion op))
                    return -Errno.EFAULT;
                var t = d.Host.LookupForGuest(d, op.Dom, out long err);
                if (t is null)
                    return err;
                op.Version = (uint)t.Gnttab.Version;
                return GuestAccess.Write(v, uop, op) ? 0 : -Errno.EFAULT;
            }
            case GNTTABOP_get_status_frames:
            {
                GnttabGetStatusFrames op;
                if (v.Compat)
                {
                    if (!GuestAccess.Read(v, uop, out GnttabGetStatusFrames32 g32))
                        return -Errno.EFAULT;
                    op = new GnttabGetStatusFrames { NrFrames = g32.NrFrames, Dom = g32.Dom, FrameList = g32.FrameList };
                }
                else if (!GuestAccess.Read(v, uop, out op))
                    return -Errno.EFAULT;
                var t = Target(d, op.Dom, out op.Status);
                if (t is not null)
                {
                    if (t.Gnttab.Version != 2 || op.NrFrames > (uint)t.Gnttab.StatusFrames)
                        op.Status = GNTST_general_error;
                    else
                        for (int i = 0; i < (int)op.NrFrames; i++)
                            if (!GuestAccess.WriteElement(v, op.FrameList, (ulong)i, t.Gnttab.FrameGfnOrInvalid(i, status: true)))
                                return -Errno.EFAULT;
                }
                return GuestAccess.Write(v, uop + 6, op.Status) ? 0 : -Errno.EFAULT; // status is at 6 in both layouts
            }
            default:
                return -Errno.ENOSYS;
        }
    }

    private static Domain? Target(Domain caller, ushort domid, out short status)
    {
        var t = caller.Host.LookupForGuest(caller, domid, out long err);
        status = t is not null ? GNTST_okay : err == -Errno.EPERM ? GNTST_permission_denied : GNTST_bad_domain;
        return t;
    }
}
