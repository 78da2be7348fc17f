using System.Buffers.Binary;
using System.Collections.Concurrent;
using XenSharp.Backends.Net;
using XenSharp.Backends.Rings;
using XenSharp.Backends.Xenbus;
using XenSharp.Hypervisor;
using XenSharp.Public.Io;
using XenSharp.Store;
using XenSharp.Toolstack.Lifecycle;
using static XenSharp.Public.GrantTable;
using static XenSharp.Public.Io.Netif;

namespace XenSharp.Toolstack.Tests.Backends;

/// <summary>
/// The PV network backend against a hand-driven netfront: the test plays the guest through its real grant
/// table, event channels and memory (rings and packets placed in guest pages before the frontend connects, as
/// the backend serves what waits when it connects), and the host end is an in-memory port whose frames the test
/// reads and feeds. Garbage that spoils one packet fails that packet; garbage that leaves a ring unreadable
/// disables that vif alone, with the reason in its error node.
/// </summary>
public sealed unsafe class NetifBackendTests : IDisposable
{
    private const int Page = 4096;
    /// <summary>Per vif (devid 0 and 1): tx ring, rx ring, 24 tx data pages, 8 rx pages.</summary>
    private const ulong BaseGfn = 0x100, GfnsPerVif = 0x30;
    private const uint BaseGref = 8, GrefsPerVif = 40;
    private const int TxPages = 24, RxPages = 8;

    private readonly XenHypervisor _hv = new(new HypervisorOptions { MachineMemoryBytes = 64UL << 20, Pcpus = 1 });
    private readonly XenStored _xs = new();
    private readonly BackendRegistry _backends;
    private readonly ConcurrentDictionary<string, TestPort> _ports = new();
    private readonly ushort _dom;
    /// <summary>Whether the next port made finishes checksums and cuts GSO frames itself, as a TAP does.</summary>
    private bool _offloads;

    public NetifBackendTests()
    {
        _dom = _hv.CreateDomain(new XenSharp.Hypervisor.DomainCreateConfig(XenSharp.Hypervisor.DomainKind.Pvh, 16 * 1024, 1));
        _hv.PopulatePhysmap(_dom, BaseGfn, 2 * GfnsPerVif);
        _backends = new BackendRegistry(_hv.Dom0Services, _xs, new BackendOptions
        {
            OpenVifPort = name => _ports.GetOrAdd(name, n => new TestPort(n, _offloads)),
        });
        for (int v = 0; v < 2; v++)
        {
            for (uint i = 0; i < TxPages; i++)
                _hv.SeedGrantEntry(_dom, TxGref(v, (int)i), GTF_permit_access | GTF_readonly, 0, (uint)TxGfn(v, (int)i));
            for (uint i = 0; i < RxPages; i++)
                _hv.SeedGrantEntry(_dom, RxGref(v, (int)i), GTF_permit_access, 0, (uint)RxGfn(v, (int)i));
        }
    }

    public void Dispose()
    {
        _backends.Dispose();
        _xs.Dispose();
        _hv.Dispose();
    }

    private static ulong TxRingGfn(int v) => BaseGfn + (ulong)v * GfnsPerVif;
    private static ulong RxRingGfn(int v) => TxRingGfn(v) + 1;
    private static ulong TxGfn(int v, int i) => TxRingGfn(v) + 2 + (ulong)i;
    private static ulong RxGfn(int v, int i) => TxRingGfn(v) + 2 + TxPages + (ulong)i;
    private static uint TxRingGref(int v) => BaseGref + (uint)v * GrefsPerVif;
    private static uint RxRingGref(int v) => TxRingGref(v) + 1;
    private static uint TxGref(int v, int i) => TxRingGref(v) + 2 + (uint)i;
    private static uint RxGref(int v, int i) => TxRingGref(v) + 2 + TxPages + (uint)i;

    /// <summary>An in-memory host end: frames the guest sent, and frames queued for the guest.</summary>
    private sealed class TestPort(string name, bool offloads) : IVifPort
    {
        public readonly ConcurrentQueue<byte[]> Sent = new();
        public readonly ConcurrentQueue<VifOffload> SentOffloads = new();
        public bool Offloads => offloads;
        public readonly ConcurrentQueue<byte[]> ForGuest = new();
        private Action? _waiting;
        public volatile bool Disposed;
        public string Name => name;
        public void Start(Action framesWaiting) => _waiting = framesWaiting;
        /// <summary>What a TAP does when a frame arrives: tell the backend.</summary>
        public void Poke() => _waiting?.Invoke();

        /// <summary>What each frame for the guest leaves to it (partial checksum, GSO), in step with <see cref="ForGuest"/>;
        /// none when empty.</summary>
        public readonly ConcurrentQueue<VifOffload> ForGuestOffloads = new();
        /// <summary>The receive offloads the backend asked for last.</summary>
        public (bool Checksum, bool TcpV4, bool TcpV6) ReceiveOffloads;

        public int Receive(Span<byte> frame) => Receive(frame, out _);

        public int Receive(Span<byte> frame, out VifOffload offload)
        {
            offload = VifOffload.None;
            if (!ForGuest.TryDequeue(out var f)) return 0;
            if (ForGuestOffloads.TryDequeue(out var o)) offload = o;
            f.AsSpan(0, Math.Min(f.Length, frame.Length)).CopyTo(frame);
            return f.Length;
        }

        public bool SetReceiveOffloads(bool checksum, bool tcpv4, bool tcpv6)
        {
            ReceiveOffloads = (checksum, tcpv4, tcpv6);
            return offloads && checksum;
        }

        /// <summary>Stopwatch ticks of the first and the latest frame sent.</summary>
        public long FirstSend, LastSend;

