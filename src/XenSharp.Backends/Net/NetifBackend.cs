using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using XenSharp.Backends.Rings;
using XenSharp.Backends.Xenbus;
using XenSharp.Dom0;
using XenSharp.Public;
using XenSharp.Public.Io;
using static XenSharp.Public.Io.Netif;

namespace XenSharp.Backends.Net;

/// <summary>Frames a vif has moved and refused (Linux netback's statistics, from the host's side: tx is the guest's sending).</summary>
public sealed class NetifStatistics
{
    internal long TxFrames, TxBytes, TxErrors, TxDropped, RxFrames, RxBytes, RxDropped;
    /// <summary>Frames the guest sent that reached the host end.</summary>
    public long TxPackets => Volatile.Read(ref TxFrames);
    public long TxOctets => Volatile.Read(ref TxBytes);
    /// <summary>Frames the guest sent that were answered NETIF_RSP_ERROR (bad slots or grants, GSO where it is not offered).</summary>
    public long TxFailed => Volatile.Read(ref TxErrors);
    /// <summary>Frames the host end refused.</summary>
    public long TxRefused => Volatile.Read(ref TxDropped);
    public long RxPackets => Volatile.Read(ref RxFrames);
    public long RxOctets => Volatile.Read(ref RxBytes);
    /// <summary>Frames for the guest that could not be delivered (too large for its buffers, a bad grant).</summary>
    public long RxFailed => Volatile.Read(ref RxDropped);
}

/// <summary>
/// A PV network interface (device/vif/N): Xen's netif protocol served onto a host port (<see cref="IVifPort"/>,
/// a TAP device named vifD.N by default), the part Linux's xen-netback plays. The port is created before
/// InitWait, so the toolstack's hotplug script can put it on a bridge, and lives as long as the device.
/// On connect the frontend's transmit and receive ring pages are mapped, for each of its queues (up to
/// <see cref="MaxQueues"/>, <c>multi-queue-max-queues</c>; one event channel per queue, or one per ring with
/// <c>feature-split-event-channels</c>), with
/// <c>request-rx-copy</c> and <c>feature-rx-notify</c> required as netback requires them.
/// Transmit: each packet's slots (up to <see cref="MaxSlots"/>; <c>feature-sg</c>) are copied with one batched
/// grant copy into one preallocated frame, its checksum completed when the frontend left it blank, and the frame
/// written to the port. Receive: frames read from the port are copied into the guest's posted pages, a page per
/// slot. Garbage that only spoils one packet (slot sizes that do not add up, a bad grant, too many slots) fails
/// that packet; garbage that leaves the ring unreadable (a slot crossing its page, far too many slots, missing or
/// unknown extra info, a producer beyond the ring) disables the vif as netback's fatal errors do: the reason goes
/// to the error node and the backend closes. Where the port <see cref="IVifPort.Offloads"/>, blank checksums are
/// left partial and TCP GSO (<c>feature-gso-tcpv4/6</c>) is offered, the host cutting the segments; otherwise
/// checksums are completed here and GSO is not offered. Towards the guest, where netfront takes them, the port hands
/// partial checksums (NETRXF_csum_blank) and whole TCP segments of up to 64 KiB (a GSO extra-info slot). A backend <c>rate</c> node limits transmit with netback's
/// credit scheme (credit per interval; a packet beyond it waits on the ring for the credit timer). Frames towards the guest go to a queue by their flow's hash, or by
/// the Toeplitz hash and table the frontend set over the control ring (<see cref="NetifHash"/>).
/// Not served: multicast control.
/// </summary>
internal sealed unsafe class NetifBackend(BackendContext context, DeviceAddress address) : BackendDevice(context, address)
{
    private const int PageSize = 4096;
    private const int EthHeader = 14;
    /// <summary>Data slots a packet may use (netback's XEN_NETBK_LEGACY_SLOTS_MAX); more drop the packet.</summary>
    public const int MaxSlots = XEN_NETIF_NR_SLOTS_MIN;
    /// <summary>Slots beyond which a packet is not a mistake but garbage (netback's fatal_skb_slots default).</summary>
    public const int FatalSlots = 20;
    /// <summary>Extra-info slots a packet may carry (one per type).</summary>
    private const int MaxExtras = XEN_NETIF_EXTRA_TYPE_MAX - 1;
    /// <summary>The largest frame either way: what a transmit packet's 16-bit size can say.</summary>
    public const int MaxFrame = XEN_NETIF_MAX_TX_SIZE;
    /// <summary>The largest frame towards the guest: a 64 KiB IP packet (a TCP segment the host left whole) behind an
    /// Ethernet header with a VLAN tag.</summary>
    private const int RxMaxFrame = MaxFrame + EthHeader + 4;
    private const int RxMaxSlots = (RxMaxFrame + PageSize - 1) / PageSize;

