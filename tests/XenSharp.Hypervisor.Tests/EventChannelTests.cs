using XenSharp.Public;
using static XenSharp.Public.EventChannel;

namespace XenSharp.Hypervisor.Tests;

internal static class Evtchn
{
    public static long Op<T>(Guest g, int cmd, ref T arg, int vcpu = 0) where T : unmanaged =>
        g.Call(Xen.__HYPERVISOR_event_channel_op, (ulong)cmd, ref arg, vcpu);

    public static uint AllocUnbound(Guest g, ushort remote)
    {
        var a = new EvtchnAllocUnbound { Dom = Xen.DOMID_SELF, RemoteDom = remote };
        Assert.Equal(0, Op(g, EVTCHNOP_alloc_unbound, ref a));
        return a.Port;
    }

    public static uint BindInterdomain(Guest g, ushort remote, uint remotePort)
    {
        var b = new EvtchnBindInterdomain { RemoteDom = remote, RemotePort = remotePort };
        Assert.Equal(0, Op(g, EVTCHNOP_bind_interdomain, ref b));
        return b.LocalPort;
    }

    public static uint BindIpi(Guest g, uint vcpu)
    {
        var b = new EvtchnBindIpi { Vcpu = vcpu };
        Assert.Equal(0, Op(g, EVTCHNOP_bind_ipi, ref b));
        return b.Port;
    }

    public static long Send(Guest g, uint port)
    {
        var s = new EvtchnSend { Port = port };
        return Op(g, EVTCHNOP_send, ref s);
    }

    public static long Close(Guest g, uint port)
    {
        var c = new EvtchnClose { Port = port };
        return Op(g, EVTCHNOP_close, ref c);
    }

    public static long Unmask(Guest g, uint port)
    {
        var u = new EvtchnUnmask { Port = port };
        return Op(g, EVTCHNOP_unmask, ref u);
    }

    public static EvtchnStatus Status(Guest g, uint port)
    {
        var s = new EvtchnStatus { Dom = Xen.DOMID_SELF, Port = port };
        Assert.Equal(0, Op(g, EVTCHNOP_status, ref s));
        return s;
    }
}

