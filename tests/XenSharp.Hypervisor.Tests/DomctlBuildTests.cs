using System.Runtime.InteropServices;
using XenSharp.Public;
using static XenSharp.Public.Domctl;
using static XenSharp.Public.Sysctl;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// The domctls, sysctls and memory ops a Domain-0 toolstack builds a domain with (libxl and libxenguest of Xen 4.17),
/// through a <see cref="Dom0HypercallContext"/> as privcmd sets it up: each does what Xen does, and garbage gets
/// Xen's errno.
/// </summary>
[Trait("Feature", "Dom0 stable libraries")]
public sealed unsafe class DomctlBuildTests : IDisposable
{
    private const ulong CallerBase = 0x7f00_0000_0000;
    private const int BufferBytes = 256 * 1024;
    private const int Data = 4096; // where the arrays a call points to go
    private readonly XenHypervisor _host = TestHosts.Create(pcpus: 2);
    private readonly byte* _buffers = (byte*)NativeMemory.AllocZeroed(BufferBytes);
    private readonly Dom0HypercallContext _dom0;

    public DomctlBuildTests() => _dom0 = _host.OpenDom0Hypercalls((nint)_buffers, CallerBase, BufferBytes);

    public void Dispose()
    {
        _dom0.Dispose();
        _host.Dispose();
        NativeMemory.Free(_buffers);
    }

    private ref T At<T>(int offset) where T : unmanaged => ref *(T*)(_buffers + offset);

    private long Domctl(uint cmd, ushort domain, ref XenDomctl op)
    {
        op.Cmd = cmd;
        op.InterfaceVersion = XEN_DOMCTL_INTERFACE_VERSION;
        op.Domain = domain;
        At<XenDomctl>(0) = op;
        long rc = _dom0.Hypercall(Xen.__HYPERVISOR_domctl, CallerBase);
        op = At<XenDomctl>(0);
        return rc;
    }

    private long Sysctl(uint cmd, ref XenSysctl op)
    {
        op.Cmd = cmd;
        op.InterfaceVersion = XEN_SYSCTL_INTERFACE_VERSION;
        At<XenSysctl>(0) = op;
        long rc = _dom0.Hypercall(Xen.__HYPERVISOR_sysctl, CallerBase);
        op = At<XenSysctl>(0);
        return rc;
    }

    /// <summary>libxl's createdomain of a PVH guest: HVM with HAP, the local APIC alone emulated, grant v2 at most.</summary>
    private static XenDomctlCreatedomain PvhConfig(uint vcpus = 2) => new()
    {
        Flags = XEN_DOMCTL_CDF_hvm | XEN_DOMCTL_CDF_hap,
        MaxVcpus = vcpus,
        MaxEvtchnPort = 1023,
        MaxGrantFrames = 32,
        MaxMaptrackFrames = 1024,
        GrantOpts = 2,
        EmulationFlags = XEN_X86_EMU_LAPIC,
    };

    private long Create(XenDomctlCreatedomain config, out ushort domid, ushort wanted = 0)
    {
        var op = new XenDomctl();
        op.As<XenDomctlCreatedomain>() = config;
        long rc = Domctl(XEN_DOMCTL_createdomain, wanted, ref op);
        domid = op.Domain;
        return rc;
    }

    [Fact]
    public void CreatedomainMakesAPausedDomainWithItsHandleAndIncreasingIds()
    {
        var config = PvhConfig();
        var uuid = Guid.NewGuid();
        var bytes = uuid.ToByteArray(bigEndian: true);
        for (int i = 0; i < 16; i++)
            config.Handle[i] = bytes[i];
        Assert.Equal(0, Create(config, out ushort first));
        Assert.Equal(0, Create(PvhConfig(1), out ushort second));
        Assert.True(second > first);
        var info = _host.GetDomainInfo(first);
        Assert.Equal(uuid, info.Handle);
        Assert.Equal(DomainKind.Pvh, info.Type);
        Assert.Equal(2, info.Vcpus);
        Assert.Equal(DomainRunState.Paused, info.State);
        Assert.Equal(0UL, info.MaxPages);
        // A named id that is taken is EEXIST; a free one is used.
        Assert.Equal(-Errno.EEXIST, Create(PvhConfig(), out _, wanted: first));
        Assert.Equal(0, Create(PvhConfig(), out ushort named, wanted: 77));
        Assert.Equal(77, named);
    }

