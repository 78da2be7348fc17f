using System.Buffers.Binary;
using System.Runtime.InteropServices;
using XenSharp.Backends.Block;
using XenSharp.Backends.Rings;
using XenSharp.Backends.Xenbus;
using XenSharp.Hypervisor;
using XenSharp.Public.Io;
using XenSharp.Store;
using XenSharp.Toolstack.Lifecycle;
using static XenSharp.Public.GrantTable;
using static XenSharp.Public.Io.Blkif;

namespace XenSharp.Toolstack.Tests.Backends;

/// <summary>
/// The PV block backend against a hand-driven blkfront: the test plays the guest through its real grant
/// table, event channels and memory, places requests on the ring before connecting (the backend serves
/// what is waiting when it connects) and reads the responses and the data back. Garbage requests fail one
/// by one; the device and the requests after them go on.
/// </summary>
public sealed unsafe class BlkifBackendTests : IDisposable
{
    private const ulong RingGfn = 0x100, DataGfn = 0x101;
    private const ulong IndirectGfn = 0x120;
    private const uint RingGref = 8, DataGref = 10, IndirectGref = 50; // data grants 10..25 → gfns 0x101..0x110
    private const int ImageBytes = 1 << 20;
    private readonly XenHypervisor _hv = new(new HypervisorOptions { MachineMemoryBytes = 64UL << 20, Pcpus = 1 });
    private readonly XenStored _xs = new();
    private readonly string _dir = Directory.CreateTempSubdirectory("xs-blkif").FullName;
    private readonly BackendRegistry _backends;
    private readonly ushort _dom;
    private readonly string _image;

    public BlkifBackendTests()
    {
        _dom = _hv.CreateDomain(new XenSharp.Hypervisor.DomainCreateConfig(XenSharp.Hypervisor.DomainKind.Pvh, 16 * 1024, 1));
        _hv.PopulatePhysmap(_dom, RingGfn, 0x21);
        _backends = new BackendRegistry(_hv.Dom0Services, _xs);
        _image = Path.Combine(_dir, "disk.img");
        var data = new byte[ImageBytes];
        for (int i = 0; i < data.Length; i++) data[i] = (byte)(i / 512 * 7 + i);
        File.WriteAllBytes(_image, data);
        _hv.SeedGrantEntry(_dom, IndirectGref, GTF_permit_access | GTF_readonly, 0, (uint)IndirectGfn);
        for (uint g = 0; g < 16; g++) _hv.SeedGrantEntry(_dom, DataGref + g, GTF_permit_access, 0, (uint)(DataGfn + g));
    }

    public void Dispose()
    {
        _backends.Dispose();
        _xs.Dispose();
        _hv.Dispose();
        Directory.Delete(_dir, true);
    }

    private DeviceAddress AddDisk(string mode = "w", string? target = null, int devId = 51712, string? directIoSafe = null)
    {
        var a = new DeviceAddress(DeviceKinds.Vbd, _dom, devId);
        var keys = new Dictionary<string, string>
        {
            ["params"] = target ?? _image, ["format"] = "raw", ["mode"] = mode, ["device-type"] = "disk",
        };
        if (directIoSafe is not null) keys["direct-io-safe"] = directIoSafe;
        DeviceLayout.Write(_xs, a, keys, null);
        return a;
    }

    private XenbusState BackendState(DeviceAddress a) => (XenbusState)int.Parse(_xs.Read($"{a.BackendPath}/state") ?? "0");

    private void WaitFor(DeviceAddress a, XenbusState s)
    {
        Wait.Until(() => BackendState(a) == s);
        Assert.Equal(s, BackendState(a));
    }

    /// <summary>blkfront's connect: grant the ring, offer a port, publish ring-ref, event-channel and protocol, Initialised.</summary>
    private void FrontendConnects(DeviceAddress a, string protocol = XEN_IO_PROTO_ABI_X86_64)
    {
        _hv.SeedGrantEntry(_dom, RingGref, GTF_permit_access, 0, (uint)RingGfn);
        uint port = _hv.Dom0Services.AllocUnboundEventChannel(_dom);
        _xs.Write($"{a.FrontendPath}/ring-ref", RingGref.ToString());
        _xs.Write($"{a.FrontendPath}/event-channel", port.ToString());
        _xs.Write($"{a.FrontendPath}/protocol", protocol);
        _xs.Write($"{a.FrontendPath}/state", ((int)XenbusState.Initialised).ToString());
    }

    private static BlkifRequest Rw(byte op, ulong id, ulong sector, params (uint Gref, byte First, byte Last)[] segs)
    {
        var r = new BlkifRequest { Operation = op, Id = id, SectorNumber = sector, NrSegments = (byte)segs.Length };
        for (int i = 0; i < Math.Min(segs.Length, BLKIF_MAX_SEGMENTS_PER_REQUEST); i++)
            r.Seg[i] = new BlkifRequestSegment { Gref = segs[i].Gref, FirstSect = segs[i].First, LastSect = segs[i].Last };
        return r;
    }

    private const int MaxIndirectSegmentsPlusOne = BlkifBackend.MaxIndirectSegments + 1;

    /// <summary>An indirect request whose segments the test has placed in the indirect page.</summary>
    private static BlkifRequest Indirect(byte op, ulong id, ulong sector, int nr)
    {
        var r = new BlkifRequest();
        ref var i = ref System.Runtime.CompilerServices.Unsafe.As<BlkifRequest, BlkifRequestIndirect>(ref r);
        i.Operation = BLKIF_OP_INDIRECT;
        i.IndirectOp = op;
        i.Id = id;
        i.SectorNumber = sector;
        i.NrSegments = (ushort)nr;
        i.IndirectGrefs[0] = IndirectGref;
        return r;
    }