    /// <summary>Queues offered (<c>multi-queue-max-queues</c>); netfront takes one per vCPU up to this. One I/O
    /// thread serves them all, so more queues cost a frontend's rings and nothing here.</summary>
    public const int MaxQueues = 8;

    /// <summary>One queue (netif.h's <c>queue-N</c>, or the frontend's own directory when it uses one): its rings and
    /// the local ports that tell the frontend of their responses (the same one unless split).</summary>
    private sealed class NetifQueue(BackRing<NetifTxRequest, NetifTxResponse> tx, BackRing<NetifRxRequest, NetifRxResponse> rx,
        uint txPort, uint rxPort)
    {
        public readonly BackRing<NetifTxRequest, NetifTxResponse> Tx = tx;
        public readonly BackRing<NetifRxRequest, NetifRxResponse> Rx = rx;
        public readonly uint TxPort = txPort, RxPort = rxPort;
    }

    private IVifPort? _port;
    private NetifQueue[] _queues = [];
    /// <summary>The control ring, where the frontend provided one, and its port.</summary>
    private BackRing<NetifCtrlRequest, NetifCtrlResponse>? _ctrl;
    private uint _ctrlPort;
    /// <summary>The frontend's steering of frames to queues, set over the control ring.</summary>
    private readonly NetifHash _hash = new();
    private bool _frontendSg;
    private byte* _txFrame, _rxFrame;
    /// <summary>A frame read from the port that waits for enough receive slots on its queue.</summary>
    private int _rxPending;
    /// <summary>The queue the pending frame goes to (its flow's, <see cref="FlowHash"/>).</summary>
    private int _rxQueue;
    /// <summary>What the host left the guest to do to the pending frame (a partial checksum, a GSO segment).</summary>
    private VifOffload _rxOffload;
    /// <summary>Whether the port hands partial checksums and large TCP segments, as the frontend asked at connect.</summary>
    private bool _rxOffloads;
    private readonly GrantCopyOp[] _copies = GC.AllocateArray<GrantCopyOp>(Math.Max(MaxSlots, RxMaxSlots), pinned: true);
    /// <summary>The slots of the packet being taken, in ring order, data and extra alike.</summary>
    private readonly NetifTxRequest[] _slots = new NetifTxRequest[FatalSlots + MaxExtras + 1];
    private readonly bool[] _isExtra = new bool[FatalSlots + MaxExtras + 1];
    /// <summary>The requests a frame towards the guest takes: its data slots and one for the GSO extra info.</summary>
    private readonly NetifRxRequest[] _rxSlots = new NetifRxRequest[RxMaxSlots + 1];

    // ---- rate limit (netback's credit scheme: the backend node rate = "BYTES,USECS") ----
    /// <summary>A burst the credit may build up to however small the rate (netback's 128 KiB, for GSO packets).</summary>
    private const ulong MinBurst = 131072;
    /// <summary>Bytes the guest may send per interval; 0 ticks means no limit.</summary>
    private ulong _creditBytes;
    private long _creditTicks;
    private ulong _remainingCredit;
    /// <summary>When the current credit interval began (Stopwatch ticks).</summary>
    private long _creditWindowStart;
    /// <summary>Set while the guest's transmit waits for the next interval: the timer kicks the backend then.</summary>
    private bool _creditWaiting;
    private int _creditRefill;
    private Timer? _creditTimer;

    public NetifStatistics Statistics { get; } = new();

    /// <summary>The host end while the device has one.</summary>
    public IVifPort? Port => Volatile.Read(ref _port);

    // ---- xenbus ----

