using XenSharp.Public;
using static XenSharp.Public.GrantTable;

namespace XenSharp.Hypervisor.Tests;

/// <summary>Two guests: A grants its page at <see cref="SharedGfn"/> to B, which maps it at <see cref="MapGfn"/> (ballooned-out space).</summary>
public abstract unsafe class GrantTableTestBase : IDisposable
{
    protected readonly XenHypervisor Host = TestHosts.Create();
    private protected readonly Guest A, B;
    protected const ulong SharedGfn = 0x200, MapGfn = 0x2000;
    protected const ulong GrantFrameGfn = 0x1000;

    protected GrantTableTestBase(int version)
    {
        A = new Guest(Host);
        B = new Guest(Host);
        if (version == 2)
        {
            var sv = new GnttabSetVersion { Version = 2 };
            Assert.Equal(0, GrantOp(A, GNTTABOP_set_version, ref sv));
            Assert.Equal(2u, sv.Version);
        }
        // The guest places its grant frame 0 in its physmap and writes entries there.
        var x = new XenAddToPhysmap { Domid = Xen.DOMID_SELF, Space = Memory.XENMAPSPACE_grant_table, Idx = 0, Gpfn = GrantFrameGfn };
        Assert.Equal(0, A.Call(Xen.__HYPERVISOR_memory_op, Memory.XENMEM_add_to_physmap, ref x));
    }

    public void Dispose() => Host.Dispose();

    protected abstract void Grant(uint gref, ushort flags, ushort domid, ulong frame);
    protected abstract ushort Flags(uint gref);

    private protected long GrantOp<T>(Guest g, int cmd, ref T op, uint count = 1) where T : unmanaged
    {
        g.Write(Guest.Scratch, op);
        long rc = g.Call(Xen.__HYPERVISOR_grant_table_op, (ulong)cmd, Guest.Scratch, count);
        op = g.Read<T>(Guest.Scratch);
        return rc;
    }

    private protected GnttabMapGrantRef Map(Guest g, ushort dom, uint gref, bool ro = false, ulong gfn = MapGfn)
    {
        var m = new GnttabMapGrantRef { HostAddr = gfn << 12, Flags = GNTMAP_host_map | (ro ? GNTMAP_readonly : 0), Ref = gref, Dom = dom };
        Assert.Equal(0, GrantOp(g, GNTTABOP_map_grant_ref, ref m));
        return m;
    }

    private protected short Unmap(Guest g, uint handle, ulong gfn = MapGfn)
    {
        var u = new GnttabUnmapGrantRef { HostAddr = gfn << 12, Handle = handle };
        Assert.Equal(0, GrantOp(g, GNTTABOP_unmap_grant_ref, ref u));
        return u.Status;
    }

    [Fact]
    public void MapSharesTheFrameAndUnmapReleasesIt()
    {
        Grant(10, GTF_permit_access, B.Id, SharedGfn);
        A.Write(SharedGfn << 12, 0x1122334455667788UL);
        var m = Map(B, A.Id, 10);
        Assert.Equal(GNTST_okay, m.Status);
        Assert.Equal(0x1122334455667788UL, B.Read<ulong>(MapGfn << 12));
        B.Write(MapGfn << 12, 0xCAFEUL);
        Assert.Equal(0xCAFEUL, A.Read<ulong>(SharedGfn << 12));
        Assert.Equal(GTF_writing, (ushort)(Flags(10) & (GTF_reading | GTF_writing)));
        Assert.True(A.Domain.Gnttab.HasActiveGrants);

        Assert.Equal(GNTST_okay, Unmap(B, m.Handle));
        Assert.Equal(0, Flags(10) & (GTF_reading | GTF_writing));
        Assert.False(A.Domain.Gnttab.HasActiveGrants);
        Assert.Throws<HypervisorException>(() => B.Read<ulong>(MapGfn << 12));
        Assert.Equal(GNTST_bad_handle, Unmap(B, m.Handle));
    }

