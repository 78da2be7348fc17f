using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86;
using XenSharp.Hypervisor.X86.Io;
using XenSharp.Public;
using XenSharp.Public.Hvm;
using static XenSharp.Public.Hvm.DmOp;

namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>
/// IOREQ servers through __HYPERVISOR_dm_op from a Domain-0 program, with a small device model in the test: it binds
/// the server's per-vCPU event channel, answers the requests in the synchronous ioreq page and notifies back. Port,
/// MMIO and PCI config ranges reach it; the vCPU waits for its answer; nothing else does, and what nobody claims
/// reads all ones.
/// </summary>
[Trait("Feature", "Hypervisor emulated platform devices")]
public sealed unsafe class IoreqServerTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    private readonly byte* _buffers = (byte*)NativeMemory.AllocZeroed(4096);
    private const ulong CallerBase = 0x7000_0000;
    private readonly Dom0HypercallContext _dm;
    /// <summary>The device models the running test made (its class's tests run one at a time).</summary>
    private static readonly List<DeviceModel> _models = [];

    public IoreqServerTests() => _dm = _host.OpenDom0Hypercalls((nint)_buffers, CallerBase, 4096);

    public void Dispose()
    {
        _dm.Dispose();
        // A notification's answer still queued on the thread pool must not read the ioreq page once the host freed it.
        lock (_models)
        {
            foreach (var m in _models)
                m.Close();
            _models.Clear();
        }
        _host.Dispose();
        NativeMemory.Free(_buffers);
    }

    /// <summary>Issues a dm_op with <paramref name="u"/> as its union; returns the result and leaves the union as Xen
    /// wrote it back.</summary>
    private long DmOp<T>(ushort domid, uint op, ref T u) where T : unmanaged
    {
        var header = (XenDmOp*)(_buffers + 0x100);
        *header = default;
        header->Op = op;
        Unsafe.Write(header->U, u);
        *(XenDmOpBuf*)_buffers = new XenDmOpBuf { H = CallerBase + 0x100, Size = (ulong)sizeof(XenDmOp) };
        long rc = _dm.Hypercall(Xen.__HYPERVISOR_dm_op, domid, 1, CallerBase);
        u = Unsafe.Read<T>(header->U);
        return rc;
    }

    private ushort CreateServer(ushort domid, byte bufioreq = 0)
    {
        var c = new XenDmOpCreateIoreqServer { HandleBufioreq = bufioreq };
        Assert.Equal(0, DmOp(domid, XEN_DMOP_create_ioreq_server, ref c));
        return c.Id;
    }

    private long Map(ushort domid, ushort id, uint type, ulong start, ulong end, bool map = true)
    {
        var r = new XenDmOpIoreqServerRange { Id = id, Type = type, Start = start, End = end };
        return DmOp(domid, map ? XEN_DMOP_map_io_range_to_ioreq_server : XEN_DMOP_unmap_io_range_from_ioreq_server, ref r);
    }

    private long SetState(ushort domid, ushort id, bool enabled)
    {
        var s = new XenDmOpSetIoreqServerState { Id = id, Enabled = (byte)(enabled ? 1 : 0) };
        return DmOp(domid, XEN_DMOP_set_ioreq_server_state, ref s);
    }

    /// <summary>A device model: a register file keyed by (type, address), answering from another thread so that the
    /// vCPU really waits for it.</summary>
    private sealed class DeviceModel
    {
        public readonly List<(uint Type, ulong Addr, uint Size, bool Read, ulong Data)> Seen = [];
        public readonly Dictionary<(uint, ulong), ulong> Registers = [];
        /// <summary>The repeated requests (count &gt; 1) as they came: count, data_is_ptr, df, address, data.</summary>
        public readonly List<(uint Count, bool DataIsPtr, bool Df, ulong Addr, ulong Data)> Repeated = [];
        /// <summary>When set, the count the model answers a repeated request with (it did only that many).</summary>
        public uint? CountDone;
        private readonly XenHypervisor _host;
        private readonly IoreqServer _server;
        private uint _port;

        private bool _closed;

        public DeviceModel(XenHypervisor host, IoreqServer server, ushort domid)
        {
            lock (_models)
                _models.Add(this);
            _host = host;
            _server = server;
            Assert.Equal(0, host.Dom0EvtchnBindInterdomain(domid, server.VcpuPort(0), () => Task.Run(Answer), out _port));
        }

        public void Close()
        {
            lock (this)
                _closed = true;
        }

        private void Answer()
        {
            lock (this)
            {
                if (_closed)
                    return;
                ref var slot = ref _server.IoreqPage[0];
                if ((Volatile.Read(ref slot.StateDir) & 0xF) != IoreqSlot.STATE_IOREQ_READY)
                    return;
                bool read = (slot.StateDir & IoreqSlot.DirRead) != 0;
                Seen.Add((slot.Type, slot.Addr, slot.Size, read, slot.Data));
                if (slot.Count > 1)
                {
                    Repeated.Add((slot.Count, (slot.StateDir & IoreqSlot.DataIsPtr) != 0, (slot.StateDir & IoreqSlot.Df) != 0, slot.Addr, slot.Data));
                    if (CountDone is uint done)
                        slot.Count = done;
                    Volatile.Write(ref slot.StateDir, IoreqSlot.STATE_IORESP_READY);
                    _host.Dom0EvtchnSend(_port);
                    return;
                }
                if (read)
                    slot.Data = Registers.TryGetValue((slot.Type, slot.Addr), out ulong v) ? v : 0x5A5A5A5A;
                else
                    Registers[(slot.Type, slot.Addr)] = slot.Data;
                Volatile.Write(ref slot.StateDir, IoreqSlot.STATE_IORESP_READY);
            }
            _host.Dom0EvtchnSend(_port);
        }
    }

    [Fact]
    public void ClaimedPortMmioAndPciConfigAccessesReachTheDeviceModel()
    {
        var g = new HvmPlatformGuest(_host);
        ushort id = CreateServer(g.Id);
        var server = g.Domain.Arch.Ioreq.Get(id, 0, out _)!;
        var model = new DeviceModel(_host, server, g.Id);
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PORT, 0x5A0, 0x5A7));
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_MEMORY, 0xF000_0000, 0xF000_0FFF));
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PCI, 3 << 3, 3 << 3)); // 0000:00:03.0

        // Not enabled yet: nobody answers.
        Assert.Equal(0xFFFFFFFFUL, g.In(0x5A0, 4));
        Assert.Empty(model.Seen);
        Assert.Equal(0, SetState(g.Id, id, true));

        g.Out(0x5A4, 2, 0xBEEF);
        Assert.Equal(0xBEEFUL, g.In(0x5A4, 2));
        Assert.Equal(0x5A5AUL, g.In(0x5A0, 2));
        g.Write(0xF000_0010, 0x1122_3344_5566_7788, 8);
        Assert.Equal(0x1122_3344_5566_7788UL, g.Read(0xF000_0010, 8));
        Assert.Equal((Ioreq.IOREQ_TYPE_COPY, 0xF000_0010UL, 8u, false, 0x1122_3344_5566_7788UL), model.Seen[3]);

        // A config read of 00:03.0 register 0x04 through 0xCF8/0xCFC.
        g.Out(0xCF8, 4, 0x8000_1804);
        Assert.Equal(0x5A5A5A5AUL, g.In(0xCFC, 4));
        Assert.Contains((Ioreq.IOREQ_TYPE_PCI_CONFIG, (0x18UL << 32) | 4, 4u, true, 0UL), model.Seen);
        // Device 4 is nobody's: all ones, and the model hears nothing of it.
        int seen = model.Seen.Count;
        g.Out(0xCF8, 4, 0x8000_2000);
        Assert.Equal(0xFFFFFFFFUL, g.In(0xCFC, 4));
        Assert.Equal(0xFFFFFFFFUL, g.In(0x5B0, 4));
        Assert.Equal(ulong.MaxValue, g.Read(0xF000_1000, 8));
        Assert.Equal(seen, model.Seen.Count);

        // The hypervisor's own devices never go to the server.
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PORT, 0x20, 0x21));
        g.Out(0x21, 0x5A);
        Assert.Equal(0x5A, g.In(0x21));
        Assert.Equal(seen, model.Seen.Count);

        // Disabled, unmapped, destroyed: back to all ones.
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PORT, 0x5A4, 0x5A7, map: false));
        Assert.Equal(0xFFFFUL, g.In(0x5A4, 2));
        Assert.Equal(0x5A5AUL, g.In(0x5A0, 2));
        var destroy = new XenDmOpDestroyIoreqServer { Id = id };
        Assert.Equal(0, DmOp(g.Id, XEN_DMOP_destroy_ioreq_server, ref destroy));
        Assert.Equal(0xFFFFUL, g.In(0x5A0, 2));
        Assert.Equal(-Errno.ENOENT, SetState(g.Id, id, true));
    }

    [Fact]
    public void TheRtcKeepsItsClockAndLeavesTheCmosRamToTheDeviceModel()
    {
        var g = new HvmPlatformGuest(_host);
        g.Out(0x70, 0x3D);
        g.Out(0x71, 0x21);
        ushort id = CreateServer(g.Id);
        var model = new DeviceModel(_host, g.Domain.Arch.Ioreq.Get(id, 0, out _)!, g.Id);
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PORT, 0x70, 0x71));
        Assert.Equal(0, SetState(g.Id, id, true));

        // As Xen's vRTC: an index past the clock's registers (with the NMI bit) and the data port behind it are QEMU's,
        // where SeaBIOS finds the boot order QEMU wrote at 0x3D.
        g.Out(0x70, 0x80 | 0x3D);
        g.Out(0x71, 0x43);
        Assert.Equal(0x43, g.In(0x71));
        Assert.Equal(
            [(Ioreq.IOREQ_TYPE_PIO, 0x70UL, 1u, false, 0xBDUL), (Ioreq.IOREQ_TYPE_PIO, 0x71UL, 1u, false, 0x43UL), (Ioreq.IOREQ_TYPE_PIO, 0x71UL, 1u, true, 0UL)],
            model.Seen);
        // The clock's registers stay the hypervisor's: register D and the seconds never reach the model.
        g.Out(0x70, Rtc.RegD);
        Assert.Equal(Rtc.DVrt, g.In(0x71));
        g.Out(0x70, Rtc.RegSeconds);
        Assert.True(g.In(0x71) < 0x60);
        Assert.Equal(3, model.Seen.Count);

        // Without a device model the CMOS RAM is the hypervisor's own again, with what was written before.
        var destroy = new XenDmOpDestroyIoreqServer { Id = id };
        Assert.Equal(0, DmOp(g.Id, XEN_DMOP_destroy_ioreq_server, ref destroy));
        g.Out(0x70, 0x3D);
        Assert.Equal(0x21, g.In(0x71));
    }

    [Fact]
    [Trait("Feature", "x86/Multiple IOREQ servers")]
    public void TwoServersEachGetOnlyTheirOwnRanges()
    {
        var g = new HvmPlatformGuest(_host);
        ushort a = CreateServer(g.Id), b = CreateServer(g.Id);
        Assert.NotEqual(a, b);
        var modelA = new DeviceModel(_host, g.Domain.Arch.Ioreq.Get(a, 0, out _)!, g.Id);
        var modelB = new DeviceModel(_host, g.Domain.Arch.Ioreq.Get(b, 0, out _)!, g.Id);
        Assert.Equal(0, Map(g.Id, a, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PORT, 0x5A0, 0x5A7));
        Assert.Equal(0, Map(g.Id, a, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PCI, 3 << 3, 3 << 3));
        Assert.Equal(0, Map(g.Id, b, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PORT, 0x5B0, 0x5B7));
        Assert.Equal(0, Map(g.Id, b, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_MEMORY, 0xF100_0000, 0xF100_0FFF));
        Assert.Equal(0, Map(g.Id, b, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PCI, 4 << 3, 4 << 3));
        Assert.Equal(0, SetState(g.Id, a, true));
        Assert.Equal(0, SetState(g.Id, b, true));

        g.Out(0x5A0, 4, 0xAAAA);
        g.Out(0x5B0, 4, 0xBBBB);
        Assert.Equal(0xAAAAUL, g.In(0x5A0, 4));
        Assert.Equal(0xBBBBUL, g.In(0x5B0, 4));
        g.Write(0xF100_0008, 0x1234, 4);
        Assert.Equal(0x1234UL, g.Read(0xF100_0008, 4));
        g.Out(0xCF8, 4, 0x8000_1800); // 00:03.0 is A's
        Assert.Equal(0x5A5A5A5AUL, g.In(0xCFC, 4));
        g.Out(0xCF8, 4, 0x8000_2000); // 00:04.0 is B's
        Assert.Equal(0x5A5A5A5AUL, g.In(0xCFC, 4));
        Assert.All(modelA.Seen, x => Assert.True(x.Addr is >= 0x5A0 and <= 0x5A7 || x.Addr == (0x18UL << 32), $"A saw {x.Addr:x}"));
        Assert.All(modelB.Seen, x => Assert.True(x.Addr is >= 0x5B0 and <= 0x5B7 or 0xF100_0008 || x.Addr == (0x20UL << 32), $"B saw {x.Addr:x}"));
        Assert.Equal(3, modelA.Seen.Count);
        Assert.Equal(5, modelB.Seen.Count);

        // One server disabled: the other goes on, and the first one's ranges read all ones.
        Assert.Equal(0, SetState(g.Id, a, false));
        Assert.Equal(0xFFFFFFFFUL, g.In(0x5A0, 4));
        Assert.Equal(0xBBBBUL, g.In(0x5B0, 4));
    }

    [Fact]
    public void AVcpuWaitingOnAServerThatGoesAwayReadsAllOnes()
    {
        var g = new HvmPlatformGuest(_host);
        ushort id = CreateServer(g.Id);
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PORT, 0x300, 0x300));
        Assert.Equal(0, SetState(g.Id, id, true));
        var reader = Task.Run(() => g.In(0x300, 1));
        var server = g.Domain.Arch.Ioreq.Get(id, 0, out _)!;
        Assert.True(TestHosts.WaitUntil(() => (server.IoreqPage[0].StateDir & 0xF) == IoreqSlot.STATE_IOREQ_READY));
        Assert.False(reader.IsCompleted);
        var destroy = new XenDmOpDestroyIoreqServer { Id = id };
        Assert.Equal(0, DmOp(g.Id, XEN_DMOP_destroy_ioreq_server, ref destroy));
        Assert.True(reader.Wait(60_000));
        Assert.Equal(0xFFUL, reader.Result);
    }

    [Fact]
    public void ARepeatedAccessIsOneIoreqWithItsCountAndBuffer()
    {
        var g = new HvmPlatformGuest(_host);
        ushort id = CreateServer(g.Id);
        var model = new DeviceModel(_host, g.Domain.Arch.Ioreq.Get(id, 0, out _)!, g.Id);
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PORT, 0x1F0, 0x1F7));
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_MEMORY, 0xA0000, 0xBFFFF));
        Assert.Equal(0, SetState(g.Id, id, true));

        // REP INSW of a sector into RAM at 0x5000: one request, the buffer by guest-physical address.
        var ins = new VcpuExit { Reason = VcpuExitReason.Io, Port = 0x1F0, Size = 2, Count = 256, DataIsPointer = true, Data = 0x5000 };
        Assert.Equal(256UL, HvmIo.Repeated(g.Vcpu(), ins));
        Assert.Equal((256u, true, false, 0x1F0UL, 0x5000UL), Assert.Single(model.Repeated));
        Assert.Equal((Ioreq.IOREQ_TYPE_PIO, 0x1F0UL, 2u, true, 0x5000UL), Assert.Single(model.Seen));

        // REP MOVSB downwards from RAM into VGA memory; the model does only 10 of them, and the vCPU is told so.
        model.CountDone = 10;
        var movs = new VcpuExit { Reason = VcpuExitReason.Mmio, Address = 0xA0100, Size = 1, IsWrite = true, Count = 0x80,
            DataIsPointer = true, Backward = true, Data = 0x6080 };
        Assert.Equal(10UL, HvmIo.Repeated(g.Vcpu(), movs));
        Assert.Equal((0x80u, true, true, 0xA0100UL, 0x6080UL), model.Repeated[1]);

        // A span that leaves the server's range is not its: done here, an iteration at a time, reading all ones.
        int seen = model.Seen.Count;
        var outside = new VcpuExit { Reason = VcpuExitReason.Mmio, Address = 0xBFFF0, Size = 4, Count = 8, DataIsPointer = true, Data = 0x7000 };
        Assert.Equal(8UL, HvmIo.Repeated(g.Vcpu(), outside));
        Assert.Equal(seen + 4, model.Seen.Count); // the four inside the range went one by one
        Assert.Equal(2, model.Repeated.Count);
    }

    [Fact]
    public void ADeviceModelClaimingMoreIterationsThanAskedCrashesTheDomain()
    {
        var g = new HvmPlatformGuest(_host);
        ushort id = CreateServer(g.Id);
        var model = new DeviceModel(_host, g.Domain.Arch.Ioreq.Get(id, 0, out _)!, g.Id) { CountDone = 300 };
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PORT, 0x1F0, 0x1F7));
        Assert.Equal(0, SetState(g.Id, id, true));
        var ins = new VcpuExit { Reason = VcpuExitReason.Io, Port = 0x1F0, Size = 2, Count = 256, DataIsPointer = true, Data = 0x5000 };
        Assert.Equal(0UL, HvmIo.Repeated(g.Vcpu(), ins));
        Assert.Equal(XenSharp.Public.Sched.SHUTDOWN_crash, g.Domain.ShutdownReason);
    }

    [Fact]
    public void SingleVgaMemoryWritesGoOnTheBufferedRing()
    {
        var g = new HvmPlatformGuest(_host);
        ushort id = CreateServer(g.Id, bufioreq: IoreqServers.HVM_IOREQSRV_BUFIOREQ_ATOMIC);
        var server = g.Domain.Arch.Ioreq.Get(id, 0, out _)!;
        var model = new DeviceModel(_host, server, g.Id);
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_MEMORY, 0xA0000, 0xBFFFF));
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_MEMORY, 0xF000_0000, 0xF000_0FFF));
        Assert.Equal(0, SetState(g.Id, id, true));
        var ring = (BufferedIopage*)g.Domain.Host.Frames.PageAddress(server.BufIoreqMfn!.Value);

        g.Write(0xB8010, 0x5A, 1);
        g.Write(0xA0008, 0x1122_3344_5566_7788, 8);
        Assert.Empty(model.Seen); // nothing waited for
        Assert.Equal((0u, 3u), (ring->ReadPointer, ring->WritePointer));
        // buf_ioreq: type, size as log2 in bits 10-11, the address from bit 12, the data in the high word.
        Assert.Equal(Ioreq.IOREQ_TYPE_COPY | (0xB8010UL << 12) | (0x5AUL << 32), BufferedIopage.Slot(ring, 0));
        Assert.Equal(Ioreq.IOREQ_TYPE_COPY | (3UL << 10) | (0xA0008UL << 12) | (0x5566_7788UL << 32), BufferedIopage.Slot(ring, 1));
        Assert.Equal(Ioreq.IOREQ_TYPE_COPY | (3UL << 10) | (0xA0008UL << 12) | (0x1122_3344UL << 32), BufferedIopage.Slot(ring, 2));

        // Reads, and writes elsewhere, wait for the device model as before.
        g.Read(0xB8010, 1);
        g.Write(0xF000_0000, 1, 4);
        Assert.Equal(2, model.Seen.Count);

        // A full ring (511 slots) sends the next write synchronously.
        for (int i = 3; i < BufferedIopage.SlotCount; i++)
            g.Write(0xA0000 + (ulong)i, (ulong)i, 1);
        Assert.Equal(2, model.Seen.Count);
        g.Write(0xA1000, 0x77, 1);
        Assert.Equal((Ioreq.IOREQ_TYPE_COPY, 0xA1000UL, 1u, false, 0x77UL), model.Seen[2]);

        // Once the device model has read them all, the next write wraps and both pointers come back below 511.
        ring->ReadPointer = (uint)BufferedIopage.SlotCount;
        g.Write(0xA2000, 0x33, 1);
        Assert.Equal((0u, 1u), (ring->ReadPointer, ring->WritePointer));
        Assert.Equal(Ioreq.IOREQ_TYPE_COPY | (0xA2000UL << 12) | (0x33UL << 32), BufferedIopage.Slot(ring, 0));
    }

    [Fact]
    public void TheGuestCannotCloseItsServersEventChannel()
    {
        var g = new Guest(_host, vcpus: 1, type: DomainKind.Hvm);
        ushort id = CreateServer(g.Id);
        var server = g.Domain.Arch.Ioreq.Get(id, 0, out _)!;
        g.Write(Guest.Scratch, new EvtchnClose { Port = server.VcpuPort(0) });
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_event_channel_op, EventChannel.EVTCHNOP_close, Guest.Scratch));
        Assert.True(g.Domain.Evtchn.IsXenConsumer(server.VcpuPort(0)));
    }

    [Fact]
    public void ServerOperationsCheckTheirArguments()
    {
        var g = new HvmPlatformGuest(_host);
        ushort id = CreateServer(g.Id, bufioreq: 1);
        var info = new XenDmOpGetIoreqServerInfo { Id = id, Flags = XenDmOpGetIoreqServerInfo.XEN_DMOP_no_gfns };
        Assert.Equal(0, DmOp(g.Id, XEN_DMOP_get_ioreq_server_info, ref info));
        Assert.NotEqual(0u, info.BufioreqPort);
        info = new XenDmOpGetIoreqServerInfo { Id = id };
        Assert.Equal(-Errno.EOPNOTSUPP, DmOp(g.Id, XEN_DMOP_get_ioreq_server_info, ref info));
        info = new XenDmOpGetIoreqServerInfo { Id = id, Flags = 2 };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_get_ioreq_server_info, ref info));
        Assert.Equal(-Errno.EINVAL, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PORT, 0x10, 0x0F));
        Assert.Equal(-Errno.EINVAL, Map(g.Id, id, 3, 0, 1));
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_MEMORY, 0x1000, 0x1FFF));
        Assert.Equal(-Errno.EEXIST, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_MEMORY, 0x1800, 0x2800));
        Assert.Equal(-Errno.ENOENT, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_MEMORY, 0x1800, 0x2800, map: false));
        Assert.Equal(-Errno.ENOENT, Map(g.Id, (ushort)(id + 1), XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PORT, 0, 0));
        var bad = new XenDmOpCreateIoreqServer { HandleBufioreq = 3 };
        Assert.Equal(-Errno.EINVAL, DmOp(g.Id, XEN_DMOP_create_ioreq_server, ref bad));
        for (int i = 1; i < IoreqServers.MaxServers; i++)
            CreateServer(g.Id);
        var more = new XenDmOpCreateIoreqServer();
        Assert.Equal(-Errno.ENOSPC, DmOp(g.Id, XEN_DMOP_create_ioreq_server, ref more));

        // Another device model may not touch this one's server.
        var other = new Guest(_host, vcpus: 1, privileged: true);
        other.Write(Guest.Scratch, new XenDmOpBuf { H = Guest.Scratch + 0x100, Size = 32 });
        var op = new XenDmOp { Op = XEN_DMOP_set_ioreq_server_state };
        Unsafe.Write(op.U, new XenDmOpSetIoreqServerState { Id = id, Enabled = 1 });
        other.Write(Guest.Scratch + 0x100, op);
        Assert.Equal(-Errno.EPERM, other.Call(Xen.__HYPERVISOR_dm_op, g.Id, 1, Guest.Scratch));
    }

    [Fact]
    public void TheDelayPortsEndInTheHypervisorEvenWhenAServerClaimsThem()
    {
        var g = new HvmPlatformGuest(_host);
        ushort id = CreateServer(g.Id);
        var model = new DeviceModel(_host, g.Domain.Arch.Ioreq.Get(id, 0, out _)!, g.Id);
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PORT, 0x80, 0x8F));
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PORT, 0xED, 0xED));
        Assert.Equal(0, SetState(g.Id, id, true));

        // As under Xen, where the guest reaches 0x80 and 0xED directly: nothing there answers, and QEMU never hears.
        g.Out(0x80, 0x42);
        g.Out(0xED, 0x42);
        Assert.Equal(0xFF, g.In(0x80));
        Assert.Equal(0xFFFFUL, g.In(0xED, 2));
        Assert.Empty(model.Seen);
        // The port beside it is still the server's.
        g.Out(0x81, 0x42);
        Assert.Equal(0x42, g.In(0x81));
    }

    [Fact]
    public void ADeviceModelAnswersThroughTheDoorbellWordOfItsPort()
    {
        var g = new HvmPlatformGuest(_host);
        ushort id = CreateServer(g.Id);
        var server = g.Domain.Arch.Ioreq.Get(id, 0, out _)!;
        Assert.Equal(0, Map(g.Id, id, XenDmOpIoreqServerRange.XEN_DMOP_IO_RANGE_PORT, 0x300, 0x300));
        Assert.Equal(0, SetState(g.Id, id, true));
        Assert.Equal(0, _host.Dom0EvtchnBindInterdomain(g.Id, server.VcpuPort(0), () => { }, out uint port));
        Assert.Equal(0, _host.Dom0EvtchnAllocUnbound(g.Id, () => { }, out uint unrelated));
        uint* word = (uint*)NativeMemory.AllocZeroed(sizeof(uint));
        try
        {
            // Only a port bound to a server's vCPU port takes a doorbell.
            Assert.Null(_host.Dom0EvtchnDoorbell(unrelated, (nint)word));
            using (var bell = _host.Dom0EvtchnDoorbell(port, (nint)word))
            {
                Assert.NotNull(bell);
                for (int i = 0; i < 3; i++)
                {
                    var reader = Task.Run(() => g.In(0x300, 1));
                    ref var slot = ref server.IoreqPage[0];
                    Assert.True(TestHosts.WaitUntil(() => (Volatile.Read(ref server.IoreqPage[0].StateDir) & 0xF) == IoreqSlot.STATE_IOREQ_READY));
                    // The model answers and rings: the notified bit and a futex wake, no event channel send.
                    slot.Data = 0x30 + (ulong)i;
                    Volatile.Write(ref slot.StateDir, IoreqSlot.STATE_IORESP_READY);
                    Interlocked.Or(ref *word, IoreqServer.DoorbellNotified);
                    Futex.Wake(word);
                    Assert.True(reader.Wait(60_000));
                    Assert.Equal(0x30UL + (ulong)i, reader.Result);
                }
            }
            // Detached: the event channel is the way again.
            var late = Task.Run(() => g.In(0x300, 1));
            Assert.True(TestHosts.WaitUntil(() => (Volatile.Read(ref server.IoreqPage[0].StateDir) & 0xF) == IoreqSlot.STATE_IOREQ_READY));
            server.IoreqPage[0].Data = 0x77;
            Volatile.Write(ref server.IoreqPage[0].StateDir, IoreqSlot.STATE_IORESP_READY);
            Assert.Equal(0, _host.Dom0EvtchnSend(port));
            Assert.True(late.Wait(60_000));
            Assert.Equal(0x77UL, late.Result);
        }
        finally
        {
            NativeMemory.Free(word);
        }
    }

    [Fact]
    public void APostedIrqLevelDmOpSetsTheLineAndRefusesWhatTheHypercallWould()
    {
        var g = new HvmPlatformGuest(_host);
        var op = new XenDmOp { Op = XEN_DMOP_set_isa_irq_level };
        Unsafe.Write(op.U, new XenDmOpSetIsaIrqLevel { IsaIrq = 4, Level = 1 });
        var bytes = new ReadOnlySpan<byte>(&op, sizeof(XenDmOp));
        Assert.Equal(0, _dm.PostedDmOp(g.Id, bytes));
        g.Out(0x20, 0x0A); // OCW3: read the IRR
        Assert.Equal(0x10, g.In(0x20) & 0x10);

        Assert.Equal(-Errno.ESRCH, _dm.PostedDmOp(999, bytes));
        Assert.Equal(-Errno.EPERM, _dm.PostedDmOp(0, bytes));
        Assert.Equal(-Errno.EFAULT, _dm.PostedDmOp(g.Id, bytes[..4]));
        Unsafe.Write(op.U, new XenDmOpSetIsaIrqLevel { IsaIrq = 4, Level = 2 });
        Assert.Equal(-Errno.EINVAL, _dm.PostedDmOp(g.Id, new ReadOnlySpan<byte>(&op, sizeof(XenDmOp))));
        // Only the interrupt levels are posted; anything else needs its answer.
        op.Op = XEN_DMOP_nr_vcpus;
        Assert.Equal(-Errno.EOPNOTSUPP, _dm.PostedDmOp(g.Id, new ReadOnlySpan<byte>(&op, sizeof(XenDmOp))));
    }
}