    protected override void Initialise()
    {
        if (_port is null)
        {
            // The toolstack marks a user-mode vif (passt) with network=user and its forwarded ports; any other is a TAP.
            string name = VifPorts.InterfaceName(Address);
            try
            {
                Volatile.Write(ref _port, ReadBackend("network") == "user"
                    ? Context.Options.OpenUserPort(new UserNetwork(name,
                        (ReadBackend("forward") ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries)))
                    : Context.Options.OpenVifPort(name));
            }
            catch (IOException e) { throw new BackendDeviceException(e.HResult < 0 ? -e.HResult : Errno.EIO, e.Message); }
            _port!.Start(Kick);
        }
        WriteBackend("feature-sg", "1");
        WriteBackend("feature-rx-copy", "1");
        WriteBackend("feature-rx-flip", "0");
        WriteBackend("feature-ipv6-csum-offload", "1");
        WriteBackend("feature-split-event-channels", "1");
        WriteBackend("multi-queue-max-queues", MaxQueues.ToString(CultureInfo.InvariantCulture));
        WriteBackend("feature-ctrl-ring", "1");
        // GSO only where the host end cuts large segments itself.
        string gso = _port.Offloads ? "1" : "0";
        WriteBackend("feature-gso-tcpv4", gso);
        WriteBackend("feature-gso-tcpv6", gso);
    }

    protected override void Connect()
    {
        int queues = 1;
        if (ReadFrontend("multi-queue-num-queues") is { } q
            && (!int.TryParse(q, NumberStyles.None, CultureInfo.InvariantCulture, out queues) || queues is < 1 or > MaxQueues))
            throw new BackendDeviceException(Errno.EINVAL, $"{FrontendPath}: {q} queues asked for; at most {MaxQueues} are served");
        if (ReadFrontend("request-rx-copy") != "1")
            throw new BackendDeviceException(Errno.EOPNOTSUPP, $"{FrontendPath}: the frontend does not support rx-copy");
        if (ReadFrontend("feature-rx-notify") != "1")
            throw new BackendDeviceException(Errno.EINVAL, $"{FrontendPath}: feature-rx-notify is mandatory");
        _frontendSg = ReadFrontend("feature-sg") == "1";
        // One queue's keys are the frontend's own; several have theirs under queue-N (netback reads them so).
        var list = new NetifQueue[queues];
        for (int i = 0; i < queues; i++)
            list[i] = ConnectQueue(queues == 1 ? "" : string.Create(CultureInfo.InvariantCulture, $"queue-{i}/"));
        if (_txFrame is null) _txFrame = (byte*)NativeMemory.AlignedAlloc(MaxFrame + 1, PageSize);
        if (_rxFrame is null) _rxFrame = (byte*)NativeMemory.AlignedAlloc(RxMaxSlots * PageSize + 1, PageSize);
        _rxPending = 0;
        // Towards the guest, the port leaves checksums partial and TCP segments whole where netfront takes them
        // (netback's NETIF_F_IP_CSUM/IPV6_CSUM, TSO and TSO6 from the frontend's features).
        bool csum = ReadFrontend("feature-no-csum-offload") != "1" && ReadFrontend("feature-ipv6-csum-offload") == "1";
        _rxOffloads = _port!.SetReceiveOffloads(csum, csum && _frontendSg && ReadFrontend("feature-gso-tcpv4") == "1",
            csum && _frontendSg && ReadFrontend("feature-gso-tcpv6") == "1");
        ReadRate();
        _hash.Reset();
        if (ReadFrontend("ctrl-ring-ref") is not null)
        {
            _ctrl = new BackRing<NetifCtrlRequest, NetifCtrlResponse>((byte*)MapRingRef(ReadFrontendUInt("ctrl-ring-ref")));
            _ctrlPort = BindFrontendEventChannel(ReadFrontendUInt("event-channel-ctrl"));
        }
        _queues = list;
    }

    /// <summary>Maps one queue's rings and binds its event channel(s); <paramref name="dir"/> is "" or "queue-N/".</summary>
    private NetifQueue ConnectQueue(string dir)
    {
        var txPage = (byte*)MapRingRef(ReadFrontendUInt(dir + "tx-ring-ref"));
        var rxPage = (byte*)MapRingRef(ReadFrontendUInt(dir + "rx-ring-ref"));
        uint txPort, rxPort;
        if (ReadFrontend(dir + "event-channel-tx") is not null)
        {
            // Split event channels: one port per ring, each notified for its own ring's responses.
            txPort = BindFrontendEventChannel(ReadFrontendUInt(dir + "event-channel-tx"));
            rxPort = BindFrontendEventChannel(ReadFrontendUInt(dir + "event-channel-rx"));
        }
        else
            txPort = rxPort = BindFrontendEventChannel(ReadFrontendUInt(dir + "event-channel"));
        return new NetifQueue(new BackRing<NetifTxRequest, NetifTxResponse>(txPage), new BackRing<NetifRxRequest, NetifRxResponse>(rxPage),
            txPort, rxPort);
    }

