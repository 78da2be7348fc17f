using System.Buffers.Binary;
using System.Runtime.InteropServices;
using XenSharp.Backends.Net;
using XenSharp.Backends.Rings;
using XenSharp.Backends.Xenbus;
using XenSharp.Hypervisor;
using XenSharp.Public.Io;
using XenSharp.Store;
using XenSharp.Toolstack.Lifecycle;
using static XenSharp.Public.GrantTable;
using static XenSharp.Public.Io.Netif;

namespace XenSharp.Toolstack.Tests.Fuzz;

/// <summary>
/// What a guest hands the network backend, mutated: Ethernet frames through the checksum code (it finds the
/// TCP/UDP segment or says there is none, and a checksum it completes verifies), and transmit rings of slots
/// (well-formed packets with extra info, scatter-gather and checksum flags as seeds) through a live backend
/// over the real grant table. Each ring is either served whole — every slot answered, the vif still connected
/// — or disables its vif with a reason in the error node; never a fault of the backend's own.
/// </summary>
[Trait("Feature", "Netback")]
public sealed unsafe class NetifFuzzTests : IDisposable
{
    private static byte[] FrameSeed(ushort etherType, byte protocol, bool vlan = false, bool hopByHop = false, int payload = 64)
    {
        int l2 = vlan ? 18 : 14;
        bool v6 = etherType == 0x86DD;
        int ext = hopByHop ? 8 : 0;
        int l4 = protocol == 6 ? 20 : 8;
        var f = new byte[l2 + (v6 ? 40 : 20) + ext + l4 + payload];
        new Random(protocol + payload).NextBytes(f.AsSpan(l2));
        if (vlan)
        {
            BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), 0x8100);
            BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(16), etherType);
        }
        else BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), etherType);
        var ip = f.AsSpan(l2);
        if (v6)
        {
            ip[0] = 0x60;
            BinaryPrimitives.WriteUInt16BigEndian(ip[4..], (ushort)(ext + l4 + payload));
            ip[6] = hopByHop ? (byte)0 : protocol;
            if (hopByHop) { ip[40] = protocol; ip[41] = 0; }
        }
        else
        {
            ip[0] = 0x45;
            BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)(20 + l4 + payload));
            BinaryPrimitives.WriteUInt16BigEndian(ip[6..], 0x4000);
            ip[9] = protocol;
        }
        if (protocol == 6) f[l2 + (v6 ? 40 : 20) + ext + 12] = 0x50;
        return f;
    }

    private static readonly Mutator Frames = new(
    [
        ("udp4", FrameSeed(0x0800, 17)), ("tcp4", FrameSeed(0x0800, 6, payload: 1400)), ("tcp6", FrameSeed(0x86DD, 6)),
        ("udp6-hop-by-hop", FrameSeed(0x86DD, 17, hopByHop: true)), ("tcp4-vlan", FrameSeed(0x0800, 6, vlan: true)),
        ("icmp4", FrameSeed(0x0800, 1)),
    ]);

    [Fact]
    public void MutatedFramesHaveTheirChecksumFoundOrRefused()
    {
        Fuzz.Run(Frames.Cases(), 5000, c =>
        {
            byte[] frame = Frames.Apply(c);
            if (Checksum.TryLocate(frame, out var t))
            {
                Assert.InRange(t.Offset + t.Length, 0, frame.Length);
                Assert.InRange(t.HeaderLength, 8, t.Length);
            }
            var copy = (byte[])frame.Clone();
            if (Checksum.Complete(copy))
            {
                Assert.True(Checksum.TryLocate(copy, out t));
                Assert.Equal(0xFFFF, Checksum.Fold(t.PseudoHeaderSum + Checksum.Sum(copy.AsSpan(t.Offset, t.Length))));
            }
            Checksum.MakePartial((byte[])frame.Clone(), out _);
        }, Frames.Print);
    }

    // ---- transmit rings through a live backend ----

    private const ulong RingGfn = 0x100, DataGfn = 0x101, RxRingGfn = 0x105;
    private const uint RingGref = 8, RxRingGref = 9, DataGref = 10;
    private const int DataPages = 4;

    private readonly XenHypervisor _hv = new(new HypervisorOptions { MachineMemoryBytes = 64UL << 20, Pcpus = 1 });
    private readonly XenStored _xs = new();
    private readonly BackendRegistry _backends;
    private readonly ushort _dom;
    /// <summary>The guest's port for every case: a backend's close leaves it unbound for Domain-0 again, as in Xen.</summary>
    private readonly uint _port;

    public NetifFuzzTests()
    {
        _dom = _hv.CreateDomain(new XenSharp.Hypervisor.DomainCreateConfig(XenSharp.Hypervisor.DomainKind.Pvh, 16 * 1024, 1));
        _hv.PopulatePhysmap(_dom, RingGfn, 1 + DataPages + 1);
        _backends = new BackendRegistry(_hv.Dom0Services, _xs, new BackendOptions { OpenVifPort = name => new NullPort(name) });
        for (uint i = 0; i < DataPages; i++) _hv.SeedGrantEntry(_dom, DataGref + i, GTF_permit_access | GTF_readonly, 0, (uint)(DataGfn + i));
        _hv.SeedGrantEntry(_dom, RingGref, GTF_permit_access, 0, (uint)RingGfn);
        _hv.SeedGrantEntry(_dom, RxRingGref, GTF_permit_access, 0, (uint)RxRingGfn);
        _hv.WriteGuestMemory(_dom, DataGfn * 4096, FrameSeed(0x0800, 17, payload: 1000));
        _port = _hv.Dom0Services.AllocUnboundEventChannel(_dom);
    }

    public void Dispose()
    {
        _backends.Dispose();
        _xs.Dispose();
        _hv.Dispose();
    }

    /// <summary>A host end that takes every frame and has none for the guest.</summary>
    private sealed class NullPort(string name) : IVifPort
    {
        public string Name => name;
        public bool Offloads => true;
        public void Start(Action framesWaiting) { }
        public int Receive(Span<byte> frame) => 0;
        public int Send(ReadOnlySpan<byte> frame, in VifOffload offload) => 0;
        public void Dispose() { }
    }

    private static byte[] Slots(params NetifTxRequest[] slots) => MemoryMarshal.AsBytes(slots.AsSpan()).ToArray();

    private static NetifTxRequest S(uint page, int offset, int size, ushort flags, ushort id = 1) =>
        new() { Gref = DataGref + page, Offset = (ushort)offset, Size = (ushort)size, Flags = flags, Id = id };

    private static NetifTxRequest E(byte type, byte flags = 0, ushort size = 0, byte gsoType = 0)
    {
        var e = new NetifExtraInfo { Type = type, Flags = flags, GsoSize = size, GsoType = gsoType };
        return *(NetifTxRequest*)&e;
    }

    private static readonly Mutator Rings = new(
    [
        ("one", Slots(S(0, 0, 1062, NETTXF_csum_blank))),
        ("sg", Slots(S(0, 100, 3000, NETTXF_more_data | NETTXF_csum_blank), S(1, 0, 1500, NETTXF_more_data), S(2, 2000, 500, 0))),
        ("gso", Slots(S(0, 0, 9000, NETTXF_more_data | NETTXF_extra_info | NETTXF_csum_blank), E(XEN_NETIF_EXTRA_TYPE_GSO, 0, 1448, XEN_NETIF_GSO_TYPE_TCPV4),
            S(1, 0, 4096, NETTXF_more_data), S(2, 0, 808, 0))),
        ("extras", Slots(S(0, 0, 60, NETTXF_extra_info), E(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, XEN_NETIF_EXTRA_FLAG_MORE), E(XEN_NETIF_EXTRA_TYPE_HASH),
            S(3, 0, 60, 0))),
    ]);

    private int _devId;

    [Fact]
    public void MutatedTransmitRingsAreServedOrDisableTheirVifAlone()
    {
        Fuzz.Run(Rings.Cases(), 150, c => ServeRing(Rings.Apply(c)), Rings.Print);
    }

    private void ServeRing(byte[] bytes)
    {
        var slots = MemoryMarshal.Cast<byte, NetifTxRequest>(bytes.AsSpan(0, bytes.Length / 12 * 12)).ToArray();
        var page = new byte[4096];
        uint produced;
        fixed (byte* p = page)
        {
            SharedRingLayout<NetifTxRequest, NetifTxResponse>.Init(page);
            var front = new FrontRing<NetifTxRequest, NetifTxResponse>(p);
            foreach (var s in slots.Take((int)front.Size)) front.NextRequest() = s;
            front.PushRequestsAndCheckNotify();
            produced = BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(Ring.OffsetReqProd));
        }
        _hv.WriteGuestMemory(_dom, RingGfn * 4096, page);
        var rx = new byte[4096];
        SharedRingLayout<NetifRxRequest, NetifRxResponse>.Init(rx);
        _hv.WriteGuestMemory(_dom, RxRingGfn * 4096, rx);
        var a = new DeviceAddress(DeviceKinds.Vif, _dom, _devId++);
        DeviceLayout.Write(_xs, a, new Dictionary<string, string> { ["mac"] = "00:16:3e:00:00:01" }, null);
        Wait.Until(() => _xs.Read($"{a.BackendPath}/state") == "2");
        _xs.Write($"{a.FrontendPath}/tx-ring-ref", RingGref.ToString());
        _xs.Write($"{a.FrontendPath}/rx-ring-ref", RxRingGref.ToString());
        _xs.Write($"{a.FrontendPath}/event-channel", _port.ToString());
        _xs.Write($"{a.FrontendPath}/request-rx-copy", "1");
        _xs.Write($"{a.FrontendPath}/feature-rx-notify", "1");
        _xs.Write($"{a.FrontendPath}/state", "4");
        string? state = null;
        uint answered = 0;
        Wait.Until(() =>
        {
            state = _xs.Read($"{a.BackendPath}/state");
            _hv.ReadGuestMemory(_dom, RingGfn * 4096, page);
            answered = BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(Ring.OffsetRspProd));
            return state == "5" || (state == "4" && answered == produced);
        });
        try
        {
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
                Assert.Equal(produced, answered);
            }
        }
        finally
        {
            var device = _backends.Find(a);
            DeviceLayout.Remove(_xs, a);
            Wait.Until(() => _backends.Find(a) is null);
            // Queued behind the bus's own removal on the I/O thread: once done, the ring is let go of.
            device?.Remove().WaitOne(Wait.Limit);
        }
    }
}
