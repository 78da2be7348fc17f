using XenSharp.Public;
using XenSharp.Cpu;
using XenSharp.Hypervisor.X86;

namespace XenSharp.Hypervisor.Tests;

[Trait("Feature", "x86/PVH")]
public class CpuidTests
{
    private static XenCpuid Policy(int vcpu) => new(new DefaultCpuidPolicy((uint)(2 * vcpu)), vcpu, () => (0x80000000u, (sbyte)0, 2_000_000_000UL));

    [Fact]
    public void XenLeavesIdentifyXen414()
    {
        var p = Policy(3);
        p.Cpuid(0x40000000, 0, out uint eax, out uint ebx, out uint ecx, out uint edx);
        Assert.True(eax - 0x40000000 >= 2);
        Assert.Equal("XenVMMXenVMM", string.Concat(new[] { ebx, ecx, edx }.Select(r => System.Text.Encoding.ASCII.GetString(BitConverter.GetBytes(r)))));
        p.Cpuid(0x40000001, 0, out eax, out _, out _, out _);
        Assert.Equal((4u << 16) | 14, eax);
        p.Cpuid(0x40000002, 0, out eax, out ebx, out _, out _);
        Assert.Equal(1u, eax);
        Assert.Equal(0x40000000u, ebx);
        p.Cpuid(0x40000003, 0, out _, out _, out ecx, out _);
        Assert.Equal(2_000_000u, ecx);
        p.Cpuid(0x40000004, 0, out eax, out ebx, out _, out _);
        Assert.Equal(Public.ArchX86.Cpuid.XEN_HVM_CPUID_VCPU_ID_PRESENT, eax);
        Assert.Equal(3u, ebx);
    }

    [Fact]
    public void StandardLeavesCarryApicIdAndHypervisorBit()
    {
        var p = Policy(2);
        p.Cpuid(1, 0, out _, out uint ebx, out uint ecx, out uint edx);
        Assert.Equal(4u, ebx >> 24);
        Assert.NotEqual(0u, ecx & (1u << 31));
        Assert.NotEqual(0u, edx & (1u << 9));
    }

    [Fact]
    public void HypercallPageStubs()
    {
        var page = new byte[4096];
        HypercallPage.Write(page, amd: true);
        Assert.Equal(new byte[] { 0xB8, 29, 0, 0, 0, 0x0F, 0x01, 0xD9, 0xC3 }, page.AsSpan(29 * 32, 9).ToArray());
        Assert.All(page.AsSpan(32 + 9, 23).ToArray(), b => Assert.Equal(0xCC, b));
    }

    [Theory]
    [InlineData(TscMode.Default, 0u)]
    [InlineData(TscMode.AlwaysEmulate, 1u)]
    [InlineData(TscMode.Native, 0u)]
    public void TscLeafReportsTheDomainsMode(TscMode mode, uint emulated)
    {
        var p = new XenCpuid(new DefaultCpuidPolicy(0), 0, () => (0x80000000u, (sbyte)0, 2_000_000_000UL), mode);
        p.Cpuid(0x40000003, 0, out uint eax, out uint ebx, out uint ecx, out uint edx);
        Assert.Equal(emulated, eax & Public.ArchX86.Cpuid.XEN_CPUID_TSC_EMULATED);
        Assert.NotEqual(0u, eax & Public.ArchX86.Cpuid.XEN_CPUID_HOST_TSC_RELIABLE);
        Assert.Equal((uint)mode, ebx);
        Assert.Equal(2_000_000u, ecx);
        Assert.Equal(0u, edx);
        p.Cpuid(0x40000003, 1, out eax, out ebx, out ecx, out edx);
        Assert.Equal((0u, 0u, 0x80000000u, 0u), (eax, ebx, ecx, edx));
        p.Cpuid(0x40000003, 2, out eax, out _, out _, out _);
        Assert.Equal(2_000_000u, eax);
    }

    [Fact]
    public void DomainsGetTheirTscModeInTheLeaf()
    {
        using var host = TestHosts.Create();
        var g = new Guest(host, vcpus: 1, tscMode: TscMode.AlwaysEmulate);
        g.Vcpu().Cpuid!.Cpuid(0x40000003, 0, out uint eax, out uint ebx, out _, out _);
        Assert.Equal(1u, eax & 1);
        Assert.Equal((uint)TscMode.AlwaysEmulate, ebx);
    }
}
