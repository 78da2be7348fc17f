using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86;

namespace XenSharp.Hypervisor.Tests;

[Trait("Feature", "Hypervisor emulated LAPIC")]
public class IrqTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private const ulong Base = Vlapic.DefaultBase;

    private sealed class LevelLog : IInterruptController
    {
        public readonly List<(uint Gsi, bool Level)> Changes = new();
        public void SetIrqLevel(uint gsi, bool level) => Changes.Add((gsi, level));
        public void EndOfInterrupt(Vcpu v, byte vector) { }
    }

    [Fact]
    public void AGsiIsTheWireOrOfItsSources()
    {
        var router = new IrqRouter();
        var log = new LevelLog();
        router.Controller = log;
        var a = router.Line(3);
        var b = router.Line(3);
        a.Raise();
        a.Raise(); // already up: counts once
        b.Raise();
        Assert.True(router.Level(3));
        a.Lower();
        Assert.True(router.Level(3)); // b still holds it
        b.Lower();
        Assert.False(router.Level(3));
        b.Lower(); // already down
        a.Pulse();
        b.Raise();
        a.Pulse(); // the line is held up by b: no edge reaches the controller
        b.Lower();
        Assert.Equal([(3u, true), (3u, false), (3u, true), (3u, false), (3u, true), (3u, false)], log.Changes);
        Assert.Throws<ArgumentOutOfRangeException>(() => router.Line(IrqRouter.NrGsis));
    }

    private static Vlapic Enabled(Vcpu v)
    {
        var l = v.Arch.Vlapic;
        l.MmioWrite(Base + Vlapic.SVR, 4, 0x1FF);
        return l;
    }

    private static bool InIrr(Vlapic l, byte vector) => ((l.MmioRead(Base + Vlapic.IRR + (ulong)(vector >> 5) * 0x10, 4) >> (vector & 31)) & 1) != 0;
    private static bool InTmr(Vlapic l, byte vector) => ((l.MmioRead(Base + Vlapic.TMR + (ulong)(vector >> 5) * 0x10, 4) >> (vector & 31)) & 1) != 0;

    [Fact]
    public void AnEdgeRouteDeliversEachRisingEdgeToItsVcpu()
    {
        var g = new Guest(_host, vcpus: 2);
        var hvm = g.Domain.Arch;
        var l1 = Enabled(g.Vcpu(1));
        var line = hvm.Irq.Line(4);
        line.Pulse(); // no route yet: nobody hears it
        Assert.False(g.Vcpu(1).HasPendingInterrupt);
        hvm.Routes.SetRoute(4, vcpu: 1, vector: 0x70, levelTriggered: false);
        line.Pulse();
        Assert.True(InIrr(l1, 0x70));
        Assert.False(InTmr(l1, 0x70));
        Assert.False(g.Vcpu(0).HasPendingInterrupt);
        Assert.Equal(0x70, g.Vcpu(1).Acknowledge());
        line.Raise(); // a rising edge as well
        Assert.True(InIrr(l1, 0x70));
        Assert.Throws<ArgumentOutOfRangeException>(() => hvm.Routes.SetRoute(4, vcpu: 2, vector: 0x70, levelTriggered: false));
    }

    [Fact]
    public void ALevelRouteHoldsUntilEoiAndDeliversAgainWhileTheLineIsUp()
    {
        var g = new Guest(_host, vcpus: 1);
        var hvm = g.Domain.Arch;
        var l = Enabled(g.Vcpu());
        var line = hvm.Irq.Line(9);
        line.Raise(); // up before it is routed: the route delivers it
        hvm.Routes.SetRoute(9, vcpu: 0, vector: 0x80, levelTriggered: true);
        Assert.True(InIrr(l, 0x80));
        Assert.True(InTmr(l, 0x80));
        Assert.Equal(0x80, g.Vcpu().Acknowledge());
        // In service and the line still up: nothing new until the EOI (remote IRR).
        line.Lower();
        line.Raise();
        Assert.False(InIrr(l, 0x80));
        l.MmioWrite(Base + Vlapic.EOI, 4, 0);
        Assert.True(InIrr(l, 0x80)); // the line is still up
        Assert.Equal(0x80, g.Vcpu().Acknowledge());
        line.Lower();
        l.MmioWrite(Base + Vlapic.EOI, 4, 0);
        Assert.False(InIrr(l, 0x80));
        Assert.False(g.Vcpu().HasPendingInterrupt);
        // Cleared routes deliver nothing.
        hvm.Routes.ClearRoute(9);
        line.Raise();
        Assert.False(InIrr(l, 0x80));
    }

    [Fact]
    public unsafe void AGsiCallbackViaFollowsVcpu0sUpcallPending()
    {
        var g = new Guest(_host, vcpus: 2);
        var hvm = g.Domain.Arch;
        var l0 = Enabled(g.Vcpu(0));
        hvm.Routes.SetRoute(10, vcpu: 0, vector: 0x90, levelTriggered: true);
        _host.SetHvmParam(g.Id, Public.Hvm.Params.HVM_PARAM_CALLBACK_IRQ, 10); // type 0: GSI 10
        Assert.Equal(CallbackVia.Gsi, hvm.CallbackVia);
        Assert.Equal(0, hvm.CallbackVector);
        Assert.False(hvm.Irq.Level(10));

        g.Vcpu(1).MarkEventsPending(); // only vCPU 0's events go through the via
        Assert.False(hvm.Irq.Level(10));
        g.Vcpu(0).MarkEventsPending();
        Assert.True(hvm.Irq.Level(10));
        Assert.True(hvm.CallbackAsserted);
        Assert.Equal(0x90, g.Vcpu(0).Acknowledge());
        // The guest takes its events; the line drops at the next check and the EOI finds it down.
        g.Vcpu(0).VcpuInfo->EvtchnUpcallPending = 0;
        hvm.UpdateCallbackLevel();
        Assert.False(hvm.Irq.Level(10));
        l0.MmioWrite(Base + Vlapic.EOI, 4, 0);
        Assert.False(InIrr(l0, 0x90));

        // GSI 0 and GSIs beyond the domain's mean no callback; a vector via raises no line.
        _host.SetHvmParam(g.Id, Public.Hvm.Params.HVM_PARAM_CALLBACK_IRQ, IrqRouter.NrGsis);
        Assert.Equal(CallbackVia.None, hvm.CallbackVia);
        _host.SetHvmParam(g.Id, Public.Hvm.Params.HVM_PARAM_CALLBACK_IRQ, (2UL << 56) | 0xF3);
        Assert.Equal(CallbackVia.Vector, hvm.CallbackVia);
        Assert.Equal(0xF3, hvm.CallbackVector);
        g.Vcpu(0).VcpuInfo->EvtchnUpcallPending = 0;
        g.Vcpu(0).MarkEventsPending();
        Assert.False(hvm.Irq.Level(10));
        Assert.Equal(0xF3, g.Vcpu(0).Acknowledge());
    }

    [Fact]
    public unsafe void ChangingTheViaLowersTheOldLine()
    {
        var g = new Guest(_host, vcpus: 1);
        var hvm = g.Domain.Arch;
        _host.SetHvmParam(g.Id, Public.Hvm.Params.HVM_PARAM_CALLBACK_IRQ, 7);
        g.Vcpu(0).MarkEventsPending();
        Assert.True(hvm.Irq.Level(7));
        // Moved while events are pending: the old line goes down and the new one comes up.
        _host.SetHvmParam(g.Id, Public.Hvm.Params.HVM_PARAM_CALLBACK_IRQ, 8);
        Assert.False(hvm.Irq.Level(7));
        Assert.True(hvm.Irq.Level(8));
        _host.SetHvmParam(g.Id, Public.Hvm.Params.HVM_PARAM_CALLBACK_IRQ, 0);
        Assert.False(hvm.Irq.Level(8));
        Assert.False(hvm.CallbackAsserted);
    }
}