    /// <summary>The backend's <c>rate</c> node as netback reads it: "BYTES,USECS", the bytes the guest may send per
    /// interval; absent or unreadable, the vif is not limited. The credit starts at one interval's worth.</summary>
    private void ReadRate()
    {
        _creditTicks = 0;
        _creditWaiting = false;
        _creditRefill = 0;
        if (ReadBackend("rate") is not { } rate) return;
        int comma = rate.IndexOf(',');
        if (comma < 0
            || !ulong.TryParse(rate.AsSpan(0, comma), NumberStyles.None, CultureInfo.InvariantCulture, out ulong bytes)
            || !ulong.TryParse(rate.AsSpan(comma + 1), NumberStyles.None, CultureInfo.InvariantCulture, out ulong usecs)
            || usecs == 0)
            return;
        _creditBytes = _remainingCredit = bytes;
        _creditTicks = (long)Math.Min((ulong)(long.MaxValue / 2), usecs * (ulong)Stopwatch.Frequency / 1_000_000UL);
        if (_creditTicks == 0) _creditTicks = 1;
        _creditWindowStart = Stopwatch.GetTimestamp();
        _creditTimer ??= new Timer(static s => ((NetifBackend)s!).CreditTimerFired(), this, Timeout.Infinite, Timeout.Infinite);
    }

    /// <summary>The timer's thread only marks the refill and kicks; the I/O thread adds the credit.</summary>
    private void CreditTimerFired()
    {
        Volatile.Write(ref _creditRefill, 1);
        Kick();
    }

    /// <summary>netback's tx_add_credit: one more interval's worth, up to a burst of at least <see cref="MinBurst"/>.</summary>
    private void AddCredit()
    {
        ulong burst = Math.Max(_creditBytes, MinBurst);
        ulong max = _remainingCredit + _creditBytes;
        if (max < _remainingCredit) max = ulong.MaxValue; // overflow
        _remainingCredit = Math.Min(max, burst);
    }

    /// <summary>netback's tx_credit_exceeded: whether a packet of <paramref name="size"/> bytes must wait. A new
    /// interval refills the credit; a packet larger than what remains waits for the next interval, the timer set
    /// to kick the backend then, and the guest's further requests stay on the ring meanwhile.</summary>
    private bool CreditExceeded(uint size)
    {
        if (Interlocked.Exchange(ref _creditRefill, 0) != 0 && _creditWaiting)
        {
            _creditWaiting = false;
            AddCredit();
        }
        if (_creditWaiting) return true;
        long now = Stopwatch.GetTimestamp();
        long next = _creditWindowStart + _creditTicks;
        if (now >= next)
        {
            _creditWindowStart = now;
            AddCredit();
        }
        if (size <= _remainingCredit) return false;
        _creditWindowStart = next;
        _creditWaiting = true;
        long ms = Math.Max(1, (next - now) * 1000 / Stopwatch.Frequency);
        _creditTimer?.Change(ms, Timeout.Infinite);
        return true;
    }

    protected override void Disconnect()
    {
        if (_rxOffloads) _port?.SetReceiveOffloads(false, false, false);
        _rxOffloads = false;
        _queues = [];
        _ctrl = null;
        _ctrlPort = 0;
        _rxPending = 0;
    }

    protected override void Removed()
    {
        Interlocked.Exchange(ref _port, null)?.Dispose();
        _creditTimer?.Dispose();
        _creditTimer = null;
        if (_txFrame is not null) NativeMemory.AlignedFree(_txFrame);
        if (_rxFrame is not null) NativeMemory.AlignedFree(_rxFrame);
        _txFrame = _rxFrame = null;
    }

