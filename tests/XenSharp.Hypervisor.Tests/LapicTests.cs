using XenSharp.Hypervisor.X86;

namespace XenSharp.Hypervisor.Tests;

[Trait("Feature", "Hypervisor emulated LAPIC")]
public class LapicTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private const ulong Base = 0xFEE00000;

    [Fact]
    public void IdentityRegisters()
    {
        var g = new Guest(_host, vcpus: 3);
        var l1 = g.Vcpu(1).Arch.Vlapic;
        Assert.True(l1.IsMmio(Base + 0x20));
        Assert.Equal(2UL << 24, l1.MmioRead(Base + Vlapic.ID, 4));
        Assert.Equal(4UL << 24, g.Vcpu(2).Arch.Vlapic.MmioRead(Base + Vlapic.ID, 4));
        Assert.Equal(0x50014UL, l1.MmioRead(Base + Vlapic.LVR, 4));
        Assert.Equal(0xFFUL, l1.MmioRead(Base + Vlapic.SVR, 4));
        Assert.Equal(0x10000UL, l1.MmioRead(Base + Vlapic.LVT_TIMER, 4)); // masked at reset
        Assert.True(l1.TryReadMsr(Vlapic.MsrApicBase, out ulong apicBase));
        Assert.Equal(Base | Vlapic.ApicBaseEnable, apicBase);
        Assert.True(g.Vcpu(0).Arch.Vlapic.TryReadMsr(Vlapic.MsrApicBase, out apicBase));
        Assert.NotEqual(0UL, apicBase & Vlapic.ApicBaseBsp);
        // x2APIC registers appear once EXTD is set, and the MMIO page goes away.
        Assert.False(l1.TryReadMsr(0x802, out _));
        Assert.True(l1.TryWriteMsr(Vlapic.MsrApicBase, Base | Vlapic.ApicBaseEnable | Vlapic.ApicBaseExtd));
        Assert.True(l1.TryReadMsr(0x802, out ulong id));
        Assert.Equal(2UL, id);
        Assert.True(l1.TryReadMsr(0x80D, out ulong ldr));
        Assert.Equal(1UL << 2, ldr);
        Assert.False(l1.IsMmio(Base + 0x20));
        Assert.False(l1.TryWriteMsr(0x802, 5)); // ID is read-only
    }

    [Fact]
    public void FixedIpiIsAcceptedPrioritisedAndEoied()
    {
        var g = new Guest(_host, vcpus: 2);
        var l0 = g.Vcpu(0).Arch.Vlapic;
        var l1 = g.Vcpu(1).Arch.Vlapic;
        l1.MmioWrite(Base + Vlapic.SVR, 4, 0x1FF);
        l0.MmioWrite(Base + Vlapic.ICR2, 4, 2u << 24);
        l0.MmioWrite(Base + Vlapic.ICR, 4, 0x40); // fixed, physical, vector 0x40
        Assert.Equal(1UL, l1.MmioRead(Base + Vlapic.IRR + 0x20, 4) & 1);
        Assert.Equal(0UL, l0.MmioRead(Base + Vlapic.ICR, 4) & (1 << 12)); // delivered at once
        Assert.True(g.Vcpu(1).HasPendingInterrupt);

        // TPR above the vector's class holds it back.
        l1.MmioWrite(Base + Vlapic.TPR, 4, 0x50);
        Assert.False(g.Vcpu(1).HasPendingInterrupt);
        l1.MmioWrite(Base + Vlapic.TPR, 4, 0);

        Assert.Equal(0x40, g.Vcpu(1).Acknowledge());
        Assert.Equal(1UL, l1.MmioRead(Base + Vlapic.ISR + 0x20, 4) & 1);
        Assert.Equal(0x40UL, l1.MmioRead(Base + Vlapic.PPR, 4));
        // A lower vector waits for the EOI; a higher one preempts.
        l0.MmioWrite(Base + Vlapic.ICR, 4, 0x30);
        Assert.Equal(-1, l1.HighestDeliverable());
        l0.MmioWrite(Base + Vlapic.ICR, 4, 0x80);
        Assert.Equal(0x80, l1.HighestDeliverable());
        Assert.Equal(0x80, l1.Acknowledge());
        l1.MmioWrite(Base + Vlapic.EOI, 4, 0);
        l1.MmioWrite(Base + Vlapic.EOI, 4, 0);
        Assert.Equal(0x30, l1.Acknowledge());
    }

    [Fact]
    public void ShorthandsAndLogicalDestinations()
    {
        var g = new Guest(_host, vcpus: 3);
        foreach (var v in g.Domain.Vcpus)
            v.Arch.Vlapic.MmioWrite(Base + Vlapic.SVR, 4, 0x1FF);
        var l0 = g.Vcpu(0).Arch.Vlapic;
        l0.MmioWrite(Base + Vlapic.ICR, 4, 0x41 | (1u << 18)); // self
        Assert.Equal(0x41, l0.HighestDeliverable());
        Assert.Equal(-1, g.Vcpu(1).Arch.Vlapic.HighestDeliverable());
        l0.MmioWrite(Base + Vlapic.ICR, 4, 0x42 | (3u << 18)); // all but self
        Assert.Equal(0x42, g.Vcpu(1).Arch.Vlapic.HighestDeliverable());
        Assert.Equal(0x42, g.Vcpu(2).Arch.Vlapic.HighestDeliverable());
        Assert.Equal(0x41, l0.HighestDeliverable());

        // Flat logical mode: vCPU 2 answers to logical ID bit 3.
        g.Vcpu(2).Arch.Vlapic.MmioWrite(Base + Vlapic.LDR, 4, 0x08u << 24);
        l0.MmioWrite(Base + Vlapic.ICR2, 4, 0x08u << 24);
        l0.MmioWrite(Base + Vlapic.ICR, 4, 0x90 | (1u << 11));
        Assert.Equal(0x90, g.Vcpu(2).Arch.Vlapic.HighestDeliverable());
        Assert.Equal(0x42, g.Vcpu(1).Arch.Vlapic.HighestDeliverable());
    }

    [Fact]
    [Trait("Feature", "x86/PVH")]
    public void InitAndStartupIpiStartAnApInRealMode()
    {
        var g = new Guest(_host, vcpus: 2);
        var ap = g.Vcpu(1);
        var l0 = g.Vcpu(0).Arch.Vlapic;
        Assert.False(ap.IsUp);
        l0.MmioWrite(Base + Vlapic.ICR2, 4, 2u << 24);
        // A SIPI before INIT is ignored.
        l0.MmioWrite(Base + Vlapic.ICR, 4, 0x600 | 0x9A);
        Assert.False(ap.IsUp);
        l0.MmioWrite(Base + Vlapic.ICR, 4, 0x500 | (1u << 14) | (1u << 15)); // INIT assert, level
        l0.MmioWrite(Base + Vlapic.ICR, 4, 0x500 | (1u << 15));               // INIT de-assert
        Assert.True(ap.WaitForSipi);
        l0.MmioWrite(Base + Vlapic.ICR, 4, 0x600 | 0x9A);                    // SIPI, vector 0x9A
        Assert.True(ap.IsUp);
        var ctx = ap.PendingContext!.Value;
        Assert.Equal(0x9A000UL, ctx.Sregs.Cs.Base);
        Assert.Equal((ushort)0x9A00, ctx.Sregs.Cs.Selector);
        Assert.Equal(0UL, ctx.Regs.Rip);
        Assert.Equal(0UL, ctx.Sregs.Cr0 & 1); // real mode
        Assert.Equal(0UL, ap.Arch.Vlapic.MmioRead(Base + Vlapic.ESR, 4));
        // The second SIPI of the INIT-SIPI-SIPI sequence does nothing more.
        ap.PendingContext = null;
        l0.MmioWrite(Base + Vlapic.ICR, 4, 0x600 | 0x9A);
        Assert.Null(ap.PendingContext);
    }

    [Fact]
    public void IllegalVectorsAreLoggedInEsrAndLatchedByTheNextWrite()
    {
        var g = new Guest(_host, vcpus: 2);
        var l0 = g.Vcpu(0).Arch.Vlapic;
        var l1 = g.Vcpu(1).Arch.Vlapic;
        l0.MmioWrite(Base + Vlapic.SVR, 4, 0x1FF);
        l1.MmioWrite(Base + Vlapic.SVR, 4, 0x1FF);

        // A fixed IPI with vector 5: the sender logs "send illegal vector", nothing is delivered.
        l0.MmioWrite(Base + Vlapic.ICR2, 4, 2u << 24);
        l0.MmioWrite(Base + Vlapic.ICR, 4, 0x05);
        Assert.False(g.Vcpu(1).HasPendingInterrupt);
        Assert.Equal(0UL, l1.MmioRead(Base + Vlapic.IRR, 4));
        // Errors become visible only when software writes ESR (any value), which also clears them.
        Assert.Equal(0UL, l0.MmioRead(Base + Vlapic.ESR, 4));
        l0.MmioWrite(Base + Vlapic.ESR, 4, 0);
        Assert.Equal((ulong)Vlapic.EsrSendIllegal, l0.MmioRead(Base + Vlapic.ESR, 4));
        Assert.Equal(0UL, l1.MmioRead(Base + Vlapic.ESR, 4));
        l0.MmioWrite(Base + Vlapic.ESR, 4, 0xFFFFFFFF);
        Assert.Equal(0UL, l0.MmioRead(Base + Vlapic.ESR, 4));

        // Receiving an illegal vector (here from the timer's LVT) logs "receive illegal vector"
        // and raises the unmasked LVT Error interrupt, once until the next ESR write.
        l1.MmioWrite(Base + Vlapic.LVT_ERROR, 4, 0xFE);
        l1.Accept(3, level: false);
        l1.Accept(3, level: false);
        Assert.Equal(0xFE, l1.HighestDeliverable());
        Assert.Equal(0xFE, l1.Acknowledge());
        l1.MmioWrite(Base + Vlapic.EOI, 4, 0);
        Assert.Equal(-1, l1.HighestDeliverable());
        l1.MmioWrite(Base + Vlapic.ESR, 4, 0);
        Assert.Equal((ulong)Vlapic.EsrReceiveIllegal, l1.MmioRead(Base + Vlapic.ESR, 4));

        // A self IPI with an illegal vector is both sent and received; x2APIC ESR takes only 0.
        l1.MmioWrite(Base + Vlapic.ESR, 4, 0);
        l1.MmioWrite(Base + Vlapic.ICR, 4, 0x4_0000 | 0x0F);
        l1.MmioWrite(Base + Vlapic.ESR, 4, 0);
        Assert.Equal((ulong)(Vlapic.EsrSendIllegal | Vlapic.EsrReceiveIllegal), l1.MmioRead(Base + Vlapic.ESR, 4));
        Assert.True(l1.TryWriteMsr(Vlapic.MsrApicBase, Base | Vlapic.ApicBaseEnable | Vlapic.ApicBaseExtd));
        Assert.False(l1.TryWriteMsr(0x828, 1));
        Assert.True(l1.TryWriteMsr(0x828, 0));
        Assert.True(l1.TryReadMsr(0x828, out ulong esr));
        Assert.Equal(0UL, esr);
    }

    [Fact]
    public void NmiIpiIsQueued()
    {
        var g = new Guest(_host, vcpus: 2);
        var l0 = g.Vcpu(0).Arch.Vlapic;
        l0.MmioWrite(Base + Vlapic.ICR2, 4, 2u << 24);
        l0.MmioWrite(Base + Vlapic.ICR, 4, 0x400);
        Assert.True(g.Vcpu(1).PendingNmi);
    }

    [Fact]
    public void TimerFiresItsVector()
    {
        var g = new Guest(_host, vcpus: 1);
        var l = g.Vcpu(0).Arch.Vlapic;
        l.MmioWrite(Base + Vlapic.SVR, 4, 0x1FF);
        l.MmioWrite(Base + Vlapic.TDCR, 4, 0xB); // divide by 1
        l.MmioWrite(Base + Vlapic.LVT_TIMER, 4, 0xEF);
        l.MmioWrite(Base + Vlapic.TMICT, 4, 1_000_000);
        Assert.Equal(1_000_000UL, l.MmioRead(Base + Vlapic.TMICT, 4));
        Assert.True(TestHosts.WaitUntil(() => l.HighestDeliverable() == 0xEF));
        Assert.Equal(0UL, l.MmioRead(Base + Vlapic.TMCCT, 4));

        // Periodic mode keeps reloading.
        Assert.Equal(0xEF, l.Acknowledge());
        l.MmioWrite(Base + Vlapic.EOI, 4, 0);
        l.MmioWrite(Base + Vlapic.LVT_TIMER, 4, 0xEE | (1u << 17));
        l.MmioWrite(Base + Vlapic.TMICT, 4, 500_000);
        Assert.True(TestHosts.WaitUntil(() => l.HighestDeliverable() == 0xEE));
        Assert.Equal(0xEE, l.Acknowledge());
        l.MmioWrite(Base + Vlapic.EOI, 4, 0);
        Assert.True(TestHosts.WaitUntil(() => l.HighestDeliverable() == 0xEE));
        l.MmioWrite(Base + Vlapic.TMICT, 4, 0);
    }

    [Fact]
    [Trait("Feature", "x86/PVHVM")]
    public void UpcallVectorIsLevelLikeAndNeedsNoEoi()
    {
        var g = new Guest(_host, vcpus: 1);
        var v = g.Vcpu(0);
        _host.SetHvmParam(g.Id, Public.Hvm.Params.HVM_PARAM_CALLBACK_IRQ, (2UL << 56) | 0xF3);
        unsafe { v.VcpuInfo->EvtchnUpcallPending = 1; }
        Assert.True(v.HasPendingInterrupt);
        Assert.Equal(0xF3, v.Acknowledge());
        Assert.Equal(0xF3, v.Acknowledge()); // still pending until the guest clears the flag
        Assert.Equal(-1, v.Arch.Vlapic.HighestDeliverable());
        unsafe { v.VcpuInfo->EvtchnUpcallPending = 0; }
        Assert.False(v.HasPendingInterrupt);
    }
}