    [Fact]
    public void PermissionsAreEnforced()
    {
        Grant(11, GTF_permit_access | GTF_readonly, B.Id, SharedGfn);
        Grant(12, GTF_permit_access, (ushort)(B.Id + 100), SharedGfn);
        Grant(13, GTF_invalid, B.Id, SharedGfn);
        Grant(14, GTF_permit_access, B.Id, 0x9999);

        var m = new GnttabMapGrantRef { HostAddr = MapGfn << 12, Flags = GNTMAP_host_map, Ref = 11, Dom = A.Id };
        Assert.Equal(0, GrantOp(B, GNTTABOP_map_grant_ref, ref m));
        Assert.Equal(GNTST_general_error, m.Status);

        var ro = Map(B, A.Id, 11, ro: true);
        Assert.Equal(GNTST_okay, ro.Status);
        Assert.Equal(GTF_reading, (ushort)(Flags(11) & (GTF_reading | GTF_writing)));
        Assert.Throws<HypervisorException>(() => B.Write(MapGfn << 12, 1UL)); // read-only in B's p2m
        Assert.Equal(GNTST_okay, Unmap(B, ro.Handle));

        foreach (var (gref, expect) in new (uint, short)[] { (12, GNTST_general_error), (13, GNTST_general_error), (14, GNTST_bad_page), (100000, GNTST_bad_gntref) })
        {
            m = new GnttabMapGrantRef { HostAddr = MapGfn << 12, Flags = GNTMAP_host_map, Ref = gref, Dom = A.Id };
            Assert.Equal(0, GrantOp(B, GNTTABOP_map_grant_ref, ref m));
            Assert.Equal(expect, m.Status);
        }
        m = new GnttabMapGrantRef { HostAddr = MapGfn << 12, Flags = GNTMAP_host_map, Ref = 10, Dom = 3000 };
        Assert.Equal(0, GrantOp(B, GNTTABOP_map_grant_ref, ref m));
        Assert.Equal(GNTST_bad_domain, m.Status);
        m = new GnttabMapGrantRef { HostAddr = MapGfn << 12, Flags = 0, Ref = 10, Dom = A.Id };
        Assert.Equal(0, GrantOp(B, GNTTABOP_map_grant_ref, ref m));
        Assert.Equal(GNTST_bad_gntref, m.Status);
        m = new GnttabMapGrantRef { HostAddr = MapGfn << 12, Flags = GNTMAP_host_map | GNTMAP_contains_pte, Ref = 10, Dom = A.Id };
        Assert.Equal(0, GrantOp(B, GNTTABOP_map_grant_ref, ref m));
        Assert.Equal(GNTST_general_error, m.Status);
    }

    [Fact]
    public void CopyBetweenGuests()
    {
        Grant(20, GTF_permit_access, B.Id, SharedGfn);
        Grant(21, GTF_permit_access | GTF_readonly, B.Id, SharedGfn + 1);
        A.Write((SharedGfn + 1) << 12, 0xABCDUL);
        B.Write(0x5000, 0x7777UL);

        // B pushes its own frame into A's granted page.
        var c = new GnttabCopy
        {
            Source = new GnttabCopyPtr { RefOrGmfn = 5, Domid = Xen.DOMID_SELF, Offset = 0 },
            Dest = new GnttabCopyPtr { RefOrGmfn = 20, Domid = A.Id, Offset = 16 },
            Len = 8,
            Flags = GNTCOPY_dest_gref,
        };
        Assert.Equal(0, GrantOp(B, GNTTABOP_copy, ref c));
        Assert.Equal(GNTST_okay, c.Status);
        Assert.Equal(0x7777UL, A.Read<ulong>((SharedGfn << 12) + 16));

        // B pulls from a read-only grant.
        c = new GnttabCopy
        {
            Source = new GnttabCopyPtr { RefOrGmfn = 21, Domid = A.Id },
            Dest = new GnttabCopyPtr { RefOrGmfn = 6, Domid = Xen.DOMID_SELF },
            Len = 8,
            Flags = GNTCOPY_source_gref,
        };
        Assert.Equal(0, GrantOp(B, GNTTABOP_copy, ref c));
        Assert.Equal(GNTST_okay, c.Status);
        Assert.Equal(0xABCDUL, B.Read<ulong>(0x6000));

        // Writing into a read-only grant, crossing a page, or naming another domain's frames is refused.
        c = new GnttabCopy { Source = new GnttabCopyPtr { RefOrGmfn = 5, Domid = Xen.DOMID_SELF }, Dest = new GnttabCopyPtr { RefOrGmfn = 21, Domid = A.Id }, Len = 8, Flags = GNTCOPY_dest_gref };
        GrantOp(B, GNTTABOP_copy, ref c);
        Assert.Equal(GNTST_general_error, c.Status);
        c = new GnttabCopy { Source = new GnttabCopyPtr { RefOrGmfn = 5, Domid = Xen.DOMID_SELF, Offset = 4090 }, Dest = new GnttabCopyPtr { RefOrGmfn = 20, Domid = A.Id }, Len = 8, Flags = GNTCOPY_dest_gref };
        GrantOp(B, GNTTABOP_copy, ref c);
        Assert.Equal(GNTST_bad_copy_arg, c.Status);
        c = new GnttabCopy { Source = new GnttabCopyPtr { RefOrGmfn = 5, Domid = A.Id }, Dest = new GnttabCopyPtr { RefOrGmfn = 6, Domid = Xen.DOMID_SELF }, Len = 8 };
        GrantOp(B, GNTTABOP_copy, ref c);
        Assert.Equal(GNTST_permission_denied, c.Status);
        Assert.False(A.Domain.Gnttab.HasActiveGrants);
    }