[Trait("Feature", "Event Channel 2-level ABI")]
public unsafe class EventChannel2LTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private static bool Pending(Guest g, uint port) => (g.Domain.SharedInfo->EvtchnPending[port / 64] & (1UL << (int)(port % 64))) != 0;
    private static void Mask(Guest g, uint port) => g.Domain.SharedInfo->EvtchnMask[port / 64] |= 1UL << (int)(port % 64);
    private static void ClearUpcall(Guest g, int vcpu = 0)
    {
        var vi = g.Vcpu(vcpu).VcpuInfo;
        vi->EvtchnUpcallPending = 0;
        vi->EvtchnPendingSel = 0;
        for (int i = 0; i < 64; i++)
            g.Domain.SharedInfo->EvtchnPending[i] = 0;
    }

    [Fact]
    public void InterdomainSendRaisesThePeer()
    {
        var a = new Guest(_host);
        var b = new Guest(_host);
        uint pa = Evtchn.AllocUnbound(a, b.Id);
        Assert.Equal(EVTCHNSTAT_unbound, Evtchn.Status(a, pa).Status);
        uint pb = Evtchn.BindInterdomain(b, a.Id, pa);
        var st = Evtchn.Status(b, pb);
        Assert.Equal(EVTCHNSTAT_interdomain, st.Status);
        Assert.Equal(a.Id, st.InterdomainDom);
        Assert.Equal(pa, st.InterdomainPort);
        ClearUpcall(a);
        ClearUpcall(b);

        Assert.Equal(0, Evtchn.Send(b, pb));
        Assert.True(Pending(a, pa));
        Assert.Equal(1, a.Vcpu().VcpuInfo->EvtchnUpcallPending);
        Assert.NotEqual(0UL, a.Vcpu().VcpuInfo->EvtchnPendingSel & (1UL << (int)(pa / 64)));
        Assert.True(a.Vcpu().HasPendingInterrupt == false); // no callback vector registered yet
        a.Host.SetHvmParam(a.Id, Public.Hvm.Params.HVM_PARAM_CALLBACK_IRQ, (2UL << 56) | 0xF3);
        Assert.True(a.Vcpu().HasPendingInterrupt);
        Assert.Equal(0xF3, a.Vcpu().Acknowledge());

        // Closing one end leaves the other unbound towards the closer.
        Assert.Equal(0, Evtchn.Close(a, pa));
        st = Evtchn.Status(b, pb);
        Assert.Equal(EVTCHNSTAT_unbound, st.Status);
        Assert.Equal(a.Id, st.UnboundDom);
        Assert.Equal(EVTCHNSTAT_closed, Evtchn.Status(a, pa).Status);
        Assert.Equal(0, Evtchn.Send(b, pb)); // dropped silently
    }

    [Fact]
    public void MaskedEventStaysQuietUntilUnmaskReraisesIt()
    {
        var g = new Guest(_host);
        uint port = Evtchn.BindIpi(g, 1);
        Mask(g, port);
        ClearUpcall(g, 1);
        Assert.Equal(0, Evtchn.Send(g, port));
        Assert.True(Pending(g, port));
        Assert.Equal(0, g.Vcpu(1).VcpuInfo->EvtchnUpcallPending);
        Assert.Equal(0, Evtchn.Unmask(g, port));
        Assert.Equal(1, g.Vcpu(1).VcpuInfo->EvtchnUpcallPending);
        Assert.NotEqual(0UL, g.Vcpu(1).VcpuInfo->EvtchnPendingSel);
        Assert.Equal(0, g.Vcpu(0).VcpuInfo->EvtchnUpcallPending);
    }

    [Fact]
    public void VirqBindingRules()
    {
        var g = new Guest(_host);
        var v = new EvtchnBindVirq { Virq = Xen.VIRQ_TIMER, Vcpu = 1 };
        Assert.Equal(0, Evtchn.Op(g, EVTCHNOP_bind_virq, ref v));
        Assert.Equal(EVTCHNSTAT_virq, Evtchn.Status(g, v.Port).Status);
        Assert.Equal((uint)Xen.VIRQ_TIMER, Evtchn.Status(g, v.Port).Virq);
        var again = new EvtchnBindVirq { Virq = Xen.VIRQ_TIMER, Vcpu = 1 };
        Assert.Equal(-Errno.EEXIST, Evtchn.Op(g, EVTCHNOP_bind_virq, ref again));
        var debug = new EvtchnBindVirq { Virq = Xen.VIRQ_DEBUG, Vcpu = 1 };
        Assert.Equal(0, Evtchn.Op(g, EVTCHNOP_bind_virq, ref debug));
        var global = new EvtchnBindVirq { Virq = Xen.VIRQ_CONSOLE, Vcpu = 1 };
        Assert.Equal(-Errno.EINVAL, Evtchn.Op(g, EVTCHNOP_bind_virq, ref global));
        var badVcpu = new EvtchnBindVirq { Virq = Xen.VIRQ_TIMER, Vcpu = 7 };
        Assert.Equal(-Errno.ENOENT, Evtchn.Op(g, EVTCHNOP_bind_virq, ref badVcpu));
        var badVirq = new EvtchnBindVirq { Virq = 99, Vcpu = 0 };
        Assert.Equal(-Errno.EINVAL, Evtchn.Op(g, EVTCHNOP_bind_virq, ref badVirq));
        // A per-vCPU VIRQ cannot move; VIRQs cannot be sent by the guest.
        var bv = new EvtchnBindVcpu { Port = v.Port, Vcpu = 0 };
        Assert.Equal(-Errno.EINVAL, Evtchn.Op(g, EVTCHNOP_bind_vcpu, ref bv));
        Assert.Equal(-Errno.EINVAL, Evtchn.Send(g, v.Port));
        // Once closed, the VIRQ can be bound again.
        Assert.Equal(0, Evtchn.Close(g, v.Port));
        Assert.Equal(0, Evtchn.Op(g, EVTCHNOP_bind_virq, ref again));
    }

    [Fact]
    public void BindVcpuMovesPendingEvents()
    {
        var a = new Guest(_host);
        var b = new Guest(_host);
        uint pa = Evtchn.AllocUnbound(a, b.Id);
        var bv = new EvtchnBindVcpu { Port = pa, Vcpu = 1 };
        Assert.Equal(0, Evtchn.Op(a, EVTCHNOP_bind_vcpu, ref bv));
        Assert.Equal(1u, Evtchn.Status(a, pa).Vcpu);
        uint pb = Evtchn.BindInterdomain(b, a.Id, pa);
        ClearUpcall(a, 0);
        ClearUpcall(a, 1);
        Assert.Equal(0, Evtchn.Send(b, pb));
        Assert.Equal(1, a.Vcpu(1).VcpuInfo->EvtchnUpcallPending);
        Assert.Equal(0, a.Vcpu(0).VcpuInfo->EvtchnUpcallPending);
        bv.Vcpu = 9;
        Assert.Equal(-Errno.ENOENT, Evtchn.Op(a, EVTCHNOP_bind_vcpu, ref bv));
    }

    [Fact]
    public void Errors()
    {
        var g = new Guest(_host);
        var other = new Guest(_host);
        Assert.Equal(-Errno.EINVAL, Evtchn.Send(g, 0));
        Assert.Equal(-Errno.EINVAL, Evtchn.Send(g, 77));
        Assert.Equal(-Errno.EINVAL, Evtchn.Close(g, 77));
        Assert.Equal(-Errno.EINVAL, Evtchn.Unmask(g, 5000));
        var b = new EvtchnBindInterdomain { RemoteDom = other.Id, RemotePort = 3 };
        Assert.Equal(-Errno.EINVAL, Evtchn.Op(g, EVTCHNOP_bind_interdomain, ref b));
        b.RemoteDom = 4000;
        Assert.Equal(-Errno.ESRCH, Evtchn.Op(g, EVTCHNOP_bind_interdomain, ref b));
        // A port offered to someone else cannot be taken.
        uint offered = Evtchn.AllocUnbound(other, 0);
        b = new EvtchnBindInterdomain { RemoteDom = other.Id, RemotePort = offered };
        Assert.Equal(-Errno.EINVAL, Evtchn.Op(g, EVTCHNOP_bind_interdomain, ref b));
        var ipi = new EvtchnBindIpi { Vcpu = 5 };
        Assert.Equal(-Errno.ENOENT, Evtchn.Op(g, EVTCHNOP_bind_ipi, ref ipi));
        var au = new EvtchnAllocUnbound { Dom = other.Id, RemoteDom = 0 };
        Assert.Equal(-Errno.EPERM, Evtchn.Op(g, EVTCHNOP_alloc_unbound, ref au));
        var sp = new EvtchnSetPriority { Port = Evtchn.BindIpi(g, 0), Priority = 3 };
        Assert.Equal(-Errno.ENOSYS, Evtchn.Op(g, EVTCHNOP_set_priority, ref sp));
        var pirq = new EvtchnBindPirq { Pirq = 1 };
        Assert.Equal(-Errno.ENOSYS, Evtchn.Op(g, EVTCHNOP_bind_pirq, ref pirq));
        Assert.Equal(-Errno.ENOSYS, g.Call(Xen.__HYPERVISOR_event_channel_op, 99, Guest.Scratch));
    }

    [Theory]
    [InlineData(EVTCHNOP_alloc_unbound)]
    [InlineData(EVTCHNOP_bind_interdomain)]
    [InlineData(EVTCHNOP_bind_virq)]
    [InlineData(EVTCHNOP_bind_ipi)]
    [InlineData(EVTCHNOP_close)]
    [InlineData(EVTCHNOP_send)]
    [InlineData(EVTCHNOP_status)]
    [InlineData(EVTCHNOP_bind_vcpu)]
    [InlineData(EVTCHNOP_unmask)]
    [InlineData(EVTCHNOP_reset)]
    [InlineData(EVTCHNOP_init_control)]
    [InlineData(EVTCHNOP_expand_array)]
    [InlineData(EVTCHNOP_set_priority)]
    public void BadPointerIsEfault(int cmd)
    {
        var g = new Guest(_host);
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_event_channel_op, (ulong)cmd, Guest.Bad));
    }

    [Fact]
    public void ResetClosesEverything()
    {
        var g = new Guest(_host);
        uint p1 = Evtchn.BindIpi(g, 0);
        uint p2 = Evtchn.AllocUnbound(g, 0);
        var r = new EvtchnReset { Dom = Xen.DOMID_SELF };
        Assert.Equal(0, Evtchn.Op(g, EVTCHNOP_reset, ref r));
        Assert.Equal(EVTCHNSTAT_closed, Evtchn.Status(g, p1).Status);
        Assert.Equal(EVTCHNSTAT_closed, Evtchn.Status(g, p2).Status);
        Assert.Equal(p1, Evtchn.BindIpi(g, 0)); // lowest free port again
    }

    [Fact]
    public void PortSpaceRunsOut()
    {
        var g = new Guest(_host);
        g.Domain.Evtchn.MaxPort = 5;
        for (int i = 0; i < 5; i++)
            Evtchn.BindIpi(g, 0);
        var ipi = new EvtchnBindIpi { Vcpu = 0 };
        Assert.Equal(-Errno.ENOSPC, Evtchn.Op(g, EVTCHNOP_bind_ipi, ref ipi));
    }

    [Fact]
    public void Dom0ChannelsDeliverToHostCallbacks()
    {
        var g = new Guest(_host);
        uint guestPort = _host.Dom0Services.AllocUnboundEventChannel(g.Id);
        int events = 0;
        using var ch = _host.Dom0Services.BindInterdomain(g.Id, guestPort, () => Interlocked.Increment(ref events));
        int afterBind = events;
        ClearUpcall(g);
        Assert.Equal(0, Evtchn.Send(g, guestPort));
        Assert.Equal(afterBind + 1, events);
        ch.Notify();
        Assert.True(Pending(g, guestPort));
        var st = Evtchn.Status(g, guestPort);
        Assert.Equal(EVTCHNSTAT_interdomain, st.Status);
        Assert.Equal((ushort)0, st.InterdomainDom);
        Assert.Equal(ch.LocalPort, st.InterdomainPort);

        // The other direction: Domain-0 offers a port and the guest binds it.
        int back = 0;
        using var offer = _host.Dom0Services.AllocUnboundInDom0(g.Id, () => Interlocked.Increment(ref back));
        uint gp = Evtchn.BindInterdomain(g, 0, offer.LocalPort);
        Assert.Equal(0, Evtchn.Send(g, gp));
        Assert.True(back >= 1);
        Assert.Throws<HypervisorException>(() => _host.Dom0Services.BindInterdomain(g.Id, 999, () => { }));
    }
}