    /// <summary>The frontend notified, or the port has frames: serve every queue's rings, then notify each port
    /// once if asked.</summary>
    protected override void ProcessEvents()
    {
        var queues = _queues;
        if (queues.Length == 0 || _port is not { } port) return;
        if (_ctrl is { } ctrl && ServeControl(ctrl, queues.Length)) NotifyFrontend(_ctrlPort);
        ulong txNotify = 0;
        for (int i = 0; i < queues.Length; i++)
            if (ServeTransmit(queues[i].Tx, port)) txNotify |= 1UL << i;
        ulong rxNotify = ServeReceive(queues, port);
        for (int i = 0; i < queues.Length; i++)
        {
            var q = queues[i];
            bool tx = (txNotify & (1UL << i)) != 0, rx = (rxNotify & (1UL << i)) != 0;
            if (q.TxPort == q.RxPort)
            {
                if (tx || rx) NotifyFrontend(q.TxPort);
                continue;
            }
            if (tx) NotifyFrontend(q.TxPort);
            if (rx) NotifyFrontend(q.RxPort);
        }
    }

    // ---- the control ring ----

    /// <summary>Answers every control request waiting (<see cref="NetifHash"/>); returns whether to notify.</summary>
    private bool ServeControl(BackRing<NetifCtrlRequest, NetifCtrlResponse> ctrl, int queues)
    {
        bool notify = false;
        while (true)
        {
            var check = ctrl.CheckForRequests(out uint count);
            if (check == RingCheck.Empty)
                check = ctrl.FinalCheckForRequests(out count);
            if (check == RingCheck.Overflow)
                throw new BackendDeviceException(Errno.EBADMSG, "the frontend's control request producer ran beyond the ring");
            if (check == RingCheck.Empty)
                return notify;
            for (; count > 0; count--)
            {
                ctrl.TakeRequest(out var request);
                ctrl.NextResponse() = _hash.Handle(request, Dom0, (ushort)Address.FrontendId, queues);
            }
            notify |= ctrl.PushResponsesAndCheckNotify();
        }
    }

    // ---- transmit: guest → host ----

    private bool ServeTransmit(BackRing<NetifTxRequest, NetifTxResponse> tx, IVifPort port)
    {
        bool notify = false;
        while (true)
        {
            var check = tx.CheckForRequests(out uint count);
            if (check == RingCheck.Empty)
                check = tx.FinalCheckForRequests(out count);
            if (check == RingCheck.Overflow)
                throw new BackendDeviceException(Errno.EBADMSG, "the frontend's tx request producer ran beyond the ring");
            if (check == RingCheck.Empty)
                return notify;
            while (count > 0)
            {
                if (_creditTicks != 0)
                {
                    // Over the rate: the packet stays on the ring until the credit timer kicks the backend.
                    tx.PeekRequest(out var next);
                    if (CreditExceeded(next.Size)) return notify;
                }
                uint size = TransmitOne(tx, port, ref count);
                if (_creditTicks != 0) _remainingCredit -= Math.Min(size, _remainingCredit);
                notify |= tx.PushResponsesAndCheckNotify();
            }
        }
    }

    /// <summary>Takes the next request slot of the packet; a packet that promises slots the frontend has not
    /// produced is garbage (netback: "Need more slots").</summary>
    private NetifTxRequest Take(BackRing<NetifTxRequest, NetifTxResponse> tx, ref uint count)
    {
        if (count == 0)
        {
            if (tx.CheckForRequests(out count) != RingCheck.Requests)
                throw new BackendDeviceException(Errno.EINVAL, "a tx packet runs past the requests produced");
        }
        count--;
        tx.TakeRequest(out var r);
        return r;
    }

