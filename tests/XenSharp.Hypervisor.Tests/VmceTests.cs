using System.Runtime.InteropServices;
using XenSharp.Hypervisor.X86;
using XenSharp.Public;
using XenSharp.Public.ArchX86;
using static XenSharp.Public.ArchX86.XenMca;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// The mca hypercall's injection (XEN_MC_msrinject, XEN_MC_mceinject) through a <see cref="Dom0HypercallContext"/>,
/// the #MC handler turning a memory error in a guest's frame into that guest's vMCE, and the vMCE MSRs as Xen
/// presents them.
/// </summary>
[Trait("Feature", "x86/vMCE")]
public sealed unsafe class VmceTests : IDisposable
{
    private const ulong CallerBase = 0x7f00_0000_0000;
    private const int BufferBytes = 64 * 1024;
    private readonly XenHypervisor _host = TestHosts.Create(pcpus: 2);
    private readonly byte* _buffers = (byte*)NativeMemory.AllocZeroed(BufferBytes);
    private readonly Dom0HypercallContext _dom0;
    private readonly ushort _guest;

    public VmceTests()
    {
        _dom0 = _host.OpenDom0Hypercalls((nint)_buffers, CallerBase, BufferBytes);
        _guest = _host.CreateDomain(new DomainCreateConfig(DomainKind.Pvh, 1024, 2));
        _host.PopulatePhysmap(_guest, 0, 256);
    }

    public void Dispose()
    {
        _dom0.Dispose();
        _host.Dispose();
        NativeMemory.Free(_buffers);
    }

    private Vmce VmceOf(int vcpu) => _host.FindDomain(_guest)!.Vcpus[vcpu].Arch.Vmce;

    private delegate void Fill(ref XenMc op);

    private long Mca(uint cmd, Fill fill, uint version = XEN_MCA_INTERFACE_VERSION)
    {
        var op = new XenMc { Cmd = cmd, InterfaceVersion = version };
        fill(ref op);
        *(XenMc*)_buffers = op;
        return _dom0.Hypercall(__HYPERVISOR_mca, CallerBase);
    }

    private long MsrInject(uint cpu, uint flags, ushort domid, params (uint Msr, ulong Value)[] msrs) => Mca(XEN_MC_msrinject, (ref XenMc op) =>
    {
        ref var m = ref op.As<XenMcMsrinject>();
        (m.McinjCpunr, m.McinjFlags, m.McinjDomid, m.McinjCount) = (cpu, flags, domid, (uint)msrs.Length);
        for (int i = 0; i < msrs.Length; i++)
            (m.McinjMsr[2 * i], m.McinjMsr[2 * i + 1]) = (msrs[i].Msr, msrs[i].Value);
    });

    private long MceInject(uint cpu) => Mca(XEN_MC_mceinject, (ref XenMc op) => op.As<XenMcMceinject>().MceinjCpunr = cpu);

    [Fact]
    public void McaRefusesWhatXenRefuses()
    {
        Assert.Equal(-Errno.EACCES, Mca(XEN_MC_physcpuinfo, (ref XenMc _) => { }, version: 1));
        Assert.Equal(-Errno.EINVAL, Mca(99, (ref XenMc _) => { }));
        Assert.Equal(-Errno.ENOSYS, Mca(XEN_MC_fetch, (ref XenMc _) => { }));
        Assert.Equal(0, Mca(XEN_MC_physcpuinfo, (ref XenMc _) => { }));
        Assert.Equal(2u, ((XenMc*)_buffers)->As<XenMcPhyscpuinfo>().Ncpus);

        const uint interpose = MC_MSRINJ_F_INTERPOSE;
        Assert.Equal(-Errno.EINVAL, MsrInject(9, interpose, 0, (MSR_IA32_MCG_STATUS, 5)));        // no such pCPU
        Assert.Equal(0, MsrInject(0, interpose, 0));                                                // nothing to do
        Assert.Equal(-Errno.EINVAL, MsrInject(0, interpose, 0, (0x10, 1)));                        // not an MCA MSR
        Assert.Equal(-Errno.EINVAL, MsrInject(0, 0, 0, (MSR_IA32_MC0_STATUS + 4, 1)));             // banks need interposing
        Assert.Equal(-Errno.EINVAL, MsrInject(0, interpose, 0, (MSR_IA32_MC0_STATUS + 4 * 10, 1))); // beyond the banks
        Assert.Equal(-Errno.EINVAL, MsrInject(0, interpose | MC_MSRINJ_F_GPADDR, 4000, (MSR_IA32_MC0_ADDR, 0x1000)));
        Assert.Equal(-Errno.EINVAL, MsrInject(0, interpose | MC_MSRINJ_F_GPADDR, _guest, (MSR_IA32_MC0_ADDR, 0x400000))); // no RAM
        Assert.Equal(-Errno.EINVAL, MceInject(9));
        Assert.Equal(-Errno.EINVAL, Mca(XEN_MC_inject_v2, (ref XenMc op) => op.As<XenMcInjectV2>().Flags = XEN_MC_INJECT_TYPE_CMCI | XEN_MC_INJECT_CPU_BROADCAST));
        // A #MC with no error in any bank changes nothing.
        Assert.Equal(0, MceInject(1));
        Assert.True(VmceOf(0).TryReadMsr(MSR_IA32_MCG_STATUS, out ulong idle));
        Assert.Equal(0UL, idle);
    }