        public int Send(ReadOnlySpan<byte> frame, in VifOffload offload)
        {
            long now = System.Diagnostics.Stopwatch.GetTimestamp();
            Interlocked.CompareExchange(ref FirstSend, now, 0);
            Volatile.Write(ref LastSend, now);
            Assert.True(offloads || offload == VifOffload.None, "offloads handed to a port without them");
            SentOffloads.Enqueue(offload);
            Sent.Enqueue(frame.ToArray());
            return 0;
        }

        public void Dispose() => Disposed = true;
    }

    private DeviceAddress AddVif(int devId = 0)
    {
        var a = new DeviceAddress(DeviceKinds.Vif, _dom, devId);
        DeviceLayout.Write(_xs, a, new Dictionary<string, string> { ["mac"] = "00:16:3e:00:00:01", ["bridge"] = "xenbr0", ["handle"] = devId.ToString(), ["type"] = "vif" },
            new Dictionary<string, string> { ["mac"] = "00:16:3e:00:00:01", ["handle"] = devId.ToString() });
        return a;
    }

    private XenbusState BackendState(DeviceAddress a) => (XenbusState)int.Parse(_xs.Read($"{a.BackendPath}/state") ?? "0");

    private void WaitFor(DeviceAddress a, XenbusState s)
    {
        Wait.Until(() => BackendState(a) == s);
        Assert.Equal(s, BackendState(a));
    }

    private static void WaitUntil(Func<bool> condition, string what)
    {
        Wait.Until(condition);
        Assert.True(condition(), what);
    }

    /// <summary>netfront's connect: both rings granted, a port offered, rx-copy and rx-notify, Connected.</summary>
    private void FrontendConnects(DeviceAddress a, bool rxCopy = true, bool split = false, bool gso = false)
    {
        if (gso)
        {
            // netfront's receive features: checksum offload over IPv6 too, and TCP segments of up to 64 KiB.
            _xs.Write($"{a.FrontendPath}/feature-ipv6-csum-offload", "1");
            _xs.Write($"{a.FrontendPath}/feature-gso-tcpv4", "1");
            _xs.Write($"{a.FrontendPath}/feature-gso-tcpv6", "1");
        }
        int v = a.DevId;
        _hv.SeedGrantEntry(_dom, TxRingGref(v), GTF_permit_access, 0, (uint)TxRingGfn(v));
        _hv.SeedGrantEntry(_dom, RxRingGref(v), GTF_permit_access, 0, (uint)RxRingGfn(v));
        uint port = _hv.Dom0Services.AllocUnboundEventChannel(_dom);
        _xs.Write($"{a.FrontendPath}/tx-ring-ref", TxRingGref(v).ToString());
        _xs.Write($"{a.FrontendPath}/rx-ring-ref", RxRingGref(v).ToString());
        if (split)
        {
            _xs.Write($"{a.FrontendPath}/event-channel-tx", port.ToString());
            _xs.Write($"{a.FrontendPath}/event-channel-rx", _hv.Dom0Services.AllocUnboundEventChannel(_dom).ToString());
        }
        else
            _xs.Write($"{a.FrontendPath}/event-channel", port.ToString());
        if (rxCopy) _xs.Write($"{a.FrontendPath}/request-rx-copy", "1");
        _xs.Write($"{a.FrontendPath}/feature-rx-notify", "1");
        _xs.Write($"{a.FrontendPath}/feature-sg", "1");
        _xs.Write($"{a.FrontendPath}/state", ((int)XenbusState.Connected).ToString());
    }

    private NetifBackend Backend(DeviceAddress a) => Assert.IsType<NetifBackend>(_backends.Find(a));

    /// <summary>netfront's connect with <paramref name="queues"/> queues: queue N's rings are those of the layout's
    /// vif N, granted and named under queue-N/, each queue with split event channels.</summary>
    private void FrontendConnectsQueues(DeviceAddress a, int queues)
    {
        _xs.Write($"{a.FrontendPath}/multi-queue-num-queues", queues.ToString());
        for (int q = 0; q < queues; q++)
        {
            string dir = $"{a.FrontendPath}/queue-{q}";
            _hv.SeedGrantEntry(_dom, TxRingGref(q), GTF_permit_access, 0, (uint)TxRingGfn(q));
            _hv.SeedGrantEntry(_dom, RxRingGref(q), GTF_permit_access, 0, (uint)RxRingGfn(q));
            _xs.Write($"{dir}/tx-ring-ref", TxRingGref(q).ToString());
            _xs.Write($"{dir}/rx-ring-ref", RxRingGref(q).ToString());
            _xs.Write($"{dir}/event-channel-tx", _hv.Dom0Services.AllocUnboundEventChannel(_dom).ToString());
            _xs.Write($"{dir}/event-channel-rx", _hv.Dom0Services.AllocUnboundEventChannel(_dom).ToString());
        }
        _xs.Write($"{a.FrontendPath}/request-rx-copy", "1");
        _xs.Write($"{a.FrontendPath}/feature-rx-notify", "1");
        _xs.Write($"{a.FrontendPath}/feature-sg", "1");
        _xs.Write($"{a.FrontendPath}/state", ((int)XenbusState.Connected).ToString());
    }


    // ---- frames ----

