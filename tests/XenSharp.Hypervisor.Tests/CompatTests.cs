using XenSharp.Public;
using XenSharp.Public.Compat;
using XenSharp.Public.Hvm;
using static XenSharp.Public.Memory;

namespace XenSharp.Hypervisor.Tests;

/// <summary>Hypercalls from 32-bit guest code: the x86_32 structure layouts and shared_info.</summary>
[Trait("Feature", "x86/PVH")]
public unsafe class CompatTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private Guest Guest32(int vcpus = 1)
    {
        var g = new Guest(_host, vcpus);
        foreach (var v in g.Domain.Vcpus)
            v.Compat = true;
        return g;
    }

    [Fact]
    [Trait("Feature", "Dynamic memory control")]
    public void ReservationsUseFourByteExtents()
    {
        var g = Guest32();
        long tot = g.Domain.TotPages;
        g.Write(Guest.Scratch + 0x100, 0x200u);
        g.Write(Guest.Scratch + 0x104, 0x201u);
        g.Write(Guest.Scratch, new XenMemoryReservation32 { ExtentStart = (uint)Guest.Scratch + 0x100, NrExtents = 2, Domid = Xen.DOMID_SELF });
        Assert.Equal(2, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_decrease_reservation, Guest.Scratch));
        Assert.Equal(tot - 2, g.Domain.TotPages);
        Assert.Equal(2, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_populate_physmap, Guest.Scratch));
        Assert.Equal(tot, g.Domain.TotPages);
    }

    [Fact]
    public void ForeignBatchAndExchangeIn32BitLayout()
    {
        var front = new Guest(_host);
        front.Write(0x30000, 0xC0FFEEu);
        var backend = new Guest(_host, privileged: true);
        foreach (var v in backend.Domain.Vcpus)
            v.Compat = true;
        backend.Write(Guest.Scratch + 0x100, 0x30u);          // idxs: xen_ulong_t, 4 bytes
        backend.Write(Guest.Scratch + 0x200, 0x2000u);        // gpfns: xen_pfn_t, 4 bytes
        backend.Write(Guest.Scratch, new XenAddToPhysmapBatch32
        {
            Domid = Xen.DOMID_SELF, Space = (ushort)XENMAPSPACE_gmfn_foreign, Size = 1, ForeignDomid = front.Id,
            Idxs = (uint)Guest.Scratch + 0x100, Gpfns = (uint)Guest.Scratch + 0x200, Errs = (uint)Guest.Scratch + 0x300,
        });
        Assert.Equal(0, backend.Call(Xen.__HYPERVISOR_memory_op, XENMEM_add_to_physmap_batch, Guest.Scratch));
        Assert.Equal(0, backend.Read<int>(Guest.Scratch + 0x300));
        Assert.Equal(0xC0FFEEu, backend.Read<uint>(0x2000000));

        backend.Write(Guest.Scratch + 0x100, 0x40u);
        backend.Write(Guest.Scratch + 0x200, 0x900u);
        backend.Write(Guest.Scratch, new XenMemoryExchange32
        {
            In = new XenMemoryReservation32 { ExtentStart = (uint)Guest.Scratch + 0x100, NrExtents = 1, Domid = Xen.DOMID_SELF },
            Out = new XenMemoryReservation32 { ExtentStart = (uint)Guest.Scratch + 0x200, NrExtents = 1, Domid = Xen.DOMID_SELF },
        });
        Assert.Equal(0, backend.Call(Xen.__HYPERVISOR_memory_op, XENMEM_exchange, Guest.Scratch));
        Assert.Equal(1u, backend.Read<uint>(Guest.Scratch + XenMemoryExchange32.OffsetNrExchanged));
        Assert.False(backend.Domain.P2m.TryLookup(0x40, out _, out _));
        Assert.True(backend.Domain.P2m.TryLookup(0x900, out _, out _));
    }

    [Fact]
    public void SharedInfoAndEventsIn32BitLayout()
    {
        var g = Guest32();
        var x = new XenAddToPhysmap32 { Domid = Xen.DOMID_SELF, Space = XENMAPSPACE_shared_info, Gpfn = 0x80 };
        g.Write(Guest.Scratch, x);
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_add_to_physmap, Guest.Scratch));
        var p = new XenHvmParam { Domid = Xen.DOMID_SELF, Index = Params.HVM_PARAM_CALLBACK_IRQ, Value = (2UL << 56) | 0xF3 };
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_set_param, ref p));
        Assert.True(g.Domain.Has32BitSharedInfo);
        const ulong si = 0x80000;
        Assert.True(g.Read<uint>(si + SharedInfo32.OffsetWcSec) > 1_600_000_000);
        Assert.Equal(0u, g.Read<uint>(si + SharedInfo32.OffsetWcVersion) & 1);

        uint port = Evtchn.BindIpi(g, 0);
        g.Write(si, 0UL); // upcall_pending, mask, pending_sel
        Assert.Equal(0, Evtchn.Send(g, port));
        Assert.NotEqual(0u, g.Read<uint>(si + SharedInfo32.OffsetEvtchnPending) & (1u << (int)port));
        Assert.Equal(1u << (int)(port / 32), g.Read<uint>(si + SharedInfo32.VcpuInfoOffsetPendingSel));
        Assert.Equal(1, g.Read<byte>(si));

        // A port masked in the 32-bit mask array stays quiet until unmasked.
        uint p2 = Evtchn.BindIpi(g, 0);
        g.Write(si, 0UL);
        g.Write(si + SharedInfo32.OffsetEvtchnMask, 1u << (int)p2);
        Assert.Equal(0, Evtchn.Send(g, p2));
        Assert.Equal(0, g.Read<byte>(si));
        Assert.Equal(0, Evtchn.Unmask(g, p2));
        Assert.Equal(1, g.Read<byte>(si));
        Assert.Equal(1024u, g.Domain.Evtchn.Ops.MaxPorts);
    }

    [Fact]
    public void MemoryMapAndRemove()
    {
        var g = Guest32();
        _host.SetMemoryMap(g.Id, [new E820Entry { Addr = 0, Size = 4 << 20, Type = 1 }]);
        g.Write(Guest.Scratch, new XenMemoryMap32 { NrEntries = 4, Buffer = (uint)Guest.Scratch + 0x100 });
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_memory_map, Guest.Scratch));
        Assert.Equal(1u, g.Read<uint>(Guest.Scratch));
        Assert.Equal(4UL << 20, g.Read<ulong>(Guest.Scratch + 0x108));
        g.Write(Guest.Scratch, new XenRemoveFromPhysmap32 { Domid = Xen.DOMID_SELF, Gpfn = 0x300 });
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_remove_from_physmap, Guest.Scratch));
        Assert.Throws<HypervisorException>(() => g.Read<byte>(0x300000));
    }

    [Fact]
    [Trait("Feature", "Grant Table v1")]
    public void GrantCopyAndSetupTable()
    {
        var g = Guest32();
        g.Write(Guest.Scratch, new GnttabSetupTable32 { Dom = Xen.DOMID_SELF, NrFrames = 2, FrameList = (uint)Guest.Scratch + 0x100 });
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_grant_table_op, GrantTable.GNTTABOP_setup_table, Guest.Scratch, 1));
        Assert.Equal(0, g.Read<short>(Guest.Scratch + 8));
        Assert.Equal(uint.MaxValue, g.Read<uint>(Guest.Scratch + 0x104)); // 4-byte frame numbers (not mapped yet)

        g.Write(0x5000, 0x1234UL);
        var c = new GnttabCopy32
        {
            Source = new GnttabCopyPtr32 { RefOrGmfn = 5, Domid = Xen.DOMID_SELF },
            Dest = new GnttabCopyPtr32 { RefOrGmfn = 6, Domid = Xen.DOMID_SELF, Offset = 8 },
            Len = 8,
        };
        g.Write(Guest.Scratch, c);
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_grant_table_op, GrantTable.GNTTABOP_copy, Guest.Scratch, 1));
        Assert.Equal(0, g.Read<GnttabCopy32>(Guest.Scratch).Status);
        Assert.Equal(0x1234UL, g.Read<ulong>(0x6008));
    }

    [Fact]
    public void PollRunstateAndPlatformParameters()
    {
        var g = Guest32();
        uint port = Evtchn.BindIpi(g, 0);
        Assert.Equal(0, Evtchn.Send(g, port));
        g.Write(Guest.Scratch + 0x100, port);
        g.Write(Guest.Scratch, new SchedPoll32 { Ports = (uint)Guest.Scratch + 0x100, NrPorts = 1, Timeout = 0 });
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_poll, Guest.Scratch));
        Assert.False(g.Vcpu().Blocked);

        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_vcpu_op, VcpuOp.VCPUOP_get_runstate_info, 0, Guest.Scratch));
        var rs = g.Read<VcpuRunstateInfo32>(Guest.Scratch);
        Assert.Equal(VcpuOp.RUNSTATE_runnable, rs.State);

        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_xen_version, Public.Version.XENVER_platform_parameters, Guest.Scratch));
        Assert.Equal(0xF5800000u, g.Read<uint>(Guest.Scratch));
    }
}