    [Fact]
    public void HostSideMapAndCopy()
    {
        Grant(30, GTF_permit_access, 0, SharedGfn);
        Grant(31, GTF_permit_access, B.Id, SharedGfn);
        A.Write(SharedGfn << 12, 0x55UL);
        Assert.Equal(GNTST_okay, Host.Dom0Services.TryMapGrant(A.Id, 30, readOnly: false, out var mapping));
        using (mapping)
        {
            Assert.Equal(0x55, mapping!.Span[0]);
            mapping.Span[1] = 0x66;
            Assert.Equal(0x6655UL, A.Read<ulong>(SharedGfn << 12));
            Assert.True(A.Domain.Gnttab.HasActiveGrants);
        }
        Assert.False(A.Domain.Gnttab.HasActiveGrants);
        Assert.Equal(GNTST_general_error, Host.Dom0Services.TryMapGrant(A.Id, 31, readOnly: true, out _));
        Assert.Equal(GNTST_bad_domain, Host.Dom0Services.TryMapGrant(999, 30, readOnly: true, out _));

        var buf = new byte[2];
        Assert.Equal(GNTST_okay, Host.Dom0Services.GrantCopyFrom(A.Id, 30, 0, buf));
        Assert.Equal(new byte[] { 0x55, 0x66 }, buf);
        Assert.Equal(GNTST_okay, Host.Dom0Services.GrantCopyTo(A.Id, 30, 100, new byte[] { 9 }));
        Assert.Equal(9, A.ReadBytes((SharedGfn << 12) + 100, 1)[0]);
        Assert.Equal(GNTST_bad_copy_arg, Host.Dom0Services.GrantCopyTo(A.Id, 30, 4095, new byte[] { 1, 2 }));
    }

    [Fact]
    public void HostSideContiguousMapOfScatteredPages()
    {
        ulong[] gfns = [SharedGfn + 2, SharedGfn, SharedGfn + 1];
        for (int i = 0; i < gfns.Length; i++)
        {
            Grant(40 + (uint)i, GTF_permit_access, 0, gfns[i]);
            A.Write((gfns[i] << 12) + 4088, (ulong)(i + 1));
        }
        Assert.Equal(GNTST_okay, Host.Dom0Services.MapGrantRefsContiguous(A.Id, [40, 41, 42], readOnly: false, out var mapping));
        using (mapping)
        {
            byte* p = (byte*)mapping!.Address;
            Assert.Equal(3, mapping.Pages);
            for (int i = 0; i < gfns.Length; i++) Assert.Equal((ulong)(i + 1), *(ulong*)(p + i * 4096 + 4088));
            // A value straddling the first two pages lands in both guest frames.
            *(ulong*)(p + 4092) = 0x1122334455667788UL;
            Assert.Equal(0x55667788u, A.Read<uint>((gfns[0] << 12) + 4092));
            Assert.Equal(0x11223344u, A.Read<uint>(gfns[1] << 12));
            Assert.True(A.Domain.Gnttab.HasActiveGrants);
        }
        Assert.False(A.Domain.Gnttab.HasActiveGrants);
        // One bad reference: its status, and nothing stays mapped.
        Assert.NotEqual(GNTST_okay, Host.Dom0Services.MapGrantRefsContiguous(A.Id, [40, 77, 42], readOnly: false, out var none));
        Assert.Null(none);
        Assert.False(A.Domain.Gnttab.HasActiveGrants);
    }

