using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using XenSharp.Backends.Rings;
using XenSharp.Backends.Xenbus;
using XenSharp.Hypervisor;
using XenSharp.Public.Io;
using XenSharp.Store;
using XenSharp.Toolstack.Lifecycle;
using static XenSharp.Public.GrantTable;
using static XenSharp.Public.Io.Blkif;

namespace XenSharp.Toolstack.Tests.Fuzz;

/// <summary>
/// Mutated blkif request rings (reads and writes with segments, indirect requests, flushes, barriers and
/// discards as seeds) through a live block backend over the real grant table, on a raw and on a qcow2 image.
/// Each ring is served whole — every request answered OKAY, ERROR or EOPNOTSUPP, the disk still connected —
/// or disables its disk with a reason in the error node; never a fault of the backend's own. A second disk
/// connected beside it serves a good request every time.
/// </summary>
[Trait("Feature", "Blkback")]
public sealed unsafe class BlkifFuzzTests : IDisposable
{
    private const ulong RingGfn = 0x100, DataGfn = 0x101, IndirectGfn = 0x120, OtherRingGfn = 0x121, OtherDataGfn = 0x122;
    private const uint RingGref = 8, OtherRingGref = 9, DataGref = 10, IndirectGref = 50, OtherDataGref = 60;
    private const int DataPages = 16, ImageBytes = 1 << 20;

    private readonly XenHypervisor _hv = new(new HypervisorOptions { MachineMemoryBytes = 64UL << 20, Pcpus = 1 });
    private readonly XenStored _xs = new();
    private readonly string _dir = Directory.CreateTempSubdirectory("xs-blkfuzz").FullName;
    private readonly BackendRegistry _backends;
    private readonly ushort _dom;
    private readonly uint _port, _otherPort;
    private readonly string _raw, _qcow2, _other;
    private readonly byte[] _content = new byte[ImageBytes];
    private int _devId = 51712;

    public BlkifFuzzTests()
    {
        _dom = _hv.CreateDomain(new XenSharp.Hypervisor.DomainCreateConfig(XenSharp.Hypervisor.DomainKind.Pvh, 16 * 1024, 1));
        _hv.PopulatePhysmap(_dom, RingGfn, 0x23);
        _backends = new BackendRegistry(_hv.Dom0Services, _xs);
        for (int i = 0; i < _content.Length; i++) _content[i] = (byte)(i / 512 * 7 + i);
        _raw = Path.Combine(_dir, "disk.img");
        File.WriteAllBytes(_raw, _content);
        _other = Path.Combine(_dir, "other.img");
        File.WriteAllBytes(_other, _content);
        _qcow2 = Path.Combine(_dir, "disk.qcow2");
        var psi = new System.Diagnostics.ProcessStartInfo("qemu-img") { RedirectStandardError = true };
        foreach (string a in new[] { "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", _raw, _qcow2 }) psi.ArgumentList.Add(a);
        using (var p = System.Diagnostics.Process.Start(psi)!) { p.WaitForExit(); Assert.Equal(0, p.ExitCode); }

        for (uint g = 0; g < DataPages; g++) _hv.SeedGrantEntry(_dom, DataGref + g, GTF_permit_access, 0, (uint)(DataGfn + g));
        _hv.SeedGrantEntry(_dom, IndirectGref, GTF_permit_access | GTF_readonly, 0, (uint)IndirectGfn);
        _hv.SeedGrantEntry(_dom, RingGref, GTF_permit_access, 0, (uint)RingGfn);
        _hv.SeedGrantEntry(_dom, OtherRingGref, GTF_permit_access, 0, (uint)OtherRingGfn);
        _hv.SeedGrantEntry(_dom, OtherDataGref, GTF_permit_access, 0, (uint)OtherDataGfn);
        // The indirect page: whole data pages in order. Its segments are mutated by pointing requests' grefs elsewhere.
        var page = new byte[4096];
        for (int k = 0; k < DataPages; k++)
            MemoryMarshal.Write(page.AsSpan(k * 8), new BlkifRequestSegment { Gref = DataGref + (uint)k, FirstSect = 0, LastSect = 7 });
        _hv.WriteGuestMemory(_dom, IndirectGfn * 4096, page);
        _port = _hv.Dom0Services.AllocUnboundEventChannel(_dom);
        _otherPort = _hv.Dom0Services.AllocUnboundEventChannel(_dom);
    }