    /// <summary>One packet: its slots taken and checked, its data copied, its frame sent, every slot answered.
    /// Returns the size its first slot gave, what the rate limit charges.</summary>
    private uint TransmitOne(BackRing<NetifTxRequest, NetifTxResponse> tx, IVifPort port, ref uint count)
    {
        int n = 0, data = 0;
        short status = NETIF_RSP_OKAY;
        byte gsoType = XEN_NETIF_GSO_TYPE_NONE;
        ushort gsoSize = 0;
        var first = Take(tx, ref count);
        _slots[n] = first;
        _isExtra[n++] = false;
        data++;
        ushort flags = first.Flags;
        if ((first.Flags & NETTXF_extra_info) != 0)
        {
            // Extra-info slots follow the first, each flagged when another follows.
            byte more;
            do
            {
                if (n > MaxExtras)
                    throw new BackendDeviceException(Errno.EINVAL, "a tx packet carries more extra info slots than there are types");
                var slot = Take(tx, ref count);
                _slots[n] = slot;
                _isExtra[n++] = true;
                var extra = *(NetifExtraInfo*)&slot;
                if (extra.Type is XEN_NETIF_EXTRA_TYPE_NONE or >= XEN_NETIF_EXTRA_TYPE_MAX)
                    throw new BackendDeviceException(Errno.EINVAL, $"a tx packet carries extra info of unknown type {extra.Type}");
                if (extra.Type == XEN_NETIF_EXTRA_TYPE_GSO)
                {
                    if (extra.GsoSize == 0)
                        throw new BackendDeviceException(Errno.EINVAL, "a tx packet's GSO size is zero");
                    if (extra.GsoType is not (XEN_NETIF_GSO_TYPE_TCPV4 or XEN_NETIF_GSO_TYPE_TCPV6))
                        throw new BackendDeviceException(Errno.EINVAL, $"a tx packet's GSO type {extra.GsoType} is unknown");
                    if (!port.Offloads) status = NETIF_RSP_ERROR; // not offered: the packet cannot be segmented here
                    gsoType = extra.GsoType;
                    gsoSize = extra.GsoSize;
                }
                more = (byte)(extra.Flags & XEN_NETIF_EXTRA_FLAG_MORE);
            } while (more != 0);
        }
        // The further data slots: each one's size is its own; the first slot keeps what remains.
        int remaining = first.Size;
        var last = first;
        while ((last.Flags & NETTXF_more_data) != 0)
        {
            if (data >= FatalSlots)
                throw new BackendDeviceException(Errno.E2BIG, $"a tx packet asks for more than {FatalSlots} slots");
            last = Take(tx, ref count);
            _slots[n] = last;
            _isExtra[n++] = false;
            data++;
            if (last.Size > remaining) status = NETIF_RSP_ERROR; // the slots add up to more than the packet
            else remaining -= last.Size;
        }
        if (data > MaxSlots) status = NETIF_RSP_ERROR;
        if (first.Size < EthHeader) status = NETIF_RSP_ERROR;

        // Offsets are checked on every slot: a fragment crossing its page is garbage.
        for (int i = 0, k = 0; i < n; i++)
        {
            if (_isExtra[i]) continue;
            var s = _slots[i];
            int len = k == 0 ? remaining : s.Size;
            if (s.Offset + len > PageSize)
                throw new BackendDeviceException(Errno.EINVAL, $"a tx slot crosses its page: offset {s.Offset}, size {len}");
            k++;
        }

        int bytes = 0;
        var offload = VifOffload.None;
        if (status == NETIF_RSP_OKAY)
        {
            int ops = 0;
            for (int i = 0; i < n; i++)
            {
                if (_isExtra[i]) continue;
                var s = _slots[i];
                int len = ops == 0 ? remaining : s.Size;
                _copies[ops++] = new GrantCopyOp
                {
                    Dom = (ushort)Address.FrontendId, Ref = s.Gref, Offset = s.Offset, Length = (ushort)len, Local = _txFrame + bytes,
                };
                bytes += len;
            }
            var copies = _copies.AsSpan(0, ops);
            GrantBatch.Copy(Dom0, copies);
            foreach (ref readonly var c in copies)
                if (c.Status != GrantTable.GNTST_okay) status = NETIF_RSP_ERROR;
        }
        if (status == NETIF_RSP_OKAY)
        {
            var frame = new Span<byte>(_txFrame, bytes);
            if ((flags & NETTXF_csum_blank) != 0 || gsoType != XEN_NETIF_GSO_TYPE_NONE)
                status = PrepareChecksum(frame, port.Offloads, gsoType, gsoSize, out offload);
        }
        if (status == NETIF_RSP_OKAY)
        {
            if (port.Send(new Span<byte>(_txFrame, bytes), offload) == 0)
            {
                Interlocked.Increment(ref Statistics.TxFrames);
                Interlocked.Add(ref Statistics.TxBytes, bytes);
            }
            else Interlocked.Increment(ref Statistics.TxDropped); // as a full queue drops: the guest's send succeeded
        }
        else Interlocked.Increment(ref Statistics.TxErrors);

        for (int i = 0; i < n; i++)
            tx.NextResponse() = new NetifTxResponse { Id = _slots[i].Id, Status = _isExtra[i] ? NETIF_RSP_NULL : status };
        return first.Size;
    }