    [Fact]
    public void CreatedomainRefusesWhatThisHostHasNot()
    {
        XenDomctlCreatedomain With(Func<XenDomctlCreatedomain, XenDomctlCreatedomain> change) => change(PvhConfig());
        Assert.Equal(-Errno.EINVAL, Create(With(c => { c.Flags = XEN_DOMCTL_CDF_hap; return c; }), out _)); // PV
        Assert.Equal(-Errno.EINVAL, Create(With(c => { c.Flags = XEN_DOMCTL_CDF_hvm; return c; }), out _)); // shadow
        Assert.Equal(-Errno.EINVAL, Create(With(c => { c.Flags |= 1u << 12; return c; }), out _));
        Assert.Equal(-Errno.EINVAL, Create(With(c => { c.Flags |= XEN_DOMCTL_CDF_nested_virt; return c; }), out _));
        Assert.Equal(-Errno.EINVAL, Create(With(c => { c.MaxVcpus = 0; return c; }), out _));
        Assert.Equal(-Errno.EINVAL, Create(With(c => { c.GrantOpts = 3; return c; }), out _));
        Assert.Equal(-Errno.EINVAL, Create(With(c => { c.VmtraceSize = 4096; return c; }), out _));
        Assert.Equal(-Errno.EOPNOTSUPP, Create(With(c => { c.EmulationFlags = XEN_X86_EMU_LAPIC | XEN_X86_EMU_PIT; return c; }), out _));
        Assert.Equal(-Errno.ENOENT, Create(With(c => { c.CpupoolId = 9; return c; }), out _));
        Assert.Single(_host.ListDomains()); // Domain-0 alone: nothing was half made
    }

    [Fact]
    public void MaxMemMaxVcpusPauseUnpauseAndDestroy()
    {
        Assert.Equal(0, Create(PvhConfig(), out ushort d));
        var op = new XenDomctl();
        op.As<XenDomctlMaxMem>().MaxMemKb = 512 * 1024;
        Assert.Equal(0, Domctl(XEN_DOMCTL_max_mem, d, ref op));
        Assert.Equal(512UL * 256, _host.GetDomainInfo(d).MaxPages);

        op = new XenDomctl();
        op.As<XenDomctlMaxVcpus>().Max = 2;
        Assert.Equal(0, Domctl(XEN_DOMCTL_max_vcpus, d, ref op));
        op.As<XenDomctlMaxVcpus>().Max = 3;
        Assert.Equal(-Errno.EINVAL, Domctl(XEN_DOMCTL_max_vcpus, d, ref op));

        // The controller's pause count starts at 1: one unpause runs it, a second is EINVAL.
        op = new XenDomctl();
        Assert.Equal(0, Domctl(XEN_DOMCTL_pausedomain, d, ref op));
        Assert.Equal(0, Domctl(XEN_DOMCTL_unpausedomain, d, ref op));
        Assert.Equal(0, Domctl(XEN_DOMCTL_unpausedomain, d, ref op));
        Assert.Equal(-Errno.EINVAL, Domctl(XEN_DOMCTL_unpausedomain, d, ref op));
        Assert.Equal(-Errno.EINVAL, Domctl(XEN_DOMCTL_pausedomain, 0, ref op));

        Assert.Equal(0, Domctl(XEN_DOMCTL_destroydomain, d, ref op));
        Assert.Equal(-Errno.ESRCH, Domctl(XEN_DOMCTL_destroydomain, d, ref op));
    }