    [Fact]
    public void SizeAndBadPointers()
    {
        var q = new GnttabQuerySize { Dom = Xen.DOMID_SELF };
        Assert.Equal(0, GrantOp(A, GNTTABOP_query_size, ref q));
        Assert.Equal(GNTST_okay, q.Status);
        Assert.Equal(1u, q.NrFrames);
        Assert.Equal(64u, q.MaxNrFrames);
        q = new GnttabQuerySize { Dom = 999 };
        Assert.Equal(0, GrantOp(A, GNTTABOP_query_size, ref q));
        Assert.Equal(GNTST_bad_domain, q.Status);
        q = new GnttabQuerySize { Dom = B.Id };
        Assert.Equal(0, GrantOp(A, GNTTABOP_query_size, ref q));
        Assert.Equal(GNTST_permission_denied, q.Status);

        var st = new GnttabSetupTable { Dom = Xen.DOMID_SELF, NrFrames = 4, FrameList = Guest.Scratch + 0x100 };
        Assert.Equal(0, GrantOp(A, GNTTABOP_setup_table, ref st));
        Assert.Equal(GNTST_okay, st.Status);
        Assert.Equal(GrantFrameGfn, A.Read<ulong>(Guest.Scratch + 0x100));
        Assert.Equal(ulong.MaxValue, A.Read<ulong>(Guest.Scratch + 0x108));
        st = new GnttabSetupTable { Dom = Xen.DOMID_SELF, NrFrames = 65, FrameList = Guest.Scratch + 0x100 };
        Assert.Equal(0, GrantOp(A, GNTTABOP_setup_table, ref st));
        Assert.Equal(GNTST_general_error, st.Status);
        var x = new XenAddToPhysmap { Domid = Xen.DOMID_SELF, Space = Memory.XENMAPSPACE_grant_table, Idx = 64, Gpfn = 0x3000 };
        Assert.Equal(-Errno.EINVAL, A.Call(Xen.__HYPERVISOR_memory_op, Memory.XENMEM_add_to_physmap, ref x));

        Assert.Equal(-Errno.EINVAL, A.Call(Xen.__HYPERVISOR_grant_table_op, GNTTABOP_query_size, Guest.Scratch, 2));
        foreach (int cmd in new[] { GNTTABOP_map_grant_ref, GNTTABOP_unmap_grant_ref, GNTTABOP_copy, GNTTABOP_setup_table, GNTTABOP_query_size, GNTTABOP_set_version, GNTTABOP_get_version, GNTTABOP_get_status_frames })
            Assert.Equal(-Errno.EFAULT, A.Call(Xen.__HYPERVISOR_grant_table_op, (ulong)cmd, Guest.Bad, 1));
        Assert.Equal(-Errno.ENOSYS, A.Call(Xen.__HYPERVISOR_grant_table_op, GNTTABOP_transfer, Guest.Scratch, 1));
    }
}

[Trait("Feature", "Grant Table v1")]
public unsafe class GrantTableV1Tests() : GrantTableTestBase(1)
{
    protected override void Grant(uint gref, ushort flags, ushort domid, ulong frame) =>
        A.Write(GrantFrameGfn * 4096 + gref * 8, new GrantEntryV1 { Flags = flags, Domid = domid, Frame = (uint)frame });

    protected override ushort Flags(uint gref) => A.Read<ushort>(GrantFrameGfn * 4096 + gref * 8);

    [Fact]
    public void VersionSwitchIsRefusedWhileGrantsAreInUse()
    {
        Grant(10, GTF_permit_access, B.Id, SharedGfn);
        var m = Map(B, A.Id, 10);
        var sv = new GnttabSetVersion { Version = 2 };
        Assert.Equal(-Errno.EBUSY, GrantOp(A, GNTTABOP_set_version, ref sv));
        Assert.Equal(1u, sv.Version);
        Unmap(B, m.Handle);
        sv.Version = 3;
        Assert.Equal(-Errno.EINVAL, GrantOp(A, GNTTABOP_set_version, ref sv));
        var gv = new GnttabGetVersion { Dom = Xen.DOMID_SELF };
        Assert.Equal(0, GrantOp(A, GNTTABOP_get_version, ref gv));
        Assert.Equal(1u, gv.Version);
        var gs = new GnttabGetStatusFrames { NrFrames = 1, Dom = Xen.DOMID_SELF, FrameList = Guest.Scratch + 0x100 };
        Assert.Equal(0, GrantOp(A, GNTTABOP_get_status_frames, ref gs));
        Assert.Equal(GNTST_general_error, gs.Status);
    }