    [Fact]
    public void AMemoryErrorInAGuestFrameBecomesItsVmce()
    {
        const ulong gaddr = 0x42040, status = 0xBD2000008000017AUL;
        const uint bank = 7, interpose = MC_MSRINJ_F_INTERPOSE;
        Assert.Equal(0, MsrInject(1, interpose, 0, (MSR_IA32_MCG_STATUS, MCG_STATUS_MCIP | MCG_STATUS_RIPV),
            (MSR_IA32_MC0_STATUS + 4 * bank, status), (MSR_IA32_MC0_MISC + 4 * bank, 0x86)));
        Assert.Equal(0, MsrInject(1, interpose | MC_MSRINJ_F_GPADDR, _guest, (MSR_IA32_MC0_ADDR + 4 * bank, gaddr)));
        Assert.Equal(0, MceInject(1));

        // vCPU 0 has the error in bank 1, at the guest's own address, the model-specific code filtered out.
        var v0 = VmceOf(0);
        Assert.True(v0.TryReadMsr(MSR_IA32_MCG_STATUS, out ulong g) && g == (MCG_STATUS_MCIP | MCG_STATUS_RIPV));
        Assert.True(v0.TryReadMsr(MSR_IA32_MC0_STATUS + 4, out ulong s) && s == 0xBD2000000000017AUL);
        Assert.True(v0.TryReadMsr(MSR_IA32_MC0_ADDR + 4, out ulong a) && a == gaddr);
        Assert.True(v0.TryReadMsr(MSR_IA32_MC0_MISC + 4, out ulong m) && m == 0x86);
        Assert.True(v0.TryReadMsr(MSR_IA32_MC0_STATUS, out ulong s0) && s0 == 0);
        // The other vCPU is told a machine check is in progress, with no error of its own.
        var v1 = VmceOf(1);
        Assert.True(v1.TryReadMsr(MSR_IA32_MCG_STATUS, out ulong g1) && g1 == (MCG_STATUS_MCIP | MCG_STATUS_RIPV));
        Assert.True(v1.TryReadMsr(MSR_IA32_MC0_STATUS + 4, out ulong s1) && s1 == 0);
        Assert.True(v0.TakePending());
        Assert.False(v0.TakePending());
        // The banks were logged out: a second #MC finds nothing.
        Assert.Equal(0, MceInject(1));
        Assert.NotEqual(DomainRunState.Shutdown, _host.GetDomainInfo(_guest).State);

        // Another error while the guest still has MCIP set cannot be told to it: Xen crashes the domain.
        Assert.Equal(0, MsrInject(0, interpose, 0, (MSR_IA32_MCG_STATUS, MCG_STATUS_MCIP | MCG_STATUS_RIPV),
            (MSR_IA32_MC0_STATUS + 4 * bank, status), (MSR_IA32_MC0_MISC + 4 * bank, 0x86)));
        Assert.Equal(0, MsrInject(0, interpose | MC_MSRINJ_F_GPADDR, _guest, (MSR_IA32_MC0_ADDR + 4 * bank, gaddr)));
        Assert.Equal(0, MceInject(0));
        Assert.Equal(DomainRunState.Shutdown, _host.GetDomainInfo(_guest).State);
    }

    [Fact]
    public void VmceMsrsAreXensTwoBanks()
    {
        var v = VmceOf(0);
        Assert.True(v.TryReadMsr(MSR_IA32_MCG_CAP, out ulong cap));
        Assert.Equal(MCG_SER_P | MCG_TES_P | MCG_CMCI_P | 2, cap);
        Assert.True(v.TryWriteMsr(MSR_IA32_MCG_CAP, 0));
        Assert.True(v.TryReadMsr(MSR_IA32_MCG_CAP, out cap) && cap == (MCG_SER_P | MCG_TES_P | MCG_CMCI_P | 2));
        Assert.True(v.TryReadMsr(MSR_IA32_MC0_CTL + 4, out ulong ctl) && ctl == ~0UL);
        Assert.True(v.TryWriteMsr(MSR_IA32_MC0_CTL + 4, 0));
        Assert.True(v.TryReadMsr(MSR_IA32_MC0_CTL + 4, out ctl) && ctl == ~0UL);
        Assert.False(v.TryWriteMsr(MSR_IA32_MC0_STATUS + 4, 1));
        Assert.True(v.TryWriteMsr(MSR_IA32_MC0_STATUS + 4, 0));
        Assert.False(v.TryReadMsr(MSR_IA32_MC0_STATUS + 8, out _)); // bank 2: not there
        Assert.True(v.TryWriteMsr(MSR_IA32_MC0_CTL2 + 1, 1UL << 30));
        Assert.True(v.TryReadMsr(MSR_IA32_MC0_CTL2 + 1, out ulong ctl2) && ctl2 == 1UL << 30);
        Assert.False(v.TryReadMsr(MSR_IA32_MC0_CTL2 + 2, out _));
    }
}