    private static BlkifRequest Discard(ulong id, ulong sector, ulong count)
    {
        var r = new BlkifRequest();
        ref var d = ref System.Runtime.CompilerServices.Unsafe.As<BlkifRequest, BlkifRequestDiscard>(ref r);
        d.Operation = BLKIF_OP_DISCARD;
        d.Id = id;
        d.SectorNumber = sector;
        d.NrSectors = count;
        return r;
    }

    /// <summary>Segments in the indirect page: each a whole data page, grants 10.. in order.</summary>
    private void PlaceIndirectSegments(int nr)
    {
        var page = new byte[4096];
        for (int k = 0; k < nr; k++)
            MemoryMarshal.Write(page.AsSpan(k * 8), new BlkifRequestSegment { Gref = DataGref + (uint)k, FirstSect = 0, LastSect = 7 });
        _hv.WriteGuestMemory(_dom, IndirectGfn * 4096, page);
    }

    /// <summary>Writes the requests into a fresh shared ring page in guest memory.</summary>
    private void PlaceRequests<TReq, TRsp>(IEnumerable<TReq> requests) where TReq : unmanaged where TRsp : unmanaged =>
        PlaceRing<TReq, TRsp>([RingGfn], requests);

    /// <summary>Writes the requests into a fresh ring whose pages, in order, are the guest frames <paramref name="gfns"/>.</summary>
    private void PlaceRing<TReq, TRsp>(ulong[] gfns, IEnumerable<TReq> requests) where TReq : unmanaged where TRsp : unmanaged
    {
        var ring = new byte[gfns.Length * 4096];
        fixed (byte* p = ring)
        {
            SharedRingLayout<TReq, TRsp>.Init(ring);
            var front = new FrontRing<TReq, TRsp>(p, ring.Length);
            foreach (var r in requests) front.NextRequest() = r;
            front.PushRequestsAndCheckNotify();
        }
        for (int i = 0; i < gfns.Length; i++) _hv.WriteGuestMemory(_dom, gfns[i] * 4096, ring.AsSpan(i * 4096, 4096));
    }

    /// <summary>Waits until <paramref name="n"/> responses are published and returns them.</summary>
    private List<TRsp> Responses<TReq, TRsp>(int n) where TReq : unmanaged where TRsp : unmanaged =>
        RingResponses<TReq, TRsp>([RingGfn], n);

    private List<TRsp> RingResponses<TReq, TRsp>(ulong[] gfns, int n) where TReq : unmanaged where TRsp : unmanaged
    {
        var ring = new byte[gfns.Length * 4096];
        Wait.Until(() =>
        {
            _hv.ReadGuestMemory(_dom, gfns[0] * 4096, ring.AsSpan(0, 4096));
            return BinaryPrimitives.ReadUInt32LittleEndian(ring.AsSpan(Ring.OffsetRspProd)) >= n;
        });
        for (int i = 0; i < gfns.Length; i++) _hv.ReadGuestMemory(_dom, gfns[i] * 4096, ring.AsSpan(i * 4096, 4096));
        var list = new List<TRsp>();
        fixed (byte* p = ring)
        {
            var front = new FrontRing<TReq, TRsp>(p, ring.Length, start: 0);
            while (front.TryTakeResponse(out var r)) list.Add(r);
        }
        Assert.Equal(n, list.Count);
        return list;
    }

    private byte[] GuestPage(ulong gfn)
    {
        var b = new byte[4096];
        _hv.ReadGuestMemory(_dom, gfn * 4096, b);
        return b;
    }

    private BlkifBackend Backend(DeviceAddress a) => Assert.IsType<BlkifBackend>(_backends.Find(a));

    /// <summary>Plays xenpaging as Domain-0 through its hypercalls: enables the domain's paging ring at
    /// <paramref name="ringGfn"/> and pages <paramref name="gfn"/> out (nominate, evict). Returns the pager's
    /// hypercall context and buffer (the caller frees both).</summary>
    internal static Dom0HypercallContext PageOut(XenHypervisor hv, ushort dom, ulong ringGfn, ulong gfn, out byte* buffer)
    {
        const int Bytes = 3 * 4096;
        buffer = (byte*)NativeMemory.AlignedAlloc(Bytes, 4096);
        new Span<byte>(buffer, Bytes).Clear();
        ulong at = (ulong)buffer;
        var calls = hv.OpenDom0Hypercalls((nint)buffer, at, Bytes);
        *(XenSharp.Public.Hvm.XenHvmParam*)buffer = new() { Domid = dom, Index = XenSharp.Public.Hvm.Params.HVM_PARAM_PAGING_RING_PFN, Value = ringGfn };
        Assert.Equal(0, calls.Hypercall(XenSharp.Public.Xen.__HYPERVISOR_hvm_op, XenSharp.Public.Hvm.HvmOp.HVMOP_set_param, at));
        var domctl = new XenSharp.Public.XenDomctl
        {
            Cmd = XenSharp.Public.VmEvent.XEN_DOMCTL_vm_event_op, InterfaceVersion = XenSharp.Public.Domctl.XEN_DOMCTL_INTERFACE_VERSION, Domain = dom,
        };
        domctl.As<XenSharp.Public.XenDomctlVmEventOp>() = new() { Op = XenSharp.Public.VmEvent.XEN_VM_EVENT_ENABLE, Mode = XenSharp.Public.VmEvent.XEN_DOMCTL_VM_EVENT_OP_PAGING };
        *(XenSharp.Public.XenDomctl*)buffer = domctl;
        Assert.Equal(0, calls.Hypercall(XenSharp.Public.Xen.__HYPERVISOR_domctl, at));
        foreach (byte op in new[] { XenSharp.Public.MemPaging.XENMEM_paging_op_nominate, XenSharp.Public.MemPaging.XENMEM_paging_op_evict })
        {
            *(XenSharp.Public.XenMemPagingOp*)buffer = new() { Op = op, Domain = dom, Gfn = gfn };
            Assert.Equal(0, calls.Hypercall(XenSharp.Public.Xen.__HYPERVISOR_memory_op, (ulong)XenSharp.Public.MemPaging.XENMEM_paging_op, at));
        }
        return calls;
    }