    /// <summary>An Ethernet frame carrying UDP over IPv4 (or TCP over IPv6) with a wrong checksum in place.</summary>
    private static byte[] Frame(int length, bool ipv6 = false, byte seed = 1)
    {
        var f = new byte[length];
        for (int i = 0; i < length; i++) f[i] = (byte)(i * 7 + seed);
        f[0] = 0x00; f[1] = 0x16; f[2] = 0x3e; // destination
        f[6] = 0x00; f[7] = 0x16; f[8] = 0x3e;
        if (!ipv6)
        {
            BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), 0x0800);
            f[14] = 0x45;
            BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(16), (ushort)(length - 14));
            BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(20), 0x4000); // DF, no fragment
            f[23] = 17;
            BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(38), (ushort)(length - 34)); // UDP length
            BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(40), 0x1234);
        }
        else
        {
            BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), 0x86DD);
            f[14] = 0x60;
            BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(18), (ushort)(length - 54));
            f[20] = 6;
            f[54 + 12] = 0x50; // TCP data offset: 20 bytes
            BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(54 + 16), 0x1234);
        }
        return f;
    }

    /// <summary>The transport checksum verifies: pseudo-header plus segment add up to all ones.</summary>
    private static bool ChecksumVerifies(byte[] f)
    {
        bool v6 = f[12] == 0x86;
        int l4 = v6 ? 54 : 34;
        int len = f.Length - l4;
        uint sum = 0;
        void Add(ReadOnlySpan<byte> s) { for (int i = 0; i < s.Length; i += 2) sum += (uint)(s[i] << 8 | (i + 1 < s.Length ? s[i + 1] : 0)); }
        Add(f.AsSpan(v6 ? 22 : 26, v6 ? 32 : 8));
        sum += v6 ? f[20] : f[23];
        sum += (uint)len;
        Add(f.AsSpan(l4));
        while (sum > 0xFFFF) sum = (sum & 0xFFFF) + (sum >> 16);
        return sum == 0xFFFF;
    }

    // ---- rings ----

    private static NetifTxRequest Slot(uint gref, int offset, int size, ushort flags, ushort id) =>
        new() { Gref = gref, Offset = (ushort)offset, Size = (ushort)size, Flags = flags, Id = id };

    private static NetifTxRequest Extra(byte type, byte flags = 0, ushort gsoSize = 0, byte gsoType = 0)
    {
        var e = new NetifExtraInfo { Type = type, Flags = flags, GsoSize = gsoSize, GsoType = gsoType };
        return *(NetifTxRequest*)&e;
    }

    private void PlaceTx(int v, IEnumerable<NetifTxRequest> slots)
    {
        var page = new byte[Page];
        fixed (byte* p = page)
        {
            SharedRingLayout<NetifTxRequest, NetifTxResponse>.Init(page);
            var front = new FrontRing<NetifTxRequest, NetifTxResponse>(p);
            foreach (var s in slots) front.NextRequest() = s;
            front.PushRequestsAndCheckNotify();
        }
        _hv.WriteGuestMemory(_dom, TxRingGfn(v) * Page, page);
    }

    private void PlaceRx(int v, int count, ushort firstId)
    {
        var page = new byte[Page];
        fixed (byte* p = page)
        {
            SharedRingLayout<NetifRxRequest, NetifRxResponse>.Init(page);
            var front = new FrontRing<NetifRxRequest, NetifRxResponse>(p);
            for (int i = 0; i < count; i++) front.NextRequest() = new NetifRxRequest { Id = (ushort)(firstId + i), Gref = RxGref(v, i) };
            front.PushRequestsAndCheckNotify();
        }
        _hv.WriteGuestMemory(_dom, RxRingGfn(v) * Page, page);
    }

    /// <summary>Posts more receive buffers on a live ring: the request entries, then req_prod, as netfront does.</summary>
    private void PostRx(int v, int from, int count, ushort firstId)
    {
        for (int i = from; i < from + count; i++)
        {
            var r = new NetifRxRequest { Id = (ushort)(firstId + i - from), Gref = RxGref(v, i) };
            _hv.WriteGuestMemory(_dom, RxRingGfn(v) * Page + Ring.OffsetRing + (ulong)i * 8, new ReadOnlySpan<byte>(&r, 8));
        }
        var prod = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(prod, (uint)(from + count));
        _hv.WriteGuestMemory(_dom, RxRingGfn(v) * Page + Ring.OffsetReqProd, prod);
    }

    private List<TRsp> Responses<TReq, TRsp>(ulong ringGfn, int n) where TReq : unmanaged where TRsp : unmanaged
    {
        var page = new byte[Page];
        Wait.Until(() =>
        {
            _hv.ReadGuestMemory(_dom, ringGfn * Page, page);
            return BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(Ring.OffsetRspProd)) >= n;
        });
        var list = new List<TRsp>();
        fixed (byte* p = page)
        {
            var front = new FrontRing<TReq, TRsp>(p);
            while (front.TryTakeResponse(out var r)) list.Add(r);
        }
        Assert.Equal(n, list.Count);
        return list;
    }

    private void WriteTxData(int v, int page, int offset, ReadOnlySpan<byte> data) =>
        _hv.WriteGuestMemory(_dom, TxGfn(v, page) * Page + (ulong)offset, data);

    private byte[] RxPage(int v, int i)
    {
        var b = new byte[Page];
        _hv.ReadGuestMemory(_dom, RxGfn(v, i) * Page, b);
        return b;
    }

    // ---- tests ----

    [Fact]
    public void TheHostEndIsMadeBeforeInitWaitAndGoesWithTheDevice()
    {
        var a = AddVif();
        WaitFor(a, XenbusState.InitWait);
        Assert.True(_ports.TryGetValue($"vif{_dom}.0", out var port), "no port named vifD.0");
        Assert.Same(port, Backend(a).Port);
        foreach (var (key, value) in new[] { ("feature-sg", "1"), ("feature-rx-copy", "1"), ("feature-rx-flip", "0"), ("feature-ipv6-csum-offload", "1"), ("feature-gso-tcpv4", "0"), ("feature-split-event-channels", "1"), ("multi-queue-max-queues", "8"), ("feature-ctrl-ring", "1") })
            Assert.Equal(value, _xs.Read($"{a.BackendPath}/{key}"));
        _backends.RemoveDevicesOf(_dom);
        Assert.True(port!.Disposed);
    }

    [Fact]
    public void PacketsTheGuestSendsReachTheHostWholeWithTheirChecksumsCompleted()
    {
        byte[] small = Frame(60, seed: 3);
        byte[] udp = Frame(3000, seed: 5);
        byte[] tcp6 = Frame(200, ipv6: true, seed: 9);
        // A three-slot packet: 1000 bytes at offset 100 of page 0, 1500 at 0 of page 1, 500 at 2000 of page 2,
        // with a multicast extra slot after its first.
        WriteTxData(0, 3, 0, small);
        WriteTxData(0, 0, 100, udp.AsSpan(0, 1000));
        WriteTxData(0, 1, 0, udp.AsSpan(1000, 1500));
        WriteTxData(0, 2, 2000, udp.AsSpan(2500, 500));
        WriteTxData(0, 4, 96, tcp6);
        PlaceTx(0,
        [
            Slot(TxGref(0, 3), 0, small.Length, 0, 1),
            Slot(TxGref(0, 0), 100, udp.Length, NETTXF_more_data | NETTXF_extra_info | NETTXF_csum_blank, 2),
            Extra(XEN_NETIF_EXTRA_TYPE_MCAST_ADD),
            Slot(TxGref(0, 1), 0, 1500, NETTXF_more_data, 3),
            Slot(TxGref(0, 2), 2000, 500, 0, 4),
            Slot(TxGref(0, 4), 96, tcp6.Length, NETTXF_csum_blank | NETTXF_data_validated, 5),
        ]);
        var a = AddVif();
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a);
        WaitFor(a, XenbusState.Connected);
        var rsp = Responses<NetifTxRequest, NetifTxResponse>(TxRingGfn(0), 6);
        Assert.Equal(new short[] { NETIF_RSP_OKAY, NETIF_RSP_OKAY, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETIF_RSP_OKAY, NETIF_RSP_OKAY }, rsp.Select(r => r.Status));
        Assert.Equal(new ushort[] { 1, 2, 3, 4, 5 }, rsp.Where(r => r.Status != NETIF_RSP_NULL).Select(r => r.Id));

        var port = _ports[$"vif{_dom}.0"];
        WaitUntil(() => port.Sent.Count == 3, "three frames at the host end");
        var sent = port.Sent.ToArray();
        Assert.Equal(small, sent[0]);
        Assert.Equal(udp.Length, sent[1].Length);
        Assert.True(ChecksumVerifies(sent[1]), "the UDP checksum was not completed");
        Assert.True(ChecksumVerifies(sent[2]), "the TCP/IPv6 checksum was not completed");
        // Apart from the checksum field, the frames are what the guest wrote.
        udp[40] = sent[1][40]; udp[41] = sent[1][41];
        Assert.Equal(udp, sent[1]);
        Assert.Equal(3, Backend(a).Statistics.TxPackets);
        Assert.Equal(small.Length + udp.Length + tcp6.Length, Backend(a).Statistics.TxOctets);
    }

    [Fact]
    public void ARateLimitedVifSendsNoFasterThanItsCreditAllows()
    {
        // 200 packets of 1500 bytes at 5000 bytes per 10 ms (libxl's rate node): 300000 bytes take 60 intervals at
        // the rate; no more than one interval's worth goes before the first refill.
        const int Packets = 200, Size = 1500, Credit = 5000, IntervalMs = 10;
        byte[] frame = Frame(Size, seed: 4);
        WriteTxData(0, 0, 0, frame);
        PlaceTx(0, Enumerable.Range(0, Packets).Select(i => Slot(TxGref(0, 0), 0, Size, 0, (ushort)i)));
        var a = AddVif();
        _xs.Write($"{a.BackendPath}/rate", $"{Credit},{IntervalMs * 1000}");
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a);
        WaitFor(a, XenbusState.Connected);
        var port = _ports[$"vif{_dom}.0"];
        Wait.Until(() => port.Sent.Count >= Packets);
        Assert.Equal(Packets, port.Sent.Count);
        Assert.All(Responses<NetifTxRequest, NetifTxResponse>(TxRingGfn(0), Packets), r => Assert.Equal(NETIF_RSP_OKAY, r.Status));
        // A functional bound, not a speed measurement: the credit scheme cannot have let the frames out faster.
        double seconds = (port.LastSend - port.FirstSend) / (double)System.Diagnostics.Stopwatch.Frequency;
        double least = (Packets * Size - 2.0 * Credit) / Credit * IntervalMs / 1000;
        Assert.True(seconds >= least, $"{Packets * Size} bytes went in {seconds:0.000} s; the rate allows no less than {least:0.000} s");
    }

    [Fact]
    public void GarbageThatSpoilsOnePacketFailsThatPacketAlone()
    {
        byte[] good = Frame(100);
        WriteTxData(0, 5, 0, good);
        var slots = new List<NetifTxRequest>
        {
            // Slots that add up to more than the packet says (a packet "larger than" its 16-bit size).
            Slot(TxGref(0, 0), 0, 100, NETTXF_more_data, 1), Slot(TxGref(0, 1), 0, 200, 0, 2),
            // A reference never granted.
            Slot(999, 0, 100, 0, 3),
            // Shorter than an Ethernet header.
            Slot(TxGref(0, 0), 0, 10, 0, 4),
            // GSO, which is not offered.
            Slot(TxGref(0, 0), 0, 100, NETTXF_extra_info, 5), Extra(XEN_NETIF_EXTRA_TYPE_GSO, gsoSize: 1448, gsoType: XEN_NETIF_GSO_TYPE_TCPV4),
        };
        // Nineteen data slots: one more than a packet may use.
        for (int i = 0; i < 19; i++)
            slots.Add(Slot(TxGref(0, i), 0, i == 0 ? 19 * 60 : 60, i < 18 ? NETTXF_more_data : (ushort)0, (ushort)(10 + i)));
        slots.Add(Slot(TxGref(0, 5), 0, good.Length, 0, 99));
        PlaceTx(0, slots);
        var a = AddVif();
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a);
        var rsp = Responses<NetifTxRequest, NetifTxResponse>(TxRingGfn(0), slots.Count);
        Assert.All(rsp.Take(slots.Count - 1).Where(r => r.Status != NETIF_RSP_NULL), r => Assert.Equal(NETIF_RSP_ERROR, r.Status));
        Assert.Equal(NETIF_RSP_NULL, rsp[5].Status);
        Assert.Equal(NETIF_RSP_OKAY, rsp[^1].Status);
        Assert.Equal(99, rsp[^1].Id);

        var port = _ports[$"vif{_dom}.0"];
        WaitUntil(() => port.Sent.Count == 1, "the good frame at the host end");
        Assert.Equal(good, port.Sent.Single());
        Assert.Equal(5, Backend(a).Statistics.TxFailed);
        Assert.Equal(XenbusState.Connected, BackendState(a));
        Assert.Null(_xs.Read($"{a.ErrorPath}/error"));
    }

    [Fact]
    public void WhereTheHostEndOffloadsChecksumsStayPartialAndLargeTcpFramesGoWholeForTheHostToCut()
    {
        _offloads = true;
        byte[] gso = Frame(9000, seed: 4);
        gso[23] = 6; // TCP instead of UDP
        gso[34 + 12] = 0x50;
        byte[] udp = Frame(500, seed: 6);
        WriteTxData(0, 0, 0, gso.AsSpan(0, 4096));
        WriteTxData(0, 1, 0, gso.AsSpan(4096, 4096));
        WriteTxData(0, 2, 0, gso.AsSpan(8192));
        WriteTxData(0, 3, 0, udp);
        PlaceTx(0,
        [
            Slot(TxGref(0, 0), 0, gso.Length, NETTXF_more_data | NETTXF_extra_info | NETTXF_csum_blank, 1),
            Extra(XEN_NETIF_EXTRA_TYPE_GSO, gsoSize: 1448, gsoType: XEN_NETIF_GSO_TYPE_TCPV4),
            Slot(TxGref(0, 1), 0, 4096, NETTXF_more_data, 2),
            Slot(TxGref(0, 2), 0, gso.Length - 8192, 0, 3),
            Slot(TxGref(0, 3), 0, udp.Length, NETTXF_csum_blank, 4),
            // GSO that says IPv6 for an IPv4 frame.
            Slot(TxGref(0, 3), 0, udp.Length, NETTXF_extra_info | NETTXF_csum_blank, 5),
            Extra(XEN_NETIF_EXTRA_TYPE_GSO, gsoSize: 1448, gsoType: XEN_NETIF_GSO_TYPE_TCPV6),
        ]);
        var a = AddVif();
        WaitFor(a, XenbusState.InitWait);
        Assert.Equal("1", _xs.Read($"{a.BackendPath}/feature-gso-tcpv4"));
        Assert.Equal("1", _xs.Read($"{a.BackendPath}/feature-gso-tcpv6"));
        FrontendConnects(a);
        var rsp = Responses<NetifTxRequest, NetifTxResponse>(TxRingGfn(0), 7);
        Assert.Equal(new short[] { NETIF_RSP_OKAY, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETIF_RSP_OKAY, NETIF_RSP_OKAY, NETIF_RSP_ERROR, NETIF_RSP_NULL },
            rsp.Select(r => r.Status));

        var port = _ports[$"vif{_dom}.0"];
        WaitUntil(() => port.Sent.Count == 2, "two frames at the host end");
        var sent = port.Sent.ToArray();
        var offloads = port.SentOffloads.ToArray();
        Assert.Equal(new VifOffload(true, 34, 16, VifGso.TcpV4, 1448, 54), offloads[0]);
        Assert.Equal(new VifOffload(true, 34, 6, VifGso.None, 0, 42), offloads[1]);
        Assert.Equal(gso.Length, sent[0].Length);
        // The partial checksum is the pseudo-header's: adding the segment's own sum completes it.
        foreach (var (f, field) in new[] { (sent[0], 34 + 16), (sent[1], 34 + 6) })
        {
            var done = (byte[])f.Clone();
            uint sum = 0;
            for (int i = 34; i < done.Length; i += 2) sum += (uint)(done[i] << 8 | (i + 1 < done.Length ? done[i + 1] : 0));
            while (sum > 0xFFFF) sum = (sum & 0xFFFF) + (sum >> 16);
            BinaryPrimitives.WriteUInt16BigEndian(done.AsSpan(field), (ushort)~sum);
            Assert.True(ChecksumVerifies(done), "the partial checksum does not complete to a valid one");
        }
    }

    public static TheoryData<string, string> RingBreakers() => new()
    {
        { "slots", "more than 20 slots" },
        { "cross", "crosses its page" },
        { "extra", "unknown type 7" },
        { "gso0", "GSO size is zero" },
        { "short", "runs past the requests produced" },
    };

    [Theory]
    [MemberData(nameof(RingBreakers))]
    public void GarbageThatBreaksTheRingDisablesThatVifAlone(string kind, string reason)
    {
        var bad = new List<NetifTxRequest>();
        switch (kind)
        {
            case "slots":
                for (int i = 0; i < 22; i++) bad.Add(Slot(TxGref(0, i), 0, i == 0 ? 22 * 60 : 60, i < 21 ? NETTXF_more_data : (ushort)0, (ushort)i));
                break;
            case "cross":
                bad.Add(Slot(TxGref(0, 0), 4000, 200, 0, 1));
                break;
            case "extra":
                bad.Add(Slot(TxGref(0, 0), 0, 100, NETTXF_extra_info, 1));
                bad.Add(Extra(7));
                break;
            case "gso0":
                bad.Add(Slot(TxGref(0, 0), 0, 100, NETTXF_extra_info, 1));
                bad.Add(Extra(XEN_NETIF_EXTRA_TYPE_GSO, gsoSize: 0, gsoType: XEN_NETIF_GSO_TYPE_TCPV4));
                break;
            case "short":
                bad.Add(Slot(TxGref(0, 0), 0, 100, NETTXF_more_data, 1));
                break;
        }
        PlaceTx(0, bad);
        byte[] good = Frame(80);
        WriteTxData(1, 0, 0, good);
        PlaceTx(1, [Slot(TxGref(1, 0), 0, good.Length, 0, 7)]);
        var a = AddVif(0);
        var b = AddVif(1);
        WaitFor(a, XenbusState.InitWait);
        WaitFor(b, XenbusState.InitWait);
        FrontendConnects(a);
        FrontendConnects(b);

        WaitFor(a, XenbusState.Closing);
        string? error = _xs.Read($"{a.ErrorPath}/error");
        Assert.NotNull(error);
        Assert.Contains(reason, error);
        Assert.Empty(_ports[$"vif{_dom}.0"].Sent);

        // The other vif of the same guest goes on.
        WaitFor(b, XenbusState.Connected);
        Assert.Equal(NETIF_RSP_OKAY, Responses<NetifTxRequest, NetifTxResponse>(TxRingGfn(1), 1)[0].Status);
        var other = _ports[$"vif{_dom}.1"];
        WaitUntil(() => other.Sent.Count == 1, "the other vif's frame");
        Assert.Equal(good, other.Sent.Single());
        Assert.Null(_xs.Read($"{b.ErrorPath}/error"));
    }

    [Fact]
    public void TwoQueuesCarryTheirOwnPacketsAndEachFlowKeepsToItsQueue()
    {
        // Two UDP flows that hash to different queues.
        byte[] f0 = [], f1 = [];
        for (byte seed = 1; (f0.Length == 0 || f1.Length == 0) && seed < 200; seed++)
        {
            var f = Frame(200, seed: seed);
            if (NetifBackend.FlowHash(f) % 2 == 0) { if (f0.Length == 0) f0 = f; }
            else if (f1.Length == 0) f1 = f;
        }
        Assert.True(f0.Length > 0 && f1.Length > 0, "no two flows for two queues");
        // The guest sends one packet on each queue's tx ring.
        byte[] out0 = Frame(120, seed: 40), out1 = Frame(130, seed: 41);
        WriteTxData(0, 0, 0, out0);
        WriteTxData(1, 0, 0, out1);
        PlaceTx(0, [Slot(TxGref(0, 0), 0, out0.Length, 0, 3)]);
        PlaceTx(1, [Slot(TxGref(1, 0), 0, out1.Length, 0, 4)]);
        PlaceRx(0, 2, firstId: 10);
        PlaceRx(1, 2, firstId: 20);
        var a = AddVif();
        WaitFor(a, XenbusState.InitWait);
        Assert.Equal(NetifBackend.MaxQueues.ToString(), _xs.Read($"{a.BackendPath}/multi-queue-max-queues"));
        var port = _ports[$"vif{_dom}.0"];
        port.ForGuest.Enqueue(f1);
        port.ForGuest.Enqueue(f0);
        port.ForGuest.Enqueue(f1);
        FrontendConnectsQueues(a, 2);
        WaitFor(a, XenbusState.Connected);

        Assert.Equal(3, Responses<NetifTxRequest, NetifTxResponse>(TxRingGfn(0), 1)[0].Id);
        Assert.Equal(4, Responses<NetifTxRequest, NetifTxResponse>(TxRingGfn(1), 1)[0].Id);
        WaitUntil(() => port.Sent.Count == 2, "both queues' frames at the host end");
        Assert.Equal([out0, out1], port.Sent.OrderBy(f => f.Length));

        // Queue 0 got the flow that hashes to it; queue 1 both frames of the other, in order.
        var rsp0 = Responses<NetifRxRequest, NetifRxResponse>(RxRingGfn(0), 1);
        var rsp1 = Responses<NetifRxRequest, NetifRxResponse>(RxRingGfn(1), 2);
        Assert.Equal(10, rsp0[0].Id);
        Assert.Equal(new ushort[] { 20, 21 }, rsp1.Select(r => r.Id));
        Assert.Equal(f0, RxPage(0, 0)[..f0.Length]);
        Assert.Equal(f1, RxPage(1, 0)[..f1.Length]);
        Assert.Equal(f1, RxPage(1, 1)[..f1.Length]);
        Assert.Equal(3, Backend(a).Statistics.RxPackets);
    }

    [Theory]
    [InlineData("9")]
    [InlineData("0")]
    [InlineData("two")]
    public void MoreQueuesThanOfferedOrGarbageDisablesThatVifAlone(string queues)
    {
        var a = AddVif(0);
        WaitFor(a, XenbusState.InitWait);
        _xs.Write($"{a.FrontendPath}/multi-queue-num-queues", queues);
        _xs.Write($"{a.FrontendPath}/request-rx-copy", "1");
        _xs.Write($"{a.FrontendPath}/feature-rx-notify", "1");
        _xs.Write($"{a.FrontendPath}/state", ((int)XenbusState.Connected).ToString());
        WaitFor(a, XenbusState.Closing);
        Assert.Contains($"{queues} queues asked for; at most 8 are served", _xs.Read($"{a.ErrorPath}/error"));
    }

    [Fact]
    public void ToeplitzGivesTheRssVerificationSuitesHashes()
    {
        // The verification suite of Microsoft's RSS specification: its key, and 66.9.149.187:2794 → 161.142.100.80:1766.
        byte[] key = Convert.FromHexString("6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa");
        byte[] v4 = [66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6];
        Assert.Equal(0x323e8fc2u, NetifHash.Toeplitz(key, v4.AsSpan(0, 8)));
        Assert.Equal(0x51ccc178u, NetifHash.Toeplitz(key, v4));
    }

    [Fact]
    public void TheControlRingSetsToeplitzSteeringAndRefusesWhatItCannotKeep()
    {
        // Pages of the layout's spare tx data: the control ring, the key, the mapping table.
        uint ctrlGref = TxGref(1, 20), keyGref = TxGref(1, 21), mapGref = TxGref(1, 22);
        _hv.SeedGrantEntry(_dom, ctrlGref, GTF_permit_access, 0, (uint)TxGfn(1, 20));
        byte[] key = Convert.FromHexString("6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa");
        WriteTxData(1, 21, 0, key);
        WriteTxData(1, 22, 0, [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0]);
        NetifCtrlRequest Req(ushort id, ushort type, uint d0 = 0, uint d1 = 0, uint d2 = 0) =>
            new() { Id = id, Type = type, Data0 = d0, Data1 = d1, Data2 = d2 };
        NetifCtrlRequest[] requests =
        [
            Req(1, XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS),                     // no algorithm yet
            Req(2, XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, 7),               // unknown
            Req(3, XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ),
            Req(4, XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS),
            Req(5, XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, 1u << 7),             // no such type
            Req(6, XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, XEN_NETIF_CTRL_HASH_TYPE_IPV4 | XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP),
            Req(7, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, keyGref, 41),           // beyond the 40 octets kept
            Req(8, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, keyGref, 40),
            Req(9, XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE),
            Req(10, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, 129),
            Req(11, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, 4),
            Req(12, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, mapGref, 5, 0),    // beyond the table
            Req(13, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, mapGref, 4, 0),    // every hash to queue 1
            Req(14, XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING),
            Req(15, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, 0xFFFF, 8),            // a grant that is no grant
        ];
        var page = new byte[Page];
        fixed (byte* p = page)
        {
            SharedRingLayout<NetifCtrlRequest, NetifCtrlResponse>.Init(page);
            var front = new FrontRing<NetifCtrlRequest, NetifCtrlResponse>(p);
            foreach (var r in requests) front.NextRequest() = r;
            front.PushRequestsAndCheckNotify();
        }
        _hv.WriteGuestMemory(_dom, TxGfn(1, 20) * Page, page);

        // A frame whose flow the backend's own hash puts on queue 0: the frontend's table steers it to queue 1.
        byte[] f = [];
        for (byte seed = 1; f.Length == 0 && seed < 200; seed++)
            if (NetifBackend.FlowHash(Frame(200, seed: seed)) % 2 == 0) f = Frame(200, seed: seed);
        Assert.NotEmpty(f);
        PlaceTx(0, []);
        PlaceTx(1, []);
        PlaceRx(0, 2, firstId: 10);
        PlaceRx(1, 2, firstId: 20);
        var a = AddVif();
        WaitFor(a, XenbusState.InitWait);
        Assert.Equal("1", _xs.Read($"{a.BackendPath}/feature-ctrl-ring"));
        _ports[$"vif{_dom}.0"].ForGuest.Enqueue(f);
        _xs.Write($"{a.FrontendPath}/ctrl-ring-ref", ctrlGref.ToString());
        _xs.Write($"{a.FrontendPath}/event-channel-ctrl", _hv.Dom0Services.AllocUnboundEventChannel(_dom).ToString());
        FrontendConnectsQueues(a, 2);
        WaitFor(a, XenbusState.Connected);

        var rsp = Responses<NetifCtrlRequest, NetifCtrlResponse>(TxGfn(1, 20), requests.Length);
        Assert.Equal(requests.Select(r => r.Id), rsp.Select(r => r.Id));
        Assert.Equal(requests.Select(r => r.Type), rsp.Select(r => r.Type));
        Assert.Equal(new[]
        {
            XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER, XEN_NETIF_CTRL_STATUS_SUCCESS,
            XEN_NETIF_CTRL_STATUS_SUCCESS, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER, XEN_NETIF_CTRL_STATUS_SUCCESS,
            XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW, XEN_NETIF_CTRL_STATUS_SUCCESS, XEN_NETIF_CTRL_STATUS_SUCCESS,
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER, XEN_NETIF_CTRL_STATUS_SUCCESS, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
            XEN_NETIF_CTRL_STATUS_SUCCESS, XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
        }, rsp.Select(r => r.Status));
        Assert.Equal(0xFu, rsp[3].Data);   // all four hash types
        Assert.Equal(128u, rsp[8].Data);   // the largest table

        var rx1 = Responses<NetifRxRequest, NetifRxResponse>(RxRingGfn(1), 1);
        Assert.Equal(20, rx1[0].Id);
        Assert.Equal(f, RxPage(1, 0)[..f.Length]);
        Assert.Equal(XenbusState.Connected, BackendState(a));
    }

    [Fact]
    public void FramesForTheGuestFillItsPostedBuffersAndWaitForMore()
    {
        byte[] f1 = Frame(100, seed: 1), f2 = Frame(6000, seed: 2), f3 = Frame(300, ipv6: true, seed: 3);
        var a = AddVif();
        WaitFor(a, XenbusState.InitWait);
        var port = _ports[$"vif{_dom}.0"];
        port.ForGuest.Enqueue(f1);
        port.ForGuest.Enqueue(f2);
        port.ForGuest.Enqueue(f3);
        PlaceTx(0, []);
        PlaceRx(0, 2, firstId: 7); // room for the first frame and half the second
        FrontendConnects(a, split: true);
        WaitFor(a, XenbusState.Connected);
        var rsp = Responses<NetifRxRequest, NetifRxResponse>(RxRingGfn(0), 1);
        Assert.Equal(7, rsp[0].Id);
        Assert.Equal(f1.Length, rsp[0].Status);
        Assert.Equal(0, rsp[0].Flags & NETRXF_more_data);
        Assert.Equal(f1, RxPage(0, 0)[..f1.Length]);

        // The backend waits for buffers: it asked to be notified at the guest's next request (req_event = req_prod + 1).
        var ring = new byte[Page];
        _hv.ReadGuestMemory(_dom, RxRingGfn(0) * Page, ring);
        Assert.Equal(3u, BinaryPrimitives.ReadUInt32LittleEndian(ring.AsSpan(Ring.OffsetReqEvent)));
        // More buffers, and the event that says so: the second and third frames follow.
        PostRx(0, 2, 3, firstId: 20);
        port.Poke();
        rsp = Responses<NetifRxRequest, NetifRxResponse>(RxRingGfn(0), 4);
        Assert.Equal(new ushort[] { 7, 8, 20, 21 }, rsp.Select(r => r.Id));
        Assert.Equal(new short[] { (short)f1.Length, Page, (short)(f2.Length - Page), (short)f3.Length }, rsp.Select(r => r.Status));
        Assert.Equal(new[] { 0, NETRXF_more_data, 0, 0 }, rsp.Select(r => r.Flags & NETRXF_more_data));
        Assert.Equal(f2[..Page], RxPage(0, 1));
        Assert.Equal(f2[Page..], RxPage(0, 2)[..(f2.Length - Page)]);
        Assert.Equal(f3, RxPage(0, 3)[..f3.Length]);
        Assert.Equal(3, Backend(a).Statistics.RxPackets);
    }

    [Fact]
    public void ALargeTcpSegmentGoesToTheGuestWholeWithItsGsoExtraAfterTheFirstSlot()
    {
        _offloads = true;
        byte[] seg = Frame(10000, seed: 6), small = Frame(80, seed: 8);
        var a = AddVif();
        WaitFor(a, XenbusState.InitWait);
        var port = _ports[$"vif{_dom}.0"];
        // A 10000-byte TCP segment the host left whole (MSS 1448, checksum partial), then a complete frame.
        port.ForGuest.Enqueue(seg);
        port.ForGuestOffloads.Enqueue(new VifOffload(true, 34, 16, VifGso.TcpV4, 1448, 54));
        port.ForGuest.Enqueue(small);
        port.ForGuestOffloads.Enqueue(VifOffload.None);
        PlaceTx(0, []);
        PlaceRx(0, RxPages, firstId: 40);
        FrontendConnects(a, gso: true);
        WaitFor(a, XenbusState.Connected);
        Assert.Equal((true, true, true), port.ReceiveOffloads);
        var rsp = Responses<NetifRxRequest, NetifRxResponse>(RxRingGfn(0), 5);
        Assert.Equal(5, rsp.Count);
        // First data slot, the GSO extra in the slot after it, the other two data slots, then the small frame.
        Assert.Equal(40, rsp[0].Id);
        Assert.Equal(Page, rsp[0].Status);
        Assert.Equal(NETRXF_more_data | NETRXF_extra_info | NETRXF_csum_blank | NETRXF_data_validated, (int)rsp[0].Flags);
        var r1 = rsp[1];
        var extra = *(NetifExtraInfo*)&r1;
        Assert.Equal(XEN_NETIF_EXTRA_TYPE_GSO, extra.Type);
        Assert.Equal(0, extra.Flags & XEN_NETIF_EXTRA_FLAG_MORE);
        Assert.Equal(XEN_NETIF_GSO_TYPE_TCPV4, extra.GsoType);
        Assert.Equal(1448, extra.GsoSize);
        Assert.Equal(new ushort[] { 42, 43 }, rsp.Skip(2).Take(2).Select(r => r.Id));
        Assert.Equal(new short[] { Page, (short)(seg.Length - 2 * Page) }, rsp.Skip(2).Take(2).Select(r => r.Status));
        Assert.Equal(new[] { NETRXF_more_data, 0 }, rsp.Skip(2).Take(2).Select(r => (int)r.Flags));
        Assert.Equal(seg[..Page], RxPage(0, 0));
        Assert.Equal(seg[Page..(2 * Page)], RxPage(0, 2));
        Assert.Equal(seg[(2 * Page)..], RxPage(0, 3)[..(seg.Length - 2 * Page)]);
        Assert.Equal(44, rsp[4].Id);
        Assert.Equal(0, (int)rsp[4].Flags);
        Assert.Equal(small, RxPage(0, 4)[..small.Length]);
        Assert.Equal(2, Backend(a).Statistics.RxPackets);
    }

    [Fact]
    public void WithoutTheFrontendsGsoFeaturesNoReceiveOffloadIsAskedFor()
    {
        _offloads = true;
        var a = AddVif();
        WaitFor(a, XenbusState.InitWait);
        var port = _ports[$"vif{_dom}.0"];
        // A port that hands a GSO frame all the same: it cannot be described, so it is dropped.
        port.ForGuest.Enqueue(Frame(10000, seed: 6));
        port.ForGuestOffloads.Enqueue(new VifOffload(true, 34, 16, VifGso.TcpV4, 1448, 54));
        PlaceTx(0, []);
        PlaceRx(0, RxPages, firstId: 40);
        FrontendConnects(a);
        WaitFor(a, XenbusState.Connected);
        Assert.Equal((false, false, false), port.ReceiveOffloads);
        WaitUntil(() => Backend(a).Statistics.RxFailed == 1, "the undescribable frame was not dropped");
        Assert.Equal(0, Backend(a).Statistics.RxPackets);
    }

    [Fact]
    public void AFrontendWithoutRxCopyIsRefusedAsNetbackRefusesIt()
    {
        PlaceTx(0, []);
        PlaceRx(0, 0, 0);
        var a = AddVif();
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a, rxCopy: false);
        WaitFor(a, XenbusState.Closing);
        Assert.Contains("does not support rx-copy", _xs.Read($"{a.ErrorPath}/error"));
    }
}