    /// <summary>A blank checksum completed here, or left partial for a host end that finishes it; a GSO packet
    /// described for the host to cut. A GSO packet that is no TCP segment of its IP version is an error.</summary>
    private static short PrepareChecksum(Span<byte> frame, bool offloads, byte gsoType, ushort gsoSize, out VifOffload offload)
    {
        offload = VifOffload.None;
        if (!offloads)
        {
            Checksum.Complete(frame);
            return NETIF_RSP_OKAY;
        }
        if (!Checksum.TryLocate(frame, out var t) || t.Offset + t.Length != frame.Length)
        {
            // Not TCP/UDP, or padded beyond the IP packet: finish here what can be finished.
            if (gsoType != XEN_NETIF_GSO_TYPE_NONE) return NETIF_RSP_ERROR;
            Checksum.Complete(frame);
            return NETIF_RSP_OKAY;
        }
        var gso = VifGso.None;
        if (gsoType != XEN_NETIF_GSO_TYPE_NONE)
        {
            bool v6 = frame[12] == 0x86 || (frame[12] == 0x81 && frame[16] == 0x86);
            if (t.Protocol != Transport.Tcp || v6 != (gsoType == XEN_NETIF_GSO_TYPE_TCPV6)) return NETIF_RSP_ERROR;
            gso = v6 ? VifGso.TcpV6 : VifGso.TcpV4;
        }
        Checksum.MakePartial(frame, out _);
        offload = new VifOffload(true, (ushort)t.Offset, (ushort)t.Field, gso, gso == VifGso.None ? (ushort)0 : gsoSize,
            (ushort)(t.Offset + t.HeaderLength));
        return NETIF_RSP_OKAY;
    }

    // ---- receive: host → guest ----

    /// <summary>Frames from the port into the guest, each on its flow's queue; returns the queues to notify (a bit
    /// each). A frame whose queue has too few buffers posted waits, and the frames behind it with it.</summary>
    private ulong ServeReceive(NetifQueue[] queues, IVifPort port)
    {
        ulong notify = 0;
        while (true)
        {
            if (_rxPending == 0)
            {
                int got = port.Receive(new Span<byte>(_rxFrame, RxMaxFrame + 1), out _rxOffload);
                if (got <= 0) break;
                if (got > RxMaxFrame || (!_frontendSg && got > PageSize) || (!_rxOffloads && _rxOffload != VifOffload.None))
                {
                    Interlocked.Increment(ref Statistics.RxDropped); // cannot be described to the guest
                    continue;
                }
                _rxPending = got;
                var frame = new ReadOnlySpan<byte>(_rxFrame, got);
                _rxQueue = queues.Length == 1 ? 0
                    : _hash.Active ? _hash.QueueOf(frame, queues.Length)
                    : (int)(FlowHash(frame) % (uint)queues.Length);
            }
            var rx = queues[_rxQueue].Rx;
            int slots = (_rxPending + PageSize - 1) / PageSize + (_rxOffload.Gso != VifGso.None ? 1 : 0);
            var check = rx.CheckForRequests(out uint count);
            if (check != RingCheck.Overflow && count < slots)
                check = rx.NotifyOnMoreRequests(out count); // the guest notifies when it posts more buffers
            if (check == RingCheck.Overflow)
                throw new BackendDeviceException(Errno.EBADMSG, "the frontend's rx request producer ran beyond the ring");
            if (count < slots) break;
            Deliver(rx, slots);
            if (rx.PushResponsesAndCheckNotify()) notify |= 1UL << _rxQueue;
        }
        return notify;
    }

