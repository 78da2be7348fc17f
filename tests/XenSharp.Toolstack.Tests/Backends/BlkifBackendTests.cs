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

    private DeviceAddress AddDisk(string mode = "w", string? target = null, int devId = 51712)
    {
        var a = new DeviceAddress(DeviceKinds.Vbd, _dom, devId);
        DeviceLayout.Write(_xs, a, new Dictionary<string, string>
        {
            ["params"] = target ?? _image, ["format"] = "raw", ["mode"] = mode, ["device-type"] = "disk",
        }, null);
        return a;
    }

    private XenbusState BackendState(DeviceAddress a) => (XenbusState)int.Parse(_xs.Read($"{a.BackendPath}/state") ?? "0");

    private void WaitFor(DeviceAddress a, XenbusState s)
    {
        for (int i = 0; i < 1000 && BackendState(a) != s; i++) Thread.Sleep(10);
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
    private void PlaceRequests<TReq, TRsp>(IEnumerable<TReq> requests) where TReq : unmanaged where TRsp : unmanaged
    {
        var page = new byte[4096];
        fixed (byte* p = page)
        {
            SharedRingLayout<TReq, TRsp>.Init(page);
            var front = new FrontRing<TReq, TRsp>(p);
            foreach (var r in requests) front.NextRequest() = r;
            front.PushRequestsAndCheckNotify();
        }
        _hv.WriteGuestMemory(_dom, RingGfn * 4096, page);
    }

    /// <summary>Waits until <paramref name="n"/> responses are published and returns them.</summary>
    private List<TRsp> Responses<TReq, TRsp>(int n) where TReq : unmanaged where TRsp : unmanaged
    {
        var page = new byte[4096];
        for (int i = 0; i < 1000; i++)
        {
            _hv.ReadGuestMemory(_dom, RingGfn * 4096, page);
            if (BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(Ring.OffsetRspProd)) >= n) break;
            Thread.Sleep(10);
        }
        var list = new List<TRsp>();
        fixed (byte* p = page)
        {
            var front = new FrontRing<TReq, TRsp>(p, start: 0);
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
            Rw(BLKIF_OP_READ, 12, 14, (DataGref + 2, 0, 7)),                   // sectors 14..21 back → page 0x103
            Discard(13, 256, 16),                                              // 8 KiB at 128 KiB
            Discard(14, ImageBytes / 512 - 8, 16),                             // runs off the end of the disk
        };
        PlaceRequests<BlkifRequest, BlkifResponse>(requests);
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a);
        WaitFor(a, XenbusState.Connected);
        var rsp = Responses<BlkifRequest, BlkifResponse>(requests.Length);

        Assert.Equal(requests.Select(r => r.Id), rsp.Select(r => r.Id));
        // An indirect request is answered as the read or write it carries.
        Assert.Equal(requests.Select(r => r.Operation == BLKIF_OP_INDIRECT ? BLKIF_OP_READ : r.Operation), rsp.Select(r => r.Operation));
        Assert.Equal(new short[] { 0, 0, 0, -2, -1, -1, -1, -1, -1, -1, -1, 0, 0, -1 }, rsp.Select(r => r.Status));

        byte[] file = File.ReadAllBytes(_image);
        Assert.Equal(file.AsSpan(0, 4096).ToArray(), GuestPage(DataGfn));
        Assert.Equal(pattern.AsSpan(2 * 512, 4 * 512).ToArray(), file.AsSpan(16 * 512, 4 * 512).ToArray());
        Assert.Equal(file.AsSpan(14 * 512, 4096).ToArray(), GuestPage(DataGfn + 2));
        Assert.Equal(0xAB, GuestPage(DataGfn + 2)[2 * 512]);

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
        // Write 16 pages at sector 64, then read the 16 pages at sector 0 over them.
        PlaceRequests<BlkifRequest, BlkifResponse>([Indirect(BLKIF_OP_WRITE, 1, 64, Pages), Indirect(BLKIF_OP_READ, 2, 0, Pages)]);
        var a = AddDisk();
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a);
        var rsp = Responses<BlkifRequest, BlkifResponse>(2);
        Assert.Equal(new short[] { BLKIF_RSP_OKAY, BLKIF_RSP_OKAY }, rsp.Select(r => r.Status));
        Assert.Equal(new[] { BLKIF_OP_WRITE, BLKIF_OP_READ }, rsp.Select(r => r.Operation));
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
        var rsp = Responses<BlkifRequest, BlkifResponse>(2);
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
}