    public void Dispose()
    {
        _backends.Dispose();
        _xs.Dispose();
        _hv.Dispose();
        Directory.Delete(_dir, true);
    }

    private static BlkifRequest Rw(byte op, ulong id, ulong sector, params (uint Page, byte First, byte Last)[] segs)
    {
        var r = new BlkifRequest { Operation = op, Id = id, SectorNumber = sector, NrSegments = (byte)segs.Length };
        for (int i = 0; i < segs.Length; i++)
            r.Seg[i] = new BlkifRequestSegment { Gref = DataGref + segs[i].Page, FirstSect = segs[i].First, LastSect = segs[i].Last };
        return r;
    }

    private static BlkifRequest Indirect(byte op, ulong id, ulong sector, int nr)
    {
        var r = new BlkifRequest();
        ref var i = ref Unsafe.As<BlkifRequest, BlkifRequestIndirect>(ref r);
        (i.Operation, i.IndirectOp, i.Id, i.SectorNumber, i.NrSegments) = (BLKIF_OP_INDIRECT, op, id, sector, (ushort)nr);
        i.IndirectGrefs[0] = IndirectGref;
        return r;
    }

    private static BlkifRequest Discard(ulong id, ulong sector, ulong count)
    {
        var r = new BlkifRequest();
        ref var d = ref Unsafe.As<BlkifRequest, BlkifRequestDiscard>(ref r);
        (d.Operation, d.Id, d.SectorNumber, d.NrSectors) = (BLKIF_OP_DISCARD, id, sector, count);
        return r;
    }

    private static byte[] Requests(params BlkifRequest[] requests) => MemoryMarshal.AsBytes(requests.AsSpan()).ToArray();

    private static readonly Mutator Rings = new(
    [
        ("read-write", Requests(Rw(BLKIF_OP_READ, 1, 0, (0, 0, 7), (1, 0, 7)), Rw(BLKIF_OP_WRITE, 2, 64, (2, 1, 6)))),
        ("eleven-segments", Requests(Rw(BLKIF_OP_WRITE, 7, 8, [.. Enumerable.Range(0, 11).Select(i => ((uint)i, (byte)0, (byte)7))]))),
        ("flush-barrier", Requests(Rw(BLKIF_OP_WRITE, 3, 2040, (3, 0, 7)), new BlkifRequest { Operation = BLKIF_OP_WRITE_BARRIER, Id = 4 },
            new BlkifRequest { Operation = BLKIF_OP_FLUSH_DISKCACHE, Id = 5 }, Rw(BLKIF_OP_READ, 6, 2040, (4, 0, 7)))),
        ("indirect", Requests(Indirect(BLKIF_OP_WRITE, 8, 128, 16), Indirect(BLKIF_OP_READ, 9, 0, 4))),
        ("discard", Requests(Discard(10, 256, 16), Discard(11, 0, 8), Rw(BLKIF_OP_READ, 12, 256, (5, 0, 7)))),
    ]);

    /// <summary>The seeds are good requests: each is answered OKAY on either image.</summary>
    [Fact]
    public void SeedRingsAreServedWhole()
    {
        foreach (var (_, bytes) in Rings.Corpus)
        {
            Assert.Equal(bytes.Length / 112, ServeRing(bytes, _raw).Count(r => r.Status == BLKIF_RSP_OKAY));
            Assert.Equal(bytes.Length / 112, ServeRing(bytes, _qcow2).Count(r => r.Status == BLKIF_RSP_OKAY));
        }
    }

    [Fact]
    public void MutatedRequestRingsAreAnsweredOrDisableTheirDiskAlone()
    {
        Fuzz.Run(Rings.Cases(), 150, c => _ = ServeRing(Rings.Apply(c), (c.Random & 1) == 0 ? _raw : _qcow2), Rings.Print);
    }