    [Fact]
    public void ToolstackSeededEntriesSurviveTheSwitchToV2()
    {
        Host.SeedGrantEntry(A.Id, GNTTAB_RESERVED_XENSTORE, GTF_permit_access, 0, (uint)SharedGfn);
        var sv = new GnttabSetVersion { Version = 2 };
        Assert.Equal(0, GrantOp(A, GNTTABOP_set_version, ref sv));
        var e = A.Read<GrantEntryV2>(GrantFrameGfn * 4096 + GNTTAB_RESERVED_XENSTORE * 16);
        Assert.Equal(GTF_permit_access, e.Flags);
        Assert.Equal(SharedGfn, e.Frame);
        Assert.Equal(GNTST_okay, Host.Dom0Services.TryMapGrant(A.Id, GNTTAB_RESERVED_XENSTORE, false, out var map));
        map!.Dispose();
    }
}

[Trait("Feature", "Grant Table v2")]
public unsafe class GrantTableV2Tests() : GrantTableTestBase(2)
{
    private const ulong StatusGfn = 0x1100;

    protected override void Grant(uint gref, ushort flags, ushort domid, ulong frame) =>
        A.Write(GrantFrameGfn * 4096 + gref * 16, new GrantEntryV2 { Flags = flags, Domid = domid, Frame = frame });

    /// <summary>v2 keeps GTF_reading/GTF_writing in the status frames; map status frame 0 to look.</summary>
    protected override ushort Flags(uint gref)
    {
        var x = new XenAddToPhysmap { Domid = Xen.DOMID_SELF, Space = Memory.XENMAPSPACE_grant_table, Idx = Memory.XENMAPIDX_grant_table_status, Gpfn = StatusGfn };
        Assert.Equal(0, A.Call(Xen.__HYPERVISOR_memory_op, Memory.XENMEM_add_to_physmap, ref x));
        return A.Read<ushort>(StatusGfn * 4096 + gref * 2);
    }

    [Fact]
    public void StatusFramesAndSubPageCopies()
    {
        var gs = new GnttabGetStatusFrames { NrFrames = 1, Dom = Xen.DOMID_SELF, FrameList = Guest.Scratch + 0x100 };
        Flags(0);
        Assert.Equal(0, GrantOp(A, GNTTABOP_get_status_frames, ref gs));
        Assert.Equal(GNTST_okay, gs.Status);
        Assert.Equal(StatusGfn, A.Read<ulong>(Guest.Scratch + 0x100));
        gs.NrFrames = 5;
        Assert.Equal(0, GrantOp(A, GNTTABOP_get_status_frames, ref gs));
        Assert.Equal(GNTST_general_error, gs.Status);

        // A sub-page grant: bytes 64..127 only, and it cannot be mapped.
        A.Write(GrantFrameGfn * 4096 + 40 * 16, new GrantEntryV2 { Flags = GTF_permit_access | GTF_sub_page, Domid = B.Id, SubPageOff = 64, SubPageLength = 64, Frame = SharedGfn });
        var m = new GnttabMapGrantRef { HostAddr = MapGfn << 12, Flags = GNTMAP_host_map, Ref = 40, Dom = A.Id };
        Assert.Equal(0, GrantOp(B, GNTTABOP_map_grant_ref, ref m));
        Assert.Equal(GNTST_general_error, m.Status);
        B.Write(0x5000, 0x99UL);
        var c = new GnttabCopy { Source = new GnttabCopyPtr { RefOrGmfn = 5, Domid = Xen.DOMID_SELF }, Dest = new GnttabCopyPtr { RefOrGmfn = 40, Domid = A.Id, Offset = 64 }, Len = 8, Flags = GNTCOPY_dest_gref };
        Assert.Equal(0, GrantOp(B, GNTTABOP_copy, ref c));
        Assert.Equal(GNTST_okay, c.Status);
        Assert.Equal(0x99UL, A.Read<ulong>((SharedGfn << 12) + 64));
        c.Dest.Offset = 8;
        Assert.Equal(0, GrantOp(B, GNTTABOP_copy, ref c));
        Assert.Equal(GNTST_general_error, c.Status);
    }

    [Fact]
    public void BackToV1DropsStatusFrames()
    {
        Flags(0);
        var sv = new GnttabSetVersion { Version = 1 };
        Assert.Equal(0, GrantOp(A, GNTTABOP_set_version, ref sv));
        Assert.Equal(0, A.Domain.Gnttab.StatusFrames);
        Assert.Throws<HypervisorException>(() => A.Read<ushort>(StatusGfn * 4096));
    }
}