    [Fact]
    public void HvmContextSizeThenContextThenTheBootVcpu()
    {
        Assert.Equal(0, Create(PvhConfig(1), out ushort d));
        var op = new XenDomctl();
        Assert.Equal(0, Domctl(XEN_DOMCTL_gethvmcontext, d, ref op));
        uint size = op.As<XenDomctlHvmcontext>().Size;
        Assert.True(size > 0);

        op.As<XenDomctlHvmcontext>() = new XenDomctlHvmcontext { Size = size - 1, Buffer = CallerBase + Data };
        Assert.Equal(-Errno.ENOSPC, Domctl(XEN_DOMCTL_gethvmcontext, d, ref op));
        op.As<XenDomctlHvmcontext>() = new XenDomctlHvmcontext { Size = size, Buffer = CallerBase + Data };
        Assert.Equal(0, Domctl(XEN_DOMCTL_gethvmcontext, d, ref op));
        Assert.Equal(size, op.As<XenDomctlHvmcontext>().Size);
        var before = new Span<byte>(_buffers + Data, (int)size).ToArray();

        // A context that is garbage is EINVAL and changes nothing; a buffer outside the caller's is EFAULT.
        new Span<byte>(_buffers + Data, 64).Fill(0xA5);
        op.As<XenDomctlHvmcontext>() = new XenDomctlHvmcontext { Size = 64, Buffer = CallerBase + Data };
        Assert.Equal(-Errno.EINVAL, Domctl(XEN_DOMCTL_sethvmcontext, d, ref op));
        op.As<XenDomctlHvmcontext>() = new XenDomctlHvmcontext { Size = 64, Buffer = 0x1000 };
        Assert.Equal(-Errno.EFAULT, Domctl(XEN_DOMCTL_sethvmcontext, d, ref op));
        Assert.Equal(before.Length, _host.GetHvmContext(d).Length); // still the same records (times move on)
    }