    /// <summary>Writes requests into a fresh ring page in guest memory; returns the request ids and how many were produced.</summary>
    private (HashSet<ulong> Ids, uint Produced) PlaceRing(ulong gfn, ReadOnlySpan<BlkifRequest> requests)
    {
        var page = new byte[4096];
        var ids = new HashSet<ulong>();
        fixed (byte* p = page)
        {
            SharedRingLayout<BlkifRequest, BlkifResponse>.Init(page);
            var front = new FrontRing<BlkifRequest, BlkifResponse>(p, page.Length);
            foreach (var r in requests[..Math.Min(requests.Length, (int)front.Size)])
            {
                front.NextRequest() = r;
                ids.Add(r.Id);
            }
            front.PushRequestsAndCheckNotify();
        }
        _hv.WriteGuestMemory(_dom, gfn * 4096, page);
        return (ids, BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(Ring.OffsetReqProd)));
    }

    private DeviceAddress Connect(string image, uint ringGref, uint port)
    {
        var a = new DeviceAddress(DeviceKinds.Vbd, _dom, _devId++);
        DeviceLayout.Write(_xs, a, new Dictionary<string, string>
        {
            ["params"] = image, ["format"] = image.EndsWith(".qcow2") ? "qcow2" : "raw", ["mode"] = "w", ["device-type"] = "disk",
        }, null);
        Wait.Until(() => _xs.Read($"{a.BackendPath}/state") == "2");
        _xs.Write($"{a.FrontendPath}/ring-ref", ringGref.ToString());
        _xs.Write($"{a.FrontendPath}/event-channel", port.ToString());
        _xs.Write($"{a.FrontendPath}/protocol", XEN_IO_PROTO_ABI_X86_64);
        _xs.Write($"{a.FrontendPath}/state", "3");
        return a;
    }

    /// <summary>Waits until the disk is disabled or has answered <paramref name="produced"/> requests; returns its state and the responses.</summary>
    private (string? State, List<BlkifResponse> Responses) Await(DeviceAddress a, ulong gfn, uint produced)
    {
        var page = new byte[4096];
        string? state = null;
        Wait.Until(() =>
        {
            state = _xs.Read($"{a.BackendPath}/state");
            _hv.ReadGuestMemory(_dom, gfn * 4096, page);
            return state == "5" || (state == "4" && BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(Ring.OffsetRspProd)) == produced);
        });
        var responses = new List<BlkifResponse>();
        fixed (byte* p = page)
        {
            var front = new FrontRing<BlkifRequest, BlkifResponse>(p, page.Length, start: 0);
            while (front.TryTakeResponse(out var r)) responses.Add(r);
        }
        return (state, responses);
    }

    private List<BlkifResponse> ServeRing(byte[] bytes, string image)
    {
        var requests = MemoryMarshal.Cast<byte, BlkifRequest>(bytes.AsSpan(0, bytes.Length / 112 * 112));
        var (ids, produced) = PlaceRing(RingGfn, requests);
        var good = new BlkifRequest { Operation = BLKIF_OP_READ, Id = 77, SectorNumber = 8, NrSegments = 1 };
        good.Seg[0] = new BlkifRequestSegment { Gref = OtherDataGref, FirstSect = 0, LastSect = 7 };
        var (_, otherProduced) = PlaceRing(OtherRingGfn, [good]);
        _hv.WriteGuestMemory(_dom, OtherDataGfn * 4096, new byte[4096]);
        var a = Connect(image, RingGref, _port);
        var other = Connect(_other, OtherRingGref, _otherPort);
        try
        {
            var (state, responses) = Await(a, RingGfn, produced);
            if (state == "5")
            {
                string? error = _xs.Read($"{a.ErrorPath}/error");
                Assert.NotNull(error);
                // The backend's own faults would show as the exception's type name.
                Assert.DoesNotMatch("Exception", error);
            }
            else
            {
                Assert.Equal("4", state);
                Assert.Equal((int)produced, responses.Count);
                foreach (var r in responses)
                {
                    Assert.Contains(r.Id, ids);
                    Assert.True(r.Status is BLKIF_RSP_OKAY or BLKIF_RSP_ERROR or BLKIF_RSP_EOPNOTSUPP, $"status {r.Status}");
                }
            }
            var (otherState, answer) = Await(other, OtherRingGfn, otherProduced);
            Assert.Equal("4", otherState);
            Assert.Equal((77UL, BLKIF_RSP_OKAY), (Assert.Single(answer).Id, answer[0].Status));
            var data = new byte[4096];
            _hv.ReadGuestMemory(_dom, OtherDataGfn * 4096, data);
            Assert.Equal(_content.AsSpan(8 * 512, 4096).ToArray(), data);
            return responses;
        }
        finally
        {
            Remove(a);
            Remove(other);
        }
    }

    private void Remove(DeviceAddress a)
    {
        var device = _backends.Find(a);
        DeviceLayout.Remove(_xs, a);
        Wait.Until(() => _backends.Find(a) is null);
        device?.Remove().WaitOne(Wait.Limit);
    }
}
