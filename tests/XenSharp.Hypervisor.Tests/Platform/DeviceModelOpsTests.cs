using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86;
using XenSharp.Public;
using XenSharp.Public.Hvm;
using static XenSharp.Public.Hvm.DmOp;

namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>
/// What QEMU asks of Xen when it attaches as an HVM domain's device model, beyond the IOREQ server itself: the
/// server's pages mapped as the XENMEM_resource_ioreq_server resource (so QEMU's mapping and the hypervisor's are the
/// same memory), and the dm_ops it calls as it sets up the machine: set_mem_type for its ROMs, relocate_memory for
/// VRAM, modified_memory, track_dirty_vram, inject_msi, pin_memory_cacheattr and remote_shutdown, each with the
/// errors Xen gives for bad arguments.
/// </summary>
[Trait("Feature", "Hypervisor emulated platform devices")]
public sealed unsafe class DeviceModelOpsTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    private readonly byte* _buffers = (byte*)NativeMemory.AllocZeroed(8192);
    private const ulong CallerBase = 0x7000_0000;
    private const int Buf1 = 0x1000;
    private readonly Dom0HypercallContext _dm;

    public DeviceModelOpsTests() => _dm = _host.OpenDom0Hypercalls((nint)_buffers, CallerBase, 8192);

    public void Dispose()
    {
        _dm.Dispose();
        _host.Dispose();
        NativeMemory.Free(_buffers);
    }

    /// <summary>A dm_op with <paramref name="u"/> as its union and, when <paramref name="buf1Size"/> is set, a second
    /// buffer at <see cref="Buf1"/> of the caller's memory.</summary>
    private long DmOp<T>(ushort domid, uint op, ref T u, ulong buf1Size = 0) where T : unmanaged
    {
        var header = (XenDmOp*)(_buffers + 0x100);
        *header = default;
        header->Op = op;
        Unsafe.Write(header->U, u);
        var bufs = (XenDmOpBuf*)_buffers;
        bufs[0] = new XenDmOpBuf { H = CallerBase + 0x100, Size = (ulong)sizeof(XenDmOp) };
        bufs[1] = new XenDmOpBuf { H = CallerBase + Buf1, Size = buf1Size };
        long rc = _dm.Hypercall(Xen.__HYPERVISOR_dm_op, domid, buf1Size == 0 ? 1UL : 2UL, CallerBase);
        u = Unsafe.Read<T>(header->U);
        return rc;
    }

    private ushort CreateServer(ushort domid, byte bufioreq)
    {
        var c = new XenDmOpCreateIoreqServer { HandleBufioreq = bufioreq };
        Assert.Equal(0, DmOp(domid, XEN_DMOP_create_ioreq_server, ref c));
        return c.Id;
    }

    [Fact]
    public void TheServersPagesAreTheResourceADeviceModelMaps()
    {
        var g = new Guest(_host, vcpus: 2, type: DomainKind.Hvm);
        ushort id = CreateServer(g.Id, bufioreq: IoreqServers.HVM_IOREQSRV_BUFIOREQ_ATOMIC);
        var server = g.Domain.Arch.Ioreq.Get(id, 0, out _)!;
        var offsets = new long[2];
        Assert.Equal(0, _host.Dom0ResourceFrames(g.Id, Memory.XENMEM_resource_ioreq_server, id, 0, offsets, out var memfd));
        using (memfd)
        {
            // Frame 1 is the synchronous page: each vCPU's slot names the event channel the device model binds.
            var slot = new byte[sizeof(IoreqSlot)];
            RandomAccess.Read(memfd!, slot, offsets[1] + sizeof(IoreqSlot));
            Assert.Equal(server.VcpuPort(1), MemoryMarshal.Read<IoreqSlot>(slot).VpEport);
            // What the device model writes there is what the hypervisor reads, and the other way round.
            RandomAccess.Write(memfd!, BitConverter.GetBytes(0x1234_5678_9ABC_DEF0UL), offsets[1] + 8);
            Assert.Equal(0x1234_5678_9ABC_DEF0UL, server.IoreqPage[0].Data);
            // Frame 0 is the buffered ring's page.
            var bufPage = (byte*)_host.Frames.PageAddress(server.BufIoreqMfn!.Value);
            bufPage[100] = 0x77;
            var b = new byte[1];
            RandomAccess.Read(memfd!, b, offsets[0] + 100);
            Assert.Equal(0x77, b[0]);
        }

        var one = new long[1];
        Assert.Equal(-Errno.EINVAL, _host.Dom0ResourceFrames(g.Id, Memory.XENMEM_resource_ioreq_server, id, 2, one, out _));
        Assert.Equal(-Errno.ENOENT, _host.Dom0ResourceFrames(g.Id, Memory.XENMEM_resource_ioreq_server, (uint)id + 1, 1, one, out _));
        // A server without a buffered ring has no frame 0.
        ushort plain = CreateServer(g.Id, bufioreq: 0);
        Assert.Equal(-Errno.EINVAL, _host.Dom0ResourceFrames(g.Id, Memory.XENMEM_resource_ioreq_server, plain, 0, one, out _));
        Assert.Equal(0, _host.Dom0ResourceFrames(g.Id, Memory.XENMEM_resource_ioreq_server, plain, 1, one, out var fd));
        fd!.Dispose();
        Assert.Equal(-Errno.ESRCH, _host.Dom0ResourceFrames(999, Memory.XENMEM_resource_ioreq_server, id, 1, one, out _));
    }

    [Fact]
    public void SetMemTypeMakesRamReadOnlyAndBack()
    {
        var g = new Guest(_host, vcpus: 1, type: DomainKind.Hvm);
        const ulong gfn = 0x200;
        var ro = new XenDmOpSetMemType { FirstPfn = gfn, Nr = 2, MemType = XenDmOpSetMemType.HVMMEM_ram_ro };
        Assert.Equal(0, DmOp(g.Id, XEN_DMOP_set_mem_type, ref ro));
        Assert.True(g.Domain.P2m.TryLookup(gfn + 1, out _, out var t));
        Assert.Equal(P2mType.RamRo, t);
        Assert.True(g.Domain.P2m.GetPage(gfn, write: false) != null);
        Assert.True(g.Domain.P2m.GetPage(gfn, write: true) == null);
        var rw = new XenDmOpSetMemType { FirstPfn = gfn, Nr = 2, MemType = XenDmOpSetMemType.HVMMEM_ram_rw };
        Assert.Equal(0, DmOp(g.Id, XEN_DMOP_set_mem_type, ref rw));
        Assert.True(g.Domain.P2m.GetPage(gfn + 1, write: true) != null);

        // A hole may become mmio_dm (it already goes to the device models); RAM may not, nor a hole become RAM.
        var hole = new XenDmOpSetMemType { FirstPfn = 0xF0000, Nr = 16, MemType = XenDmOpSetMemType.HVMMEM_mmio_dm };
        Assert.Equal(0, DmOp(g.Id, XEN_DMOP_set_mem_type, ref hole));
        var ramToMmio = new XenDmOpSetMemType { FirstPfn = gfn, Nr = 1, MemType = XenDmOpSetMemType.HVMMEM_mmio_dm };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_set_mem_type, ref ramToMmio));
        var holeToRam = new XenDmOpSetMemType { FirstPfn = 0xF0000, Nr = 1, MemType = XenDmOpSetMemType.HVMMEM_ram_rw };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_set_mem_type, ref holeToRam));
        var unused = new XenDmOpSetMemType { FirstPfn = gfn, Nr = 1, MemType = XenDmOpSetMemType.HVMMEM_unused };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_set_mem_type, ref unused));
        var pad = new XenDmOpSetMemType { FirstPfn = gfn, Nr = 1, Pad = 1 };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_set_mem_type, ref pad));
        var wrap = new XenDmOpSetMemType { FirstPfn = ulong.MaxValue, Nr = 2 };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_set_mem_type, ref wrap));
    }

    [Fact]
    public void RelocateMemoryMovesRamToItsNewPlace()
    {
        var g = new Guest(_host, vcpus: 1, type: DomainKind.Hvm);
        const ulong src = 0x300, dst = 0xE0000;
        g.Write(src << 12, 0xA1A2A3A4UL);
        g.Write((src + 1) << 12, 0xB1B2B3B4UL);
        var r = new XenDmOpRelocateMemory { Size = 2, SrcGfn = src, DstGfn = dst };
        Assert.Equal(0, DmOp(g.Id, XEN_DMOP_relocate_memory, ref r));
        Assert.False(g.Domain.P2m.TryLookup(src, out _, out _));
        Assert.Equal(0xA1A2A3A4UL, g.Read<ulong>(dst << 12));
        Assert.Equal(0xB1B2B3B4UL, g.Read<ulong>((dst + 1) << 12));
        var pad = new XenDmOpRelocateMemory { Size = 1, Pad = 1, SrcGfn = dst, DstGfn = src };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_relocate_memory, ref pad));
    }

    [Fact]
    public void ModifiedMemoryMarksPagesDirtyAndChecksItsExtents()
    {
        var g = new Guest(_host, vcpus: 1, type: DomainKind.Hvm);
        g.Domain.P2m.EnableLogDirty();
        var extents = (XenDmOpModifiedMemoryExtent*)(_buffers + Buf1);
        extents[0] = new XenDmOpModifiedMemoryExtent { FirstPfn = 0x100, Nr = 3 };
        extents[1] = new XenDmOpModifiedMemoryExtent { FirstPfn = 0x180, Nr = 1 };
        var m = new XenDmOpModifiedMemory { NrExtents = 2 };
        Assert.Equal(0, DmOp(g.Id, XEN_DMOP_modified_memory, ref m, (ulong)(2 * sizeof(XenDmOpModifiedMemoryExtent))));
        foreach (ulong gfn in new ulong[] { 0x100, 0x101, 0x102, 0x180 })
            Assert.True(g.Domain.P2m.IsDirty(gfn), $"gfn {gfn:x} not dirty");
        Assert.False(g.Domain.P2m.IsDirty(0x103));

        // The second buffer must hold every extent; an extent beyond the guest's memory is refused.
        m = new XenDmOpModifiedMemory { NrExtents = 2 };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_modified_memory, ref m, (ulong)sizeof(XenDmOpModifiedMemoryExtent)));
        extents[0] = new XenDmOpModifiedMemoryExtent { FirstPfn = 0x10_0000, Nr = 1 };
        m = new XenDmOpModifiedMemory { NrExtents = 1 };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_modified_memory, ref m, (ulong)sizeof(XenDmOpModifiedMemoryExtent)));
        m = new XenDmOpModifiedMemory { NrExtents = 1 };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_modified_memory, ref m));
    }

    [Fact]
    public void TrackDirtyVramFillsTheBitmap()
    {
        var g = new Guest(_host, vcpus: 1, type: DomainKind.Hvm);
        new Span<byte>(_buffers + Buf1, 64).Clear();
        var t = new XenDmOpTrackDirtyVram { FirstPfn = 0xF0000, Nr = 20 };
        Assert.Equal(0, DmOp(g.Id, XEN_DMOP_track_dirty_vram, ref t, 3));
        Assert.Equal(0xFF, _buffers[Buf1]);
        Assert.Equal(0xFF, _buffers[Buf1 + 1]);
        Assert.Equal(0x0F, _buffers[Buf1 + 2] & 0x0F);
        Assert.Equal(0, _buffers[Buf1 + 3]);
        t = new XenDmOpTrackDirtyVram { FirstPfn = 0xF0000, Nr = 20 };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_track_dirty_vram, ref t, 2));
        t = new XenDmOpTrackDirtyVram { FirstPfn = 0xF0000, Nr = (1u << 18) + 1 };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_track_dirty_vram, ref t, 1 << 16));
        t = new XenDmOpTrackDirtyVram();
        Assert.Equal(0, DmOp(g.Id, XEN_DMOP_track_dirty_vram, ref t));
    }

    [Fact]
    public void InjectMsiReachesTheAddressedVlapic()
    {
        var g = new Guest(_host, vcpus: 2, type: DomainKind.Hvm);
        foreach (var v in g.Domain.Vcpus)
            v.Arch.Vlapic.Write(0xF0, 0x1FF); // software-enabled
        var msi = new XenDmOpInjectMsi { Addr = 0xFEE0_2000, Data = 0x45 };   // APIC id 2 (vCPU 1), fixed, vector 0x45
        Assert.Equal(0, DmOp(g.Id, XEN_DMOP_inject_msi, ref msi));
        Assert.Equal(0x45, g.Domain.Vcpus[1].Arch.Vlapic.HighestDeliverable());
        Assert.True(g.Domain.Vcpus[0].Arch.Vlapic.HighestDeliverable() < 0);
        var pad = new XenDmOpInjectMsi { Addr = 0xFEE0_0000, Data = 0x46, Pad = 1 };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_inject_msi, ref pad));
    }

    [Fact]
    public void PinMemoryCacheattrAcceptsXensTypesOnly()
    {
        var g = new Guest(_host, vcpus: 1, type: DomainKind.Hvm);
        var p = new XenDmOpPinMemoryCacheattr { Start = 0xA0, End = 0xBF, Type = XenDmOpPinMemoryCacheattr.XEN_DMOP_MEM_CACHEATTR_WC };
        Assert.Equal(0, DmOp(g.Id, XEN_DMOP_pin_memory_cacheattr, ref p));
        p = new XenDmOpPinMemoryCacheattr { Start = 0xA0, End = 0xBF, Type = 2 };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_pin_memory_cacheattr, ref p));
        p = new XenDmOpPinMemoryCacheattr { Start = 0xBF, End = 0xA0, Type = XenDmOpPinMemoryCacheattr.XEN_DMOP_MEM_CACHEATTR_WB };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_pin_memory_cacheattr, ref p));
    }

    [Fact]
    public void RemoteShutdownShutsTheDomainDown()
    {
        var g = new Guest(_host, vcpus: 1, type: DomainKind.Hvm);
        var s = new XenDmOpRemoteShutdown { Reason = Sched.SHUTDOWN_reboot };
        Assert.Equal(0, DmOp(g.Id, XEN_DMOP_remote_shutdown, ref s));
        Assert.Equal(Sched.SHUTDOWN_reboot, g.Domain.ShutdownReason);
    }
}