    [Fact]
    public void CpuPolicyRoundTripsAndBadLeavesAreNamed()
    {
        // The system policy: sizes first, then the leaves, which a domain's own policy matches.
        var sys = new XenSysctl();
        sys.As<XenSysctlCpuPolicy>().Index = XEN_SYSCTL_cpu_policy_hvm_default;
        Assert.Equal(0, Sysctl(XEN_SYSCTL_get_cpu_policy, ref sys));
        uint max = sys.As<XenSysctlCpuPolicy>().NrLeaves;
        Assert.Equal(120u, max);
        sys.As<XenSysctlCpuPolicy>() = new XenSysctlCpuPolicy { Index = XEN_SYSCTL_cpu_policy_hvm_default, NrLeaves = max, Leaves = CallerBase + Data };
        Assert.Equal(0, Sysctl(XEN_SYSCTL_get_cpu_policy, ref sys));
        uint n = sys.As<XenSysctlCpuPolicy>().NrLeaves;
        var leaves = new Span<XenCpuidLeaf>(_buffers + Data, (int)n).ToArray();
        Assert.Equal(0u, leaves[0].Leaf);
        Assert.Contains(leaves, l => l.Leaf == 7 && l.Subleaf == 0);
        Assert.Contains(leaves, l => l.Leaf == 0x80000001 && l.Subleaf == XEN_CPUID_NO_SUBLEAF);
        sys.As<XenSysctlCpuPolicy>() = new XenSysctlCpuPolicy { Index = 9 };
        Assert.Equal(-Errno.EINVAL, Sysctl(XEN_SYSCTL_get_cpu_policy, ref sys));

        Assert.Equal(0, Create(PvhConfig(1), out ushort d));
        var op = new XenDomctl();
        op.As<XenDomctlCpuPolicy>() = new XenDomctlCpuPolicy { NrLeaves = n, Leaves = CallerBase + Data };
        Assert.Equal(0, Domctl(XEN_DOMCTL_set_cpu_policy, d, ref op)); // the toolstack hands it back unchanged

        // A leaf no policy has: ERANGE naming it.
        At<XenCpuidLeaf>(Data + 24 * 3) = new XenCpuidLeaf { Leaf = 0x20, Subleaf = XEN_CPUID_NO_SUBLEAF };
        op.As<XenDomctlCpuPolicy>() = new XenDomctlCpuPolicy { NrLeaves = 4, Leaves = CallerBase + Data };
        Assert.Equal(-Errno.ERANGE, Domctl(XEN_DOMCTL_set_cpu_policy, d, ref op));
        Assert.Equal(0x20u, op.As<XenDomctlCpuPolicy>().ErrLeaf);
        // A feature the host has not got: EINVAL naming the leaf.
        leaves.CopyTo(new Span<XenCpuidLeaf>(_buffers + Data, (int)n));
        int i7 = Array.FindIndex(leaves, l => l.Leaf == 7 && l.Subleaf == 0);
        At<XenCpuidLeaf>(Data + 24 * i7).B = ~0u;
        op.As<XenDomctlCpuPolicy>() = new XenDomctlCpuPolicy { NrLeaves = n, Leaves = CallerBase + Data };
        Assert.Equal(-Errno.EINVAL, Domctl(XEN_DOMCTL_set_cpu_policy, d, ref op));
        Assert.Equal(7u, op.As<XenDomctlCpuPolicy>().ErrLeaf);
        op.As<XenDomctlCpuPolicy>() = new XenDomctlCpuPolicy { NrLeaves = max + 1, Leaves = CallerBase + Data };
        Assert.Equal(-Errno.E2BIG, Domctl(XEN_DOMCTL_set_cpu_policy, d, ref op));

        // The domain's policy, from its vCPU 0; a short array is ENOBUFS.
        op.As<XenDomctlCpuPolicy>() = new XenDomctlCpuPolicy { NrLeaves = 3, Leaves = CallerBase + Data };
        Assert.Equal(-Errno.ENOBUFS, Domctl(XEN_DOMCTL_get_cpu_policy, d, ref op));
        op.As<XenDomctlCpuPolicy>() = new XenDomctlCpuPolicy { NrLeaves = max, Leaves = CallerBase + Data, NrMsrs = 2, Msrs = CallerBase + Data + 8192 };
        Assert.Equal(0, Domctl(XEN_DOMCTL_get_cpu_policy, d, ref op));
        Assert.Equal(n, op.As<XenDomctlCpuPolicy>().NrLeaves);
        Assert.Equal(2u, op.As<XenDomctlCpuPolicy>().NrMsrs);
    }

