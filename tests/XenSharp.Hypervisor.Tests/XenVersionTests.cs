using System.Text;
using XenSharp.Public;
using static XenSharp.Public.Version;

namespace XenSharp.Hypervisor.Tests;

[Trait("Feature", "x86/PVH")]
public class XenVersionTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    private readonly Guest _g;

    public XenVersionTests() => _g = new Guest(_host);
    public void Dispose() => _host.Dispose();

    [Fact]
    public void VersionIs414() => Assert.Equal((4 << 16) | 14, _g.Call(Xen.__HYPERVISOR_xen_version, XENVER_version));

    [Fact]
    public void FeaturesAreExactlyWhatIsHonoured()
    {
        var fi = new XenFeatureInfo { SubmapIdx = 0 };
        Assert.Equal(0, _g.Call(Xen.__HYPERVISOR_xen_version, XENVER_get_features, ref fi));
        Assert.Equal((1u << 0) | (1u << 2) | (1u << 8) | (1u << 9), fi.Submap);
        Assert.Equal(0u, fi.Submap & (1u << Features.XENFEAT_hvm_pirqs));
        fi.SubmapIdx = 1;
        Assert.Equal(-Errno.EINVAL, _g.Call(Xen.__HYPERVISOR_xen_version, XENVER_get_features, ref fi));
    }

    [Fact]
    public void StringsAreNulTerminatedInTheirBuffers()
    {
        Assert.Equal(0, _g.Call(Xen.__HYPERVISOR_xen_version, XENVER_extraversion, Guest.Scratch));
        var extra = _g.ReadBytes(Guest.Scratch, XEN_EXTRAVERSION_LEN);
        Assert.Equal(".0", Encoding.ASCII.GetString(extra).TrimEnd('\0'));
        Assert.Equal(0, _g.Call(Xen.__HYPERVISOR_xen_version, XENVER_capabilities, Guest.Scratch));
        Assert.StartsWith("xen-3.0-x86_64", Encoding.ASCII.GetString(_g.ReadBytes(Guest.Scratch, 64)));
        Assert.Equal(0, _g.Call(Xen.__HYPERVISOR_xen_version, XENVER_changeset, Guest.Scratch));
        Assert.Equal(0, _g.Call(Xen.__HYPERVISOR_xen_version, XENVER_compile_info, Guest.Scratch));
        Assert.Equal(0, _g.Call(Xen.__HYPERVISOR_xen_version, XENVER_commandline, Guest.Scratch));
        Assert.Equal("<denied>", Encoding.ASCII.GetString(_g.ReadBytes(Guest.Scratch, 16)).TrimEnd('\0'));
    }

    [Fact]
    public void OtherSubops()
    {
        Assert.Equal(4096, _g.Call(Xen.__HYPERVISOR_xen_version, XENVER_pagesize));
        Assert.Equal(0, _g.Call(Xen.__HYPERVISOR_xen_version, XENVER_platform_parameters, Guest.Scratch));
        Assert.Equal(0xFFFF800000000000, _g.Read<ulong>(Guest.Scratch));
        Assert.Equal(0, _g.Call(Xen.__HYPERVISOR_xen_version, XENVER_guest_handle, Guest.Scratch));
        Assert.Equal(_host.GetDomainInfo(_g.Id).Handle, new Guid(_g.ReadBytes(Guest.Scratch, 16), bigEndian: true));
        Assert.Equal(-Errno.EPERM, _g.Call(Xen.__HYPERVISOR_xen_version, XENVER_build_id, Guest.Scratch));
        Assert.Equal(-Errno.EINVAL, _g.Call(Xen.__HYPERVISOR_xen_version, XENVER_pagesize, Guest.Scratch));
        Assert.Equal(-Errno.ENOSYS, _g.Call(Xen.__HYPERVISOR_xen_version, 99, Guest.Scratch));
    }

    [Theory]
    [InlineData(XENVER_extraversion)]
    [InlineData(XENVER_compile_info)]
    [InlineData(XENVER_capabilities)]
    [InlineData(XENVER_changeset)]
    [InlineData(XENVER_platform_parameters)]
    [InlineData(XENVER_get_features)]
    [InlineData(XENVER_guest_handle)]
    [InlineData(XENVER_commandline)]
    public void BadPointerIsEfault(int subop) => Assert.Equal(-Errno.EFAULT, _g.Call(Xen.__HYPERVISOR_xen_version, (ulong)subop, Guest.Bad));
}

public class DispatchTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    [Theory]
    [InlineData(Xen.__HYPERVISOR_set_trap_table)]
    [InlineData(Xen.__HYPERVISOR_mmu_update)]
    [InlineData(Xen.__HYPERVISOR_physdev_op)]
    [InlineData(63)]
    [InlineData(64)]
    [InlineData(100000)]
    public void UnknownHypercallIsEnosys(int nr) => Assert.Equal(-Errno.ENOSYS, new Guest(_host).Call(nr, 1, 2, 3));

    [Fact]
    public void MulticallRunsEachEntryAndStoresResults()
    {
        var g = new Guest(_host);
        unsafe
        {
            var e0 = new MulticallEntry { Op = Xen.__HYPERVISOR_xen_version };
            e0.Args[0] = Public.Version.XENVER_version;
            var e1 = new MulticallEntry { Op = 77 };
            g.Write(Guest.Scratch, e0);
            g.Write(Guest.Scratch + 64, e1);
        }
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_multicall, Guest.Scratch, 2));
        Assert.Equal((4UL << 16) | 14, g.Read<ulong>(Guest.Scratch + 8));
        Assert.Equal(unchecked((ulong)(long)-Errno.ENOSYS), g.Read<ulong>(Guest.Scratch + 64 + 8));
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_multicall, Guest.Bad, 1));
    }

    [Fact]
    public void VmAssistAcceptsOnlyRunstateUpdateFlag()
    {
        var g = new Guest(_host);
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_vm_assist, Xen.VMASST_CMD_enable, Xen.VMASST_TYPE_runstate_update_flag));
        Assert.NotEqual(0UL, g.Domain.VmAssist & (1UL << Xen.VMASST_TYPE_runstate_update_flag));
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_vm_assist, Xen.VMASST_CMD_enable, Xen.VMASST_TYPE_writable_pagetables));
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_vm_assist, Xen.VMASST_CMD_disable, Xen.VMASST_TYPE_runstate_update_flag));
        Assert.Equal(0UL, g.Domain.VmAssist);
    }
}