    /// <summary>The pager loads <paramref name="gfn"/> back (prep), with the zeroed page of its buffer as contents.</summary>
    internal static void PageIn(Dom0HypercallContext calls, byte* buffer, ushort dom, ulong gfn)
    {
        ulong at = (ulong)buffer;
        *(XenSharp.Public.XenMemPagingOp*)buffer = new() { Op = XenSharp.Public.MemPaging.XENMEM_paging_op_prep, Domain = dom, Gfn = gfn, Buffer = at + 8192 };
        Assert.Equal(0, calls.Hypercall(XenSharp.Public.Xen.__HYPERVISOR_memory_op, (ulong)XenSharp.Public.MemPaging.XENMEM_paging_op, at));
    }

    [Fact]
    public void AReadIntoAPagedOutPageWaitsForThePagerAndSucceeds()
    {
        // The read's data page is paged out: the grant copy meets GNTST_eagain, and the backend retries (as Linux's
        // gnttab_batch_copy does) until the pager has loaded the page back.
        var calls = PageOut(_hv, _dom, RingGfn + 0x18, DataGfn, out byte* buffer);
        try
        {
            PlaceRequests<BlkifRequest, BlkifResponse>([Rw(BLKIF_OP_READ, 1, 8, (DataGref, 0, 7))]);
            var a = AddDisk();
            WaitFor(a, XenbusState.InitWait);
            FrontendConnects(a);
            WaitFor(a, XenbusState.Connected);
            Thread.Sleep(200);
            PageIn(calls, buffer, _dom, DataGfn);
            var rsp = Responses<BlkifRequest, BlkifResponse>(1);
            Assert.Equal(BLKIF_RSP_OKAY, rsp[0].Status);
            Assert.Equal(File.ReadAllBytes(_image).AsSpan(8 * 512, 4096).ToArray(), GuestPage(DataGfn));
        }
        finally
        {
            calls.Dispose();
            NativeMemory.AlignedFree(buffer);
        }
    }

    [Fact]
    public void TheBackendDescribesTheImageBeforeTheFrontendConnects()
    {
        var a = AddDisk(mode: "r");
        WaitFor(a, XenbusState.InitWait);
        Assert.Equal((ImageBytes / 512).ToString(), _xs.Read($"{a.BackendPath}/sectors"));
        Assert.Equal(VDISK_READONLY.ToString(), _xs.Read($"{a.BackendPath}/info"));
        Assert.Equal("512", _xs.Read($"{a.BackendPath}/sector-size"));
        Assert.Equal("512", _xs.Read($"{a.BackendPath}/physical-sector-size"));
        Assert.Equal("1", _xs.Read($"{a.BackendPath}/feature-flush-cache"));
        Assert.Equal("0", _xs.Read($"{a.BackendPath}/feature-discard")); // read-only: nothing to discard
        Assert.Equal(BlkifBackend.MaxIndirectSegments.ToString(), _xs.Read($"{a.BackendPath}/feature-max-indirect-segments"));
    }

    [Fact]
    public void ReadsWritesAndFlushesReachTheImageAndGarbageFailsOnlyItsOwnRequest()
    {
        byte[] pattern = new byte[4096];
        Array.Fill(pattern, (byte)0xAB);
        _hv.WriteGuestMemory(_dom, (DataGfn + 1) * 4096, pattern);
        var requests = new[]
        {
            Rw(BLKIF_OP_READ, 1, 0, (DataGref, 0, 7)),                         // sectors 0..7 → page 0x101
            Rw(BLKIF_OP_WRITE, 2, 16, (DataGref + 1, 2, 5)),                   // part of page 0x102 → sectors 16..19
            new BlkifRequest { Operation = BLKIF_OP_FLUSH_DISKCACHE, Id = 3 },
            new BlkifRequest { Operation = 42, Id = 4 },                       // unknown operation
            new BlkifRequest { Operation = BLKIF_OP_READ, Id = 5, NrSegments = 12 }, // more than 11 segments
            Rw(BLKIF_OP_READ, 6, 0, (DataGref, 5, 3)),                         // first_sect > last_sect
            Rw(BLKIF_OP_READ, 7, 0, (DataGref, 0, 8)),                         // last_sect beyond the page
            Rw(BLKIF_OP_READ, 8, ImageBytes / 512 - 4, (DataGref, 0, 7)),      // runs off the end of the disk
            Rw(BLKIF_OP_READ, 9, 0, (999, 0, 7)),                              // a reference never granted
            new BlkifRequest { Operation = BLKIF_OP_WRITE, Id = 10, NrSegments = 0 },
            Indirect(BLKIF_OP_READ, 11, 0, MaxIndirectSegmentsPlusOne),         // more indirect segments than offered
            Rw(BLKIF_OP_READ, 12, 24, (DataGref + 2, 0, 7)),                   // sectors 24..31 → page 0x103
            Discard(13, 256, 16),                                              // 8 KiB at 128 KiB
            Discard(14, ImageBytes / 512 - 8, 16),                             // runs off the end of the disk
        };
        PlaceRequests<BlkifRequest, BlkifResponse>(requests);
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a);
        WaitFor(a, XenbusState.Connected);
        // Requests are served side by side and answered as they finish: order by id.
        var rsp = Responses<BlkifRequest, BlkifResponse>(requests.Length).OrderBy(r => r.Id).ToList();