    [Fact]
    public void AHiddenFeatureHidesTheFeaturesBuiltOnIt()
    {
        Assert.Equal(0, Create(PvhConfig(1), out ushort d));
        var cpuid = _host.Guest(d).Vcpus[0].Cpuid!;
        cpuid.Cpuid(1, 0, out _, out _, out uint c1, out uint d1);
        cpuid.Cpuid(0x80000001, 0, out _, out _, out uint e1c, out uint e1d);
        const uint Sse3 = 1u << 0, Ssse3 = 1u << 9, Sse41 = 1u << 19, Sse42 = 1u << 20, Cx16 = 1u << 13, Pcid = 1u << 17;
        const uint LahfLm = 1u << 0, Page1Gb = 1u << 26, Lm = 1u << 29;
        Assert.Equal(Sse3 | Ssse3 | Sse41 | Sse42 | Cx16 | Pcid, c1 & (Sse3 | Ssse3 | Sse41 | Sse42 | Cx16 | Pcid));
        Assert.Equal(Lm | Page1Gb, e1d & (Lm | Page1Gb));

        // SSE3 alone hidden in leaf 1: SSSE3, SSE4.1 and SSE4.2, each built on the one before, go with it.
        var op = new XenDomctl();
        At<XenCpuidLeaf>(Data) = new XenCpuidLeaf { Leaf = 1, Subleaf = XEN_CPUID_NO_SUBLEAF, C = c1 & ~Sse3, D = d1 };
        op.As<XenDomctlCpuPolicy>() = new XenDomctlCpuPolicy { NrLeaves = 1, Leaves = CallerBase + Data };
        Assert.Equal(0, Domctl(XEN_DOMCTL_set_cpu_policy, d, ref op));
        cpuid.Cpuid(1, 0, out _, out _, out uint c, out uint dx);
        Assert.Equal(0u, c & (Sse3 | Ssse3 | Sse41 | Sse42));
        Assert.Equal(c1 & ~(Sse3 | Ssse3 | Sse41 | Sse42), c & ~(1u << 27));
        Assert.Equal(d1, dx);

        // Long mode hidden in leaf 0x80000001: CMPXCHG16B and PCIDs go from leaf 1, LAHF and 1 GiB pages from its own.
        At<XenCpuidLeaf>(Data) = new XenCpuidLeaf { Leaf = 0x80000001, Subleaf = XEN_CPUID_NO_SUBLEAF, C = e1c, D = e1d & ~Lm };
        Assert.Equal(0, Domctl(XEN_DOMCTL_set_cpu_policy, d, ref op));
        cpuid.Cpuid(1, 0, out _, out _, out c, out _);
        Assert.Equal(0u, c & (Cx16 | Pcid | Sse3));
        cpuid.Cpuid(0x80000001, 0, out _, out _, out uint ec, out uint ed);
        Assert.Equal((0u, 0u), (ec & LahfLm, ed & (Lm | Page1Gb)));
        Assert.NotEqual(0u, ed & (1u << 20)); // NX needs PAE, not long mode
    }