[Trait("Feature", "Event Channel FIFO ABI")]
public unsafe class EventChannelFifoTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private const ulong ControlGfn = 0x100, ArrayGfn = 0x101;

    private static void InitFifo(Guest g, uint vcpu, ulong gfn)
    {
        var ic = new EvtchnInitControl { ControlGfn = gfn, Offset = 0, Vcpu = vcpu };
        Assert.Equal(0, Evtchn.Op(g, EVTCHNOP_init_control, ref ic));
        Assert.Equal((byte)EVTCHN_FIFO_LINK_BITS, ic.LinkBits);
    }

    private static void Expand(Guest g, ulong gfn)
    {
        var ea = new EvtchnExpandArray { ArrayGfn = gfn };
        Assert.Equal(0, Evtchn.Op(g, EVTCHNOP_expand_array, ref ea));
    }

    private static uint Word(Guest g, uint port) => g.Read<uint>(ArrayGfn * 4096 + port * 4);
    private static void SetWord(Guest g, uint port, uint w) => g.Write(ArrayGfn * 4096 + port * 4, w);
    private static EvtchnFifoControlBlock Cb(Guest g, ulong gfn = ControlGfn) => g.Read<EvtchnFifoControlBlock>(gfn * 4096);
    private static uint Head(Guest g, uint prio) => g.Read<uint>(ControlGfn * 4096 + 8 + prio * 4);

    [Fact]
    public void SendLinksIntoTheQueueAndSetsReady()
    {
        var g = new Guest(_host);
        InitFifo(g, 0, ControlGfn);
        Expand(g, ArrayGfn);
        uint p1 = Evtchn.BindIpi(g, 0);
        uint p2 = Evtchn.BindIpi(g, 0);
        g.Vcpu().VcpuInfo->EvtchnUpcallPending = 0;

        Assert.Equal(0, Evtchn.Send(g, p1));
        uint w1 = Word(g, p1);
        Assert.NotEqual(0u, w1 & (1u << EVTCHN_FIFO_PENDING));
        Assert.NotEqual(0u, w1 & (1u << EVTCHN_FIFO_LINKED));
        var cb = Cb(g);
        Assert.Equal(p1, cb.Head[EVTCHN_FIFO_PRIORITY_DEFAULT]);
        Assert.Equal(1u << (int)EVTCHN_FIFO_PRIORITY_DEFAULT, cb.Ready);
        Assert.Equal(1, g.Vcpu().VcpuInfo->EvtchnUpcallPending);

        // The second event is linked behind the first.
        Assert.Equal(0, Evtchn.Send(g, p2));
        Assert.Equal(p2, Word(g, p1) & EVTCHN_FIFO_LINK_MASK);
        Assert.True(g.Domain.Evtchn.IsPending(p2));

        // Once the guest consumed the queue (LINKED cleared), a new event becomes the head.
        SetWord(g, p1, 0);
        SetWord(g, p2, 0);
        Assert.Equal(0, Evtchn.Send(g, p1));
        Assert.Equal(p1, Head(g, EVTCHN_FIFO_PRIORITY_DEFAULT));
    }

    [Fact]
    public void MaskedEventIsLinkedOnUnmask()
    {
        var g = new Guest(_host);
        InitFifo(g, 0, ControlGfn);
        Expand(g, ArrayGfn);
        uint p = Evtchn.BindIpi(g, 0);
        SetWord(g, p, 1u << EVTCHN_FIFO_MASKED);
        Assert.Equal(0, Evtchn.Send(g, p));
        Assert.Equal((1u << EVTCHN_FIFO_MASKED) | (1u << EVTCHN_FIFO_PENDING), Word(g, p));
        Assert.Equal(0u, Cb(g).Ready);
        // The guest clears MASKED itself and asks Xen to re-raise what is pending.
        SetWord(g, p, 1u << EVTCHN_FIFO_PENDING);
        Assert.Equal(0, Evtchn.Unmask(g, p));
        Assert.NotEqual(0u, Word(g, p) & (1u << EVTCHN_FIFO_LINKED));
        Assert.Equal(p, Head(g, EVTCHN_FIFO_PRIORITY_DEFAULT));
    }

    [Fact]
    public void PriorityChoosesTheQueue()
    {
        var g = new Guest(_host);
        InitFifo(g, 0, ControlGfn);
        Expand(g, ArrayGfn);
        uint p = Evtchn.BindIpi(g, 0);
        var sp = new EvtchnSetPriority { Port = p, Priority = 2 };
        Assert.Equal(0, Evtchn.Op(g, EVTCHNOP_set_priority, ref sp));
        Assert.Equal(0, Evtchn.Send(g, p));
        Assert.Equal(p, Head(g, 2));
        Assert.Equal(1u << 2, Cb(g).Ready);
        sp.Priority = 16;
        Assert.Equal(-Errno.EINVAL, Evtchn.Op(g, EVTCHNOP_set_priority, ref sp));
    }

    [Fact]
    public void EventsRaisedBeforeTheArrayExistsArriveAfterExpansion()
    {
        var g = new Guest(_host);
        uint p = Evtchn.BindIpi(g, 1);
        Assert.Equal(0, Evtchn.Send(g, p)); // 2-level pending
        InitFifo(g, 1, ControlGfn);
        Expand(g, ArrayGfn);
        Assert.NotEqual(0u, Word(g, p) & (1u << EVTCHN_FIFO_PENDING));
        Assert.Equal(p, Head(g, EVTCHN_FIFO_PRIORITY_DEFAULT));
    }

    [Fact]
    public void InitControlAndExpandErrors()
    {
        var g = new Guest(_host);
        var ea = new EvtchnExpandArray { ArrayGfn = ArrayGfn };
        Assert.Equal(-Errno.EOPNOTSUPP, Evtchn.Op(g, EVTCHNOP_expand_array, ref ea));
        var ic = new EvtchnInitControl { ControlGfn = 0x9000, Vcpu = 0 };
        Assert.Equal(-Errno.EINVAL, Evtchn.Op(g, EVTCHNOP_init_control, ref ic));
        ic = new EvtchnInitControl { ControlGfn = ControlGfn, Offset = 4090, Vcpu = 0 };
        Assert.Equal(-Errno.EINVAL, Evtchn.Op(g, EVTCHNOP_init_control, ref ic));
        ic = new EvtchnInitControl { ControlGfn = ControlGfn, Vcpu = 9 };
        Assert.Equal(-Errno.ENOENT, Evtchn.Op(g, EVTCHNOP_init_control, ref ic));
        InitFifo(g, 0, ControlGfn);
        ic = new EvtchnInitControl { ControlGfn = ControlGfn, Vcpu = 0 };
        Assert.Equal(-Errno.EINVAL, Evtchn.Op(g, EVTCHNOP_init_control, ref ic));
        ea.ArrayGfn = 0x9000;
        Assert.Equal(-Errno.EINVAL, Evtchn.Op(g, EVTCHNOP_expand_array, ref ea));
    }

    [Fact]
    public void ResetReturnsToTwoLevel()
    {
        var g = new Guest(_host);
        InitFifo(g, 0, ControlGfn);
        Assert.NotNull(g.Domain.Evtchn.Fifo);
        var r = new EvtchnReset { Dom = Xen.DOMID_SELF };
        Assert.Equal(0, Evtchn.Op(g, EVTCHNOP_reset, ref r));
        Assert.Null(g.Domain.Evtchn.Fifo);
        uint p = Evtchn.BindIpi(g, 0);
        Assert.Equal(0, Evtchn.Send(g, p));
        Assert.NotEqual(0UL, g.Domain.SharedInfo->EvtchnPending[0] & (1UL << (int)p));
    }
}