    /// <summary>A hash of a frame's flow (IP addresses, and TCP/UDP ports where the packet is no fragment), so that
    /// a flow keeps to one queue and its packets to their order; other frames hash by their EtherType.</summary>
    internal static uint FlowHash(ReadOnlySpan<byte> frame)
    {
        if (frame.Length < EthHeader) return 0;
        int at = 12;
        int type = frame[at] << 8 | frame[at + 1];
        if (type == 0x8100 && frame.Length >= EthHeader + 4)
        {
            at += 4;
            type = frame[at] << 8 | frame[at + 1];
        }
        var ip = frame[(at + 2)..];
        uint h = 2166136261;
        int proto, ports;
        if (type == 0x0800 && ip.Length >= 20)
        {
            int ihl = (ip[0] & 15) * 4;
            Mix(ref h, ip.Slice(12, 8));
            proto = ip[9];
            bool fragment = (ip[6] & 0x3f) != 0 || ip[7] != 0;
            ports = fragment ? -1 : ihl;
        }
        else if (type == 0x86dd && ip.Length >= 40)
        {
            Mix(ref h, ip.Slice(8, 32));
            proto = ip[6];
            ports = 40;
        }
        else
        {
            Mix(ref h, frame.Slice(at, 2));
            return h;  // one queue for all such frames
        }
        if ((proto is 6 or 17) && ports >= 0 && ip.Length >= ports + 4)
            Mix(ref h, ip.Slice(ports, 4));
        // FNV's low bits are only the bytes' parity; a final mix (MurmurHash3's) lets every bit count for the modulo.
        h ^= h >> 16;
        h *= 0x85ebca6b;
        h ^= h >> 13;
        h *= 0xc2b2ae35;
        return h ^ h >> 16;

        static void Mix(ref uint h, ReadOnlySpan<byte> bytes)
        {
            foreach (byte b in bytes) h = (h ^ b) * 16777619; // FNV-1a
        }
    }

    /// <summary>Copies the pending frame into the next posted pages, a page each, and answers them; a GSO segment's
    /// extra info takes the slot after its first, as netfront reads it (<paramref name="slots"/> counts it).</summary>
    private void Deliver(BackRing<NetifRxRequest, NetifRxResponse> rx, int slots)
    {
        int length = _rxPending;
        _rxPending = 0;
        var offload = _rxOffload;
        bool gso = offload.Gso != VifGso.None;
        int data = gso ? slots - 1 : slots;
        for (int i = 0; i < slots; i++)
            rx.TakeRequest(out _rxSlots[i]);
        for (int i = 0; i < data; i++)
        {
            int len = Math.Min(PageSize, length - i * PageSize);
            _copies[i] = new GrantCopyOp
            {
                Dom = (ushort)Address.FrontendId, Ref = _rxSlots[RequestOf(i, gso)].Gref, Length = (ushort)len, ToGuest = true,
                Local = _rxFrame + i * PageSize,
            };
        }
        var copies = _copies.AsSpan(0, data);
        GrantBatch.Copy(Dom0, copies);
        bool ok = true;
        foreach (ref readonly var c in copies)
            if (c.Status != GrantTable.GNTST_okay) ok = false;
        for (int i = 0; i < data; i++)
        {
            ushort flags = i < data - 1 ? NETRXF_more_data : (ushort)0;
            if (i == 0)
            {
                // A partial checksum is blank for netfront to leave to the stack; the data are as the host sent them.
                if (offload.NeedsChecksum) flags |= NETRXF_csum_blank | NETRXF_data_validated;
                if (gso) flags |= NETRXF_extra_info;
            }
            // A failed copy fails the whole frame: every slot says so, so the guest drops it entire.
            short status = ok ? (short)copies[i].Length : NETIF_RSP_ERROR;
            rx.NextResponse() = new NetifRxResponse { Id = _rxSlots[RequestOf(i, gso)].Id, Offset = 0, Flags = flags, Status = status };
            if (i == 0 && gso)
            {
                var extra = new NetifExtraInfo
                {
                    Type = XEN_NETIF_EXTRA_TYPE_GSO,
                    GsoSize = offload.GsoSize,
                    GsoType = offload.Gso == VifGso.TcpV4 ? XEN_NETIF_GSO_TYPE_TCPV4 : XEN_NETIF_GSO_TYPE_TCPV6,
                };
                ref var slot = ref rx.NextResponse();
                slot = default;
                *(NetifExtraInfo*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref slot) = extra;
            }
        }
        if (ok)
        {
            Interlocked.Increment(ref Statistics.RxFrames);
            Interlocked.Add(ref Statistics.RxBytes, length);
        }
        else Interlocked.Increment(ref Statistics.RxDropped);
    }

    /// <summary>The request (in the order taken) whose page holds data slot <paramref name="i"/>: the extra info takes the second.</summary>
    private static int RequestOf(int i, bool gso) => gso && i > 0 ? i + 1 : i;

    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"vif {Address} on {_port?.Name}");
}