    [Fact]
    public void ASetPolicyIsWhatEveryVcpuSees()
    {
        Assert.Equal(0, Create(PvhConfig(2), out ushort d));
        var op = new XenDomctl();
        op.As<XenDomctlCpuPolicy>() = new XenDomctlCpuPolicy { NrLeaves = XenSharp.Hypervisor.X86.CpuPolicy.MaxLeaves, Leaves = CallerBase + Data };
        Assert.Equal(0, Domctl(XEN_DOMCTL_get_cpu_policy, d, ref op));
        var leaves = new Span<XenCpuidLeaf>(_buffers + Data, (int)op.As<XenDomctlCpuPolicy>().NrLeaves).ToArray();
        int i1 = Array.FindIndex(leaves, l => l.Leaf == 1), i7 = Array.FindIndex(leaves, l => l.Leaf == 7 && l.Subleaf == 0);
        const uint Rdrand = 1u << 30, Bmi2 = 1u << 8;
        Assert.NotEqual(0u, leaves[i1].C & Rdrand); // the engine has both
        Assert.NotEqual(0u, leaves[i7].B & Bmi2);

        // What libxl sends for cpuid="host,rdrand=0,bmi2=0": the domain's policy with the two bits cleared. The whole
        // policy goes back, and only those two leaves' bits change, on every vCPU.
        leaves[i1].C &= ~Rdrand;
        leaves[i7].B &= ~Bmi2;
        leaves.CopyTo(new Span<XenCpuidLeaf>(_buffers + Data, leaves.Length));
        op.As<XenDomctlCpuPolicy>() = new XenDomctlCpuPolicy { NrLeaves = (uint)leaves.Length, Leaves = CallerBase + Data };
        Assert.Equal(0, Domctl(XEN_DOMCTL_set_cpu_policy, d, ref op));
        foreach (var v in _host.Guest(d).Vcpus)
        {
            v.Cpuid!.Cpuid(1, 0, out _, out uint b1, out uint c1, out _);
            Assert.Equal(0u, c1 & Rdrand);
            Assert.NotEqual(0u, c1 & (1u << 31));       // still the hypervisor bit
            Assert.Equal((uint)(2 * v.Id), b1 >> 24);    // still the vCPU's own APIC ID
            v.Cpuid.Cpuid(7, 0, out _, out uint b7, out _, out _);
            Assert.Equal(0u, b7 & Bmi2);
            Assert.NotEqual(0u, b7 & 1u);                // FSGSBASE stays
        }
        op.As<XenDomctlCpuPolicy>() = new XenDomctlCpuPolicy { NrLeaves = XenSharp.Hypervisor.X86.CpuPolicy.MaxLeaves, Leaves = CallerBase + Data };
        Assert.Equal(0, Domctl(XEN_DOMCTL_get_cpu_policy, d, ref op)); // the domain's policy reads back as set
        var back = new Span<XenCpuidLeaf>(_buffers + Data, (int)op.As<XenDomctlCpuPolicy>().NrLeaves).ToArray();
        Assert.Equal(0u, back.Single(l => l.Leaf == 1).C & Rdrand);

        // Leaf by leaf, as Xen updates it: a lower basic limit alone empties the leaves above it and keeps the rest.
        At<XenCpuidLeaf>(Data) = leaves[0] with { A = 7 };
        op.As<XenDomctlCpuPolicy>() = new XenDomctlCpuPolicy { NrLeaves = 1, Leaves = CallerBase + Data };
        Assert.Equal(0, Domctl(XEN_DOMCTL_set_cpu_policy, d, ref op));
        var cpuid = _host.Guest(d).Vcpus[1].Cpuid!;
        cpuid.Cpuid(0, 0, out uint max, out _, out _, out _);
        Assert.Equal(7u, max);
        cpuid.Cpuid(0xD, 0, out uint xcr0, out uint size, out _, out _);
        Assert.Equal((0u, 0u), (xcr0, size));
        cpuid.Cpuid(1, 0, out _, out _, out uint c, out _);
        Assert.Equal(0u, c & Rdrand);

        // Features come back within the engine's maximum; one beyond it is EINVAL and changes nothing.
        leaves[i1].C |= Rdrand;
        At<XenCpuidLeaf>(Data) = leaves[i1];
        op.As<XenDomctlCpuPolicy>() = new XenDomctlCpuPolicy { NrLeaves = 1, Leaves = CallerBase + Data };
        Assert.Equal(0, Domctl(XEN_DOMCTL_set_cpu_policy, d, ref op));
        cpuid.Cpuid(1, 0, out _, out _, out c, out _);
        Assert.NotEqual(0u, c & Rdrand);
        At<XenCpuidLeaf>(Data) = leaves[i7] with { B = ~0u };
        Assert.Equal(-Errno.EINVAL, Domctl(XEN_DOMCTL_set_cpu_policy, d, ref op));
        cpuid.Cpuid(7, 0, out _, out uint b, out _, out _);
        Assert.Equal(0u, b & Bmi2);

        // Once the domain has run, the policy is fixed: EEXIST.
        Assert.Equal(0, Domctl(XEN_DOMCTL_unpausedomain, d, ref op));
        At<XenCpuidLeaf>(Data) = leaves[i7];
        op.As<XenDomctlCpuPolicy>() = new XenDomctlCpuPolicy { NrLeaves = 1, Leaves = CallerBase + Data };
        Assert.Equal(-Errno.EEXIST, Domctl(XEN_DOMCTL_set_cpu_policy, d, ref op));
    }