        Assert.Equal(requests.Select(r => r.Id), rsp.Select(r => r.Id));
        // An indirect request is answered as the read or write it carries.
        Assert.Equal(requests.Select(r => r.Operation == BLKIF_OP_INDIRECT ? BLKIF_OP_READ : r.Operation), rsp.Select(r => r.Operation));
        Assert.Equal(new short[] { 0, 0, 0, -2, -1, -1, -1, -1, -1, -1, -1, 0, 0, -1 }, rsp.Select(r => r.Status));

        byte[] file = File.ReadAllBytes(_image);
        Assert.Equal(file.AsSpan(0, 4096).ToArray(), GuestPage(DataGfn));
        Assert.Equal(pattern.AsSpan(2 * 512, 4 * 512).ToArray(), file.AsSpan(16 * 512, 4 * 512).ToArray());
        Assert.Equal(file.AsSpan(24 * 512, 4096).ToArray(), GuestPage(DataGfn + 2));

        var stats = Backend(a).Statistics;
        Assert.Equal(1, stats.FlushRequests);
        Assert.Equal(8, stats.FailedRequests);
        Assert.Equal(2, stats.DiscardRequests);
        Assert.Equal(1, stats.UnsupportedRequests);
        Assert.Equal(XenbusState.Connected, BackendState(a));
        Assert.Null(_xs.Read($"{a.ErrorPath}/error"));
    }

    [Fact]
    public void IndirectRequestsMoveMoreThanElevenPages()
    {
        const int Pages = 16;
        PlaceIndirectSegments(Pages);
        byte[] written = new byte[Pages * 4096];
        Random.Shared.NextBytes(written);
        _hv.WriteGuestMemory(_dom, DataGfn * 4096, written);
        // Write 16 pages at sector 64, then (a barrier between: requests run side by side) read the 16
        // pages at sector 0 over them.
        PlaceRequests<BlkifRequest, BlkifResponse>([Indirect(BLKIF_OP_WRITE, 1, 64, Pages),
            new BlkifRequest { Operation = BLKIF_OP_WRITE_BARRIER, Id = 2 }, Indirect(BLKIF_OP_READ, 3, 0, Pages)]);
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a);
        var rsp = Responses<BlkifRequest, BlkifResponse>(3).OrderBy(r => r.Id).ToList();
        Assert.Equal(new short[] { BLKIF_RSP_OKAY, BLKIF_RSP_OKAY, BLKIF_RSP_OKAY }, rsp.Select(r => r.Status));
        Assert.Equal(new[] { BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_OP_READ }, rsp.Select(r => r.Operation));
        byte[] file = File.ReadAllBytes(_image);
        Assert.Equal(written, file.AsSpan(64 * 512, Pages * 4096).ToArray());
        var back = new byte[Pages * 4096];
        _hv.ReadGuestMemory(_dom, DataGfn * 4096, back);
        Assert.Equal(file.AsSpan(0, Pages * 4096).ToArray(), back);
    }

    [Fact]
    public void AReadOnlyDiskRefusesWritesAndKeepsTheImage()
    {
        byte[] before = File.ReadAllBytes(_image);
        _hv.WriteGuestMemory(_dom, DataGfn * 4096, new byte[4096]);
        var requests = new[] { Rw(BLKIF_OP_WRITE, 1, 0, (DataGref, 0, 7)), Rw(BLKIF_OP_READ, 2, 8, (DataGref + 1, 0, 7)) };
        PlaceRequests<BlkifRequest, BlkifResponse>(requests);
        var a = AddDisk(mode: "r");
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a);
        var rsp = Responses<BlkifRequest, BlkifResponse>(2).OrderBy(r => r.Id).ToList();
        Assert.Equal(new short[] { BLKIF_RSP_ERROR, BLKIF_RSP_OKAY }, rsp.Select(r => r.Status));
        Assert.Equal(before, File.ReadAllBytes(_image));
        Assert.Equal(before.AsSpan(8 * 512, 4096).ToArray(), GuestPage(DataGfn + 1));
    }

    [Fact]
    public void A32BitFrontendIsServedInItsOwnLayout()
    {
        var r = new BlkifRequest32 { Operation = BLKIF_OP_READ, Id = 0x1122334455667788, SectorNumber = 24, NrSegments = 2 };
        r.Seg[0] = new BlkifRequestSegment { Gref = DataGref, FirstSect = 0, LastSect = 7 };
        r.Seg[1] = new BlkifRequestSegment { Gref = DataGref + 1, FirstSect = 0, LastSect = 0 };
        PlaceRequests<BlkifRequest32, BlkifResponse32>([r]);
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a, XEN_IO_PROTO_ABI_X86_32);
        var rsp = Responses<BlkifRequest32, BlkifResponse32>(1);
        Assert.Equal(0x1122334455667788UL, rsp[0].Id);
        Assert.Equal(BLKIF_RSP_OKAY, rsp[0].Status);
        byte[] file = File.ReadAllBytes(_image);
        Assert.Equal(file.AsSpan(24 * 512, 4096).ToArray(), GuestPage(DataGfn));
        Assert.Equal(file.AsSpan(32 * 512, 512).ToArray(), GuestPage(DataGfn + 1).AsSpan(0, 512).ToArray());
    }

    [Fact]
    public void ClosingReleasesTheImageAndTheFrontendCanConnectAgain()
    {
        PlaceRequests<BlkifRequest, BlkifResponse>([Rw(BLKIF_OP_READ, 1, 0, (DataGref, 0, 7))]);
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a);
        Assert.Single(Responses<BlkifRequest, BlkifResponse>(1));
        Assert.NotNull(Backend(a).Image);

        _xs.Write($"{a.FrontendPath}/state", ((int)XenbusState.Closing).ToString());
        WaitFor(a, XenbusState.Closing);
        _xs.Write($"{a.FrontendPath}/state", ((int)XenbusState.Closed).ToString());
        WaitFor(a, XenbusState.Closed);
        Assert.Null(Backend(a).Image);

        // The driver comes back with a fresh ring on the same page: the image is opened again and served.
        PlaceRequests<BlkifRequest, BlkifResponse>([Rw(BLKIF_OP_READ, 7, 8, (DataGref + 1, 0, 7))]);
        _xs.Write($"{a.FrontendPath}/state", ((int)XenbusState.Initialising).ToString());
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a);
        WaitFor(a, XenbusState.Connected);
        var rsp = Responses<BlkifRequest, BlkifResponse>(1);
        Assert.Equal((7UL, BLKIF_RSP_OKAY), (rsp[0].Id, rsp[0].Status));
        Assert.Equal(File.ReadAllBytes(_image).AsSpan(8 * 512, 4096).ToArray(), GuestPage(DataGfn + 1));
        Assert.NotNull(Backend(a).Image);
    }

    [Fact]
    public void AMissingImageEndsTheDeviceWithItsName()
    {
        string missing = Path.Combine(_dir, "nope.img");
        var a = AddDisk(target: missing);
        WaitFor(a, XenbusState.Closing);
        Assert.Contains(missing, _xs.Read($"{a.ErrorPath}/error"));
    }

    [Fact]
    public void AnUnknownProtocolEndsTheDevice()
    {
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a, "pdp11-abi");
        WaitFor(a, XenbusState.Closing);
        Assert.Contains("pdp11-abi", _xs.Read($"{a.ErrorPath}/error"));
    }

    // ---- transport: rings, queues, grants kept mapped, barriers ----

    private const ulong ExtraGfn = 0x200; // 0x200..0x21f, populated by the tests that use them

    private uint GrantRing(uint gref, ulong gfn)
    {
        _hv.SeedGrantEntry(_dom, gref, GTF_permit_access, 0, (uint)gfn);
        return gref;
    }

    /// <summary>blkfront's connect with the given keys (relative to the frontend directory), then Initialised.</summary>
    private void FrontendConnectsWith(DeviceAddress a, params (string Key, string Value)[] keys)
    {
        foreach (var (k, v) in keys) _xs.Write($"{a.FrontendPath}/{k}", v);
        _xs.Write($"{a.FrontendPath}/protocol", XEN_IO_PROTO_ABI_X86_64);
        _xs.Write($"{a.FrontendPath}/state", ((int)XenbusState.Initialised).ToString());
    }

    private string Port() => _hv.Dom0Services.AllocUnboundEventChannel(_dom).ToString();

    [Fact]
    public void TheBackendOffersQueuesMultiPageRingsPersistentGrantsAndBarriers()
    {
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        Assert.Equal(BlkifBackend.MaxRingPageOrder.ToString(), _xs.Read($"{a.BackendPath}/max-ring-page-order"));
        Assert.Equal(Math.Min(4, Environment.ProcessorCount).ToString(), _xs.Read($"{a.BackendPath}/multi-queue-max-queues"));
        Assert.Equal("1", _xs.Read($"{a.BackendPath}/feature-persistent"));
        Assert.Equal("1", _xs.Read($"{a.BackendPath}/feature-barrier"));
    }

    [Fact]
    public void AFullRingIsServedWithEveryRequestAnsweredOnce()
    {
        // 32 requests (the single page's ring) on disjoint ranges: writes from page k to sector 512 + 8k,
        // reads of sector 8k into page k+16.
        var requests = new List<BlkifRequest>();
        var written = new byte[16 * 4096];
        Random.Shared.NextBytes(written);
        _hv.WriteGuestMemory(_dom, DataGfn * 4096, written);
        for (uint g = 16; g < 32; g++) _hv.SeedGrantEntry(_dom, DataGref + g, GTF_permit_access, 0, (uint)(ExtraGfn + g - 16));
        _hv.PopulatePhysmap(_dom, ExtraGfn, 0x20);
        for (int k = 0; k < 16; k++)
        {
            requests.Add(Rw(BLKIF_OP_WRITE, (ulong)(2 * k), 512 + 8 * (ulong)k, (DataGref + (uint)k, 0, 7)));
            requests.Add(Rw(BLKIF_OP_READ, (ulong)(2 * k + 1), 8 * (ulong)k, (DataGref + 16 + (uint)k, 0, 7)));
        }
        PlaceRequests<BlkifRequest, BlkifResponse>(requests);
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a);
        var rsp = Responses<BlkifRequest, BlkifResponse>(32);
        Assert.Equal(Enumerable.Range(0, 32).Select(i => (ulong)i), rsp.Select(r => r.Id).Order());
        Assert.All(rsp, r => Assert.Equal(BLKIF_RSP_OKAY, r.Status));
        byte[] file = File.ReadAllBytes(_image);
        Assert.Equal(written, file.AsSpan(512 * 512, written.Length).ToArray());
        var read = new byte[16 * 4096];
        _hv.ReadGuestMemory(_dom, ExtraGfn * 4096, read);
        Assert.Equal(file.AsSpan(0, read.Length).ToArray(), read);
        Assert.Equal(16, Backend(a).Statistics.WriteRequests);
    }

    [Fact]
    public void AMultiPageRingIsMappedAsOneRingAcrossScatteredPages()
    {
        _hv.PopulatePhysmap(_dom, ExtraGfn, 0x20);
        ulong[] gfns = [ExtraGfn + 3, ExtraGfn, ExtraGfn + 6, ExtraGfn + 1]; // order 2, not in frame order
        // More requests than one page holds, so entries straddle the pages. Each reads the sector range
        // of its data page, so the pages' contents do not depend on the order the reads finish in.
        var requests = Enumerable.Range(0, 100)
            .Select(i => Rw(BLKIF_OP_READ, (ulong)i, 8 * (ulong)(i % 16), (DataGref + (uint)(i % 16), 0, 7))).ToList();
        PlaceRing<BlkifRequest, BlkifResponse>(gfns, requests);
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        var keys = new List<(string, string)> { ("ring-page-order", "2"), ("event-channel", Port()) };
        for (int i = 0; i < gfns.Length; i++) keys.Add(($"ring-ref{i}", GrantRing(100 + (uint)i, gfns[i]).ToString()));
        FrontendConnectsWith(a, [.. keys]);
        var rsp = RingResponses<BlkifRequest, BlkifResponse>(gfns, 100);
        Assert.Equal(Enumerable.Range(0, 100).Select(i => (ulong)i), rsp.Select(r => r.Id).Order());
        Assert.All(rsp, r => Assert.Equal((BLKIF_OP_READ, BLKIF_RSP_OKAY), (r.Operation, r.Status)));
        Assert.Equal(4, Backend(a).RingPages);
        var read = new byte[16 * 4096];
        _hv.ReadGuestMemory(_dom, DataGfn * 4096, read);
        Assert.Equal(File.ReadAllBytes(_image).AsSpan(0, read.Length).ToArray(), read);
    }

    [Fact]
    public void EachQueueHasItsOwnRingAndEventChannel()
    {
        int n = BlkifBackend.MaxQueues;
        _hv.PopulatePhysmap(_dom, ExtraGfn, 0x20);
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        var keys = new List<(string, string)> { ("multi-queue-num-queues", n.ToString()), ("ring-page-order", "1") };
        for (int q = 0; q < n; q++)
        {
            ulong[] gfns = [ExtraGfn + 2 * (ulong)q, ExtraGfn + 2 * (ulong)q + 1];
            // Queue q reads sectors 8q.. into data page q.
            PlaceRing<BlkifRequest, BlkifResponse>(gfns, [Rw(BLKIF_OP_READ, 100 + (ulong)q, 8 * (ulong)q, (DataGref + (uint)q, 0, 7))]);
            keys.Add(($"queue-{q}/ring-ref0", GrantRing(100 + 2 * (uint)q, gfns[0]).ToString()));
            keys.Add(($"queue-{q}/ring-ref1", GrantRing(101 + 2 * (uint)q, gfns[1]).ToString()));
            keys.Add(($"queue-{q}/event-channel", Port()));
        }
        FrontendConnectsWith(a, [.. keys]);
        WaitFor(a, XenbusState.Connected);
        byte[] file = File.ReadAllBytes(_image);
        for (int q = 0; q < n; q++)
        {
            var rsp = RingResponses<BlkifRequest, BlkifResponse>([ExtraGfn + 2 * (ulong)q, ExtraGfn + 2 * (ulong)q + 1], 1);
            Assert.Equal((100 + (ulong)q, BLKIF_RSP_OKAY), (rsp[0].Id, rsp[0].Status));
            Assert.Equal(file.AsSpan(q * 4096, 4096).ToArray(), GuestPage(DataGfn + (ulong)q));
        }
        Assert.Equal(n, Backend(a).QueueCount);
    }

    [Fact]
    public void PersistentGrantsStayMappedUntilTheFrontendCloses()
    {
        byte[] pattern = new byte[4096];
        Array.Fill(pattern, (byte)0x5C);
        _hv.WriteGuestMemory(_dom, (DataGfn + 3) * 4096, pattern);
        // The indirect page (granted read-only, so it cannot be kept writable) names grants 15 and 16.
        var page = new byte[4096];
        MemoryMarshal.Write(page, new BlkifRequestSegment { Gref = DataGref + 5, FirstSect = 0, LastSect = 7 });
        MemoryMarshal.Write(page.AsSpan(8), new BlkifRequestSegment { Gref = DataGref + 6, FirstSect = 0, LastSect = 7 });
        _hv.WriteGuestMemory(_dom, IndirectGfn * 4096, page);
        var requests = new[]
        {
            Rw(BLKIF_OP_WRITE, 1, 40, (DataGref + 3, 0, 7)),
            Rw(BLKIF_OP_READ, 2, 0, (DataGref, 0, 7), (DataGref + 1, 0, 3)),
            Indirect(BLKIF_OP_READ, 3, 64, 2),
            Rw(BLKIF_OP_READ, 4, 0, (999, 0, 7)), // never granted: neither mapped nor copied
        };
        PlaceRequests<BlkifRequest, BlkifResponse>(requests);
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        _xs.Write($"{a.FrontendPath}/feature-persistent", "1");
        FrontendConnects(a);
        var rsp = Responses<BlkifRequest, BlkifResponse>(4).OrderBy(r => r.Id).ToList();
        Assert.Equal(new short[] { 0, 0, 0, -1 }, rsp.Select(r => r.Status));
        byte[] file = File.ReadAllBytes(_image);
        Assert.Equal(pattern, file.AsSpan(40 * 512, 4096).ToArray());
        Assert.Equal(file.AsSpan(0, 4096).ToArray(), GuestPage(DataGfn));
        Assert.Equal(file.AsSpan(4096, 2048).ToArray(), GuestPage(DataGfn + 1).AsSpan(0, 2048).ToArray());
        Assert.Equal(file.AsSpan(64 * 512, 4096).ToArray(), GuestPage(DataGfn + 5));
        Assert.Equal(file.AsSpan(72 * 512, 4096).ToArray(), GuestPage(DataGfn + 6));
        Assert.Equal(5, Backend(a).PersistentGrants); // 10, 11, 13, 15, 16

        _xs.Write($"{a.FrontendPath}/state", ((int)XenbusState.Closing).ToString());
        WaitFor(a, XenbusState.Closing);
        Assert.Equal(0, Backend(a).PersistentGrants);
    }

    [Fact]
    public void ABarrierWaitsForTheWritesBeforeItAndHoldsBackTheRequestsAfterIt()
    {
        byte[] one = new byte[4096], two = new byte[4096];
        Array.Fill(one, (byte)0x11);
        Array.Fill(two, (byte)0x22);
        _hv.WriteGuestMemory(_dom, (DataGfn + 4) * 4096, one);
        _hv.WriteGuestMemory(_dom, (DataGfn + 5) * 4096, two);
        var barrier = Rw(BLKIF_OP_WRITE_BARRIER, 2, 200, (DataGref + 5, 0, 7));
        var requests = new[]
        {
            Rw(BLKIF_OP_WRITE, 1, 100, (DataGref + 4, 0, 7)),
            barrier,
            Rw(BLKIF_OP_READ, 3, 100, (DataGref + 6, 0, 7)),
            Rw(BLKIF_OP_READ, 4, 200, (DataGref + 7, 0, 7)),
            new BlkifRequest { Operation = BLKIF_OP_WRITE_BARRIER, Id = 5 }, // no data: a drain and a flush
        };
        PlaceRequests<BlkifRequest, BlkifResponse>(requests);
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a);
        var rsp = Responses<BlkifRequest, BlkifResponse>(5).OrderBy(r => r.Id).ToList();
        Assert.All(rsp, r => Assert.Equal(BLKIF_RSP_OKAY, r.Status));
        Assert.Equal(BLKIF_OP_WRITE_BARRIER, rsp[1].Operation);
        Assert.Equal(one, GuestPage(DataGfn + 6));
        Assert.Equal(two, GuestPage(DataGfn + 7));
        Assert.Equal(2, Backend(a).Statistics.BarrierRequests);
        byte[] file = File.ReadAllBytes(_image);
        Assert.Equal(two, file.AsSpan(200 * 512, 4096).ToArray());
    }

    [Theory]
    [InlineData("ring-page-order", "5")]
    [InlineData("ring-page-order", "two")]
    [InlineData("ring-page-order", "1")] // ring-ref0 and ring-ref1 missing
    [InlineData("multi-queue-num-queues", "0")]
    [InlineData("multi-queue-num-queues", "65")]
    [InlineData("multi-queue-num-queues", "-1")]
    [InlineData("multi-queue-num-queues", "2")] // no queue-N directories
    public void GarbageTransportKeysFailOnlyThatDevice(string key, string value)
    {
        if (key == "multi-queue-num-queues" && value == "2" && BlkifBackend.MaxQueues < 2) value = "3";
        _hv.PopulatePhysmap(_dom, ExtraGfn, 0x20);
        var bad = AddDisk();
        var good = AddDisk(devId: 51728);
        WaitFor(bad, XenbusState.InitWait);
        WaitFor(good, XenbusState.InitWait);
        _xs.Write($"{bad.FrontendPath}/{key}", value);
        FrontendConnects(bad);
        WaitFor(bad, XenbusState.Closing);
        Assert.NotNull(_xs.Read($"{bad.ErrorPath}/error"));

        PlaceRing<BlkifRequest, BlkifResponse>([ExtraGfn], [Rw(BLKIF_OP_READ, 9, 8, (DataGref, 0, 7))]);
        FrontendConnectsWith(good, ("ring-ref", GrantRing(120, ExtraGfn).ToString()), ("event-channel", Port()));
        WaitFor(good, XenbusState.Connected);
        Assert.Equal(BLKIF_RSP_OKAY, RingResponses<BlkifRequest, BlkifResponse>([ExtraGfn], 1)[0].Status);
        Assert.Equal(File.ReadAllBytes(_image).AsSpan(8 * 512, 4096).ToArray(), GuestPage(DataGfn));
    }

    public static TheoryData<string, bool> GarbageRequests => new()
    {
        { "unknown operation", false }, { "unknown operation", true },
        { "12 direct segments", false }, { "33 indirect segments", true },
        { "ungranted reference", false }, { "ungranted reference", true },
        { "past the end", false }, { "past the end", true },
        { "first_sect > last_sect", false }, { "first_sect > last_sect", true },
        { "indirect barrier", false },
    };

    [Theory]
    [MemberData(nameof(GarbageRequests))]
    public void AGarbageRequestFailsAloneAndTheNextIsServed(string kind, bool persistent)
    {
        PlaceIndirectSegments(MaxIndirectSegmentsPlusOne);
        BlkifRequest bad = kind switch
        {
            "unknown operation" => new BlkifRequest { Operation = BLKIF_OP_RESERVED_1, Id = 1 },
            "12 direct segments" => new BlkifRequest { Operation = BLKIF_OP_WRITE, Id = 1, NrSegments = 12 },
            "33 indirect segments" => Indirect(BLKIF_OP_WRITE, 1, 0, MaxIndirectSegmentsPlusOne),
            "ungranted reference" => Rw(BLKIF_OP_WRITE, 1, 0, (DataGref, 0, 7), (777, 0, 7)),
            "past the end" => Rw(BLKIF_OP_WRITE, 1, ImageBytes / 512 - 7, (DataGref, 0, 7)),
            "first_sect > last_sect" => Rw(BLKIF_OP_WRITE, 1, 0, (DataGref, 4, 3)),
            "indirect barrier" => Indirect(BLKIF_OP_WRITE_BARRIER, 1, 0, 1),
            _ => throw new ArgumentException(kind),
        };
        byte[] before = File.ReadAllBytes(_image);
        _hv.WriteGuestMemory(_dom, DataGfn * 4096, new byte[4096]);
        PlaceRequests<BlkifRequest, BlkifResponse>([bad, Rw(BLKIF_OP_READ, 2, 8, (DataGref + 1, 0, 7))]);
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        if (persistent) _xs.Write($"{a.FrontendPath}/feature-persistent", "1");
        FrontendConnects(a);
        var rsp = Responses<BlkifRequest, BlkifResponse>(2).OrderBy(r => r.Id).ToList();
        Assert.Equal(kind == "unknown operation" ? BLKIF_RSP_EOPNOTSUPP : BLKIF_RSP_ERROR, rsp[0].Status);
        Assert.Equal(BLKIF_RSP_OKAY, rsp[1].Status);
        Assert.Equal(before, File.ReadAllBytes(_image)); // nothing of the bad write reached the disk
        Assert.Equal(before.AsSpan(8 * 512, 4096).ToArray(), GuestPage(DataGfn + 1));
        Assert.Equal(XenbusState.Connected, BackendState(a));
    }

    [Fact]
    public void ARingPageThatIsNotGrantedFailsTheDevice()
    {
        _hv.PopulatePhysmap(_dom, ExtraGfn, 0x20);
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        FrontendConnectsWith(a, ("ring-page-order", "1"), ("ring-ref0", GrantRing(100, ExtraGfn).ToString()),
            ("ring-ref1", "999"), ("event-channel", Port()));
        WaitFor(a, XenbusState.Closing);
        Assert.Contains("ring", _xs.Read($"{a.ErrorPath}/error"));
    }

    [Theory]
    [InlineData("/dev/shm")] // tmpfs refuses O_DIRECT: buffered instead
    [InlineData(null)]       // the test's own directory
    public void ADirectIoSafeDiskIsServedWhetherOrNotItsFilesystemTakesODirect(string? dir)
    {
        if (dir is not null && !Directory.Exists(dir)) dir = null;
        string path = Path.Combine(dir ?? _dir, $"direct-{Guid.NewGuid():N}.img");
        File.Copy(_image, path);
        try
        {
            byte[] pattern = new byte[2048];
            Array.Fill(pattern, (byte)0x77);
            _hv.WriteGuestMemory(_dom, (DataGfn + 2) * 4096 + 1024, pattern);
            // A partial page (sectors 2..5 of the page) each way: the bounce path of an O_DIRECT image.
            PlaceRequests<BlkifRequest, BlkifResponse>([
                Rw(BLKIF_OP_WRITE, 1, 33, (DataGref + 2, 2, 5)),
                Rw(BLKIF_OP_READ, 2, 16, (DataGref + 3, 1, 6))]);
            var a = AddDisk(target: path, directIoSafe: "1");
            WaitFor(a, XenbusState.InitWait);
            FrontendConnects(a);
            var rsp = Responses<BlkifRequest, BlkifResponse>(2).OrderBy(r => r.Id).ToList();
            Assert.Equal(new short[] { 0, 0 }, rsp.Select(r => r.Status));
            _xs.Write($"{a.FrontendPath}/state", ((int)XenbusState.Closed).ToString());
            WaitFor(a, XenbusState.Closed);
            byte[] file = File.ReadAllBytes(path);
            Assert.Equal(pattern, file.AsSpan(33 * 512, 2048).ToArray());
            Assert.Equal(file.AsSpan(16 * 512, 3072).ToArray(), GuestPage(DataGfn + 3).AsSpan(512, 3072).ToArray());
        }
        finally { File.Delete(path); }
    }
}