    [Fact]
    public void FeaturesetTscInfoAndPagingPool()
    {
        var sys = new XenSysctl();
        sys.As<XenSysctlCpuFeatureset>() = new XenSysctlCpuFeatureset { Index = XEN_SYSCTL_cpu_featureset_host, NrFeatures = 4, Features = CallerBase + Data };
        Assert.Equal(0, Sysctl(XEN_SYSCTL_get_cpu_featureset, ref sys));
        Assert.Equal(18u, sys.As<XenSysctlCpuFeatureset>().NrFeatures);
        Assert.NotEqual(0u, At<uint>(Data)); // leaf 1 EDX: FPU and more

        Assert.Equal(0, Create(PvhConfig(1), out ushort d));
        var op = new XenDomctl();
        Assert.Equal(0, Domctl(XEN_DOMCTL_gettscinfo, d, ref op));
        var tsc = op.As<XenDomctlTscInfo>();
        Assert.Equal((uint)TscMode.Default, tsc.TscMode);
        op.As<XenDomctlTscInfo>() = new XenDomctlTscInfo { TscMode = (uint)TscMode.Default };
        Assert.Equal(0, Domctl(XEN_DOMCTL_settscinfo, d, ref op));
        op.As<XenDomctlTscInfo>() = new XenDomctlTscInfo { TscMode = 7 };
        Assert.Equal(-Errno.EINVAL, Domctl(XEN_DOMCTL_settscinfo, d, ref op));
        op.As<XenDomctlTscInfo>() = new XenDomctlTscInfo { TscMode = (uint)TscMode.NativeParavirt };
        Assert.Equal(-Errno.EINVAL, Domctl(XEN_DOMCTL_settscinfo, d, ref op)); // removed from Xen
        op.As<XenDomctlTscInfo>() = new XenDomctlTscInfo { TscMode = (uint)TscMode.AlwaysEmulate, GtscKhz = tsc.GtscKhz + 1 };
        Assert.Equal(-Errno.EOPNOTSUPP, Domctl(XEN_DOMCTL_settscinfo, d, ref op)); // another frequency than the engine's
        // Each mode Xen 4.17 has is taken, and the vCPU's TSC leaf (0x40000003) reports it from then on.
        foreach (var (mode, emulated) in new[] { (TscMode.AlwaysEmulate, 1u), (TscMode.Native, 0u), (TscMode.Default, 0u) })
        {
            op.As<XenDomctlTscInfo>() = new XenDomctlTscInfo { TscMode = (uint)mode, GtscKhz = mode == TscMode.Native ? tsc.GtscKhz : 0 };
            Assert.Equal(0, Domctl(XEN_DOMCTL_settscinfo, d, ref op));
            Assert.Equal(0, Domctl(XEN_DOMCTL_gettscinfo, d, ref op));
            Assert.Equal((uint)mode, op.As<XenDomctlTscInfo>().TscMode);
            _host.Guest(d).Vcpus[0].Cpuid!.Cpuid(0x40000003, 0, out uint flags, out uint reported, out uint khz, out _);
            Assert.Equal(((uint)mode, emulated, tsc.GtscKhz), (reported, flags & 1, khz));
        }

        op.As<XenDomctlPagingMempool>().Size = 4 << 20;
        Assert.Equal(0, Domctl(XEN_DOMCTL_set_paging_mempool_size, d, ref op));
        op.As<XenDomctlPagingMempool>().Size = 0;
        Assert.Equal(0, Domctl(XEN_DOMCTL_get_paging_mempool_size, d, ref op));
        Assert.Equal(4UL << 20, op.As<XenDomctlPagingMempool>().Size);
        op.As<XenDomctlPagingMempool>().Size = 100;
        Assert.Equal(-Errno.EINVAL, Domctl(XEN_DOMCTL_set_paging_mempool_size, d, ref op));
    }

    [Fact]
    public void SetMemoryMapAndClaimPages()
    {
        Assert.Equal(0, Create(PvhConfig(1), out ushort d));
        At<E820Entry>(Data) = new E820Entry { Addr = 0, Size = 16 << 20, Type = 1 };
        At<E820Entry>(Data + 20) = new E820Entry { Addr = 0xFC000000, Size = 0x1000, Type = 2 };
        At<XenForeignMemoryMap>(1024) = new XenForeignMemoryMap { Domid = d, Map = new XenMemoryMap { NrEntries = 2, Buffer = CallerBase + Data } };
        Assert.Equal(0, _dom0.Hypercall(Xen.__HYPERVISOR_memory_op, Memory.XENMEM_set_memory_map, CallerBase + 1024));
        At<XenForeignMemoryMap>(1024) = new XenForeignMemoryMap { Domid = d, Map = new XenMemoryMap { NrEntries = 129, Buffer = CallerBase + Data } };
        Assert.Equal(-Errno.EINVAL, _dom0.Hypercall(Xen.__HYPERVISOR_memory_op, Memory.XENMEM_set_memory_map, CallerBase + 1024));
        At<XenForeignMemoryMap>(1024) = new XenForeignMemoryMap { Domid = 999, Map = new XenMemoryMap { NrEntries = 1, Buffer = CallerBase + Data } };
        Assert.Equal(-Errno.ESRCH, _dom0.Hypercall(Xen.__HYPERVISOR_memory_op, Memory.XENMEM_set_memory_map, CallerBase + 1024));

        At<XenMemoryReservation>(1024) = new XenMemoryReservation { NrExtents = 1024, Domid = d };
        Assert.Equal(0, _dom0.Hypercall(Xen.__HYPERVISOR_memory_op, Memory.XENMEM_claim_pages, CallerBase + 1024));
        At<XenMemoryReservation>(1024) = new XenMemoryReservation { NrExtents = 1UL << 40, Domid = d };
        Assert.Equal(-Errno.ENOMEM, _dom0.Hypercall(Xen.__HYPERVISOR_memory_op, Memory.XENMEM_claim_pages, CallerBase + 1024));
        At<XenMemoryReservation>(1024) = new XenMemoryReservation { NrExtents = 1, ExtentOrder = 1, Domid = d };
        Assert.Equal(-Errno.EINVAL, _dom0.Hypercall(Xen.__HYPERVISOR_memory_op, Memory.XENMEM_claim_pages, CallerBase + 1024));
    }

    [Fact]
    public void GrantTableResourceFramesAreTheDomainsOwn()
    {
        Assert.Equal(0, Create(PvhConfig(1), out ushort d));
        var offsets = new long[2];
        Assert.Equal(0, _host.Dom0ResourceFrames(d, Memory.XENMEM_resource_grant_table, Memory.XENMEM_resource_grant_table_id_shared, 0, offsets, out var memfd));
        Assert.NotNull(memfd);
        memfd!.DangerousRelease();
        Assert.All(offsets, o => Assert.True(o >= 0));
        Assert.NotEqual(offsets[0], offsets[1]);
        // Past the table's limit (32 frames), a status frame under v1, a resource not served, no such domain.
        Assert.Equal(-Errno.EINVAL, _host.Dom0ResourceFrames(d, Memory.XENMEM_resource_grant_table, 0, 31, offsets, out _));
        Assert.Equal(-Errno.EINVAL, _host.Dom0ResourceFrames(d, Memory.XENMEM_resource_grant_table, Memory.XENMEM_resource_grant_table_id_status, 0, offsets, out _));
        Assert.Equal(-Errno.EOPNOTSUPP, _host.Dom0ResourceFrames(d, Memory.XENMEM_resource_vmtrace_buf, 0, 0, offsets, out _));
        Assert.Equal(-Errno.ENOENT, _host.Dom0ResourceFrames(d, Memory.XENMEM_resource_ioreq_server, 0, 0, offsets, out _)); // no such server
        Assert.Equal(-Errno.ESRCH, _host.Dom0ResourceFrames(999, Memory.XENMEM_resource_grant_table, 0, 0, offsets, out _));
    }
}
