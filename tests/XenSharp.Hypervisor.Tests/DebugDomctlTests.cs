using System.Runtime.InteropServices;
using XenSharp.Cpu;
using XenSharp.Public;
using XenSharp.Public.ArchX86;
using XenSharp.Public.Hvm;
using static XenSharp.Public.Domctl;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// The domctls debuggers and libxc's save read a running guest with (getvcpucontext, gethvmcontext_partial,
/// getpageframeinfo3, resumedomain), through a <see cref="Dom0HypercallContext"/> as privcmd sets it up: what the
/// guest's vCPU and memory hold, and Xen's errno for garbage.
/// </summary>
[Trait("Feature", "Dom0 stable libraries")]
public sealed unsafe class DebugDomctlTests : IDisposable
{
    private const ulong CallerBase = 0x7f00_0000_0000;
    private const int BufferBytes = 64 * 1024;
    private const int Data = 4096;
    private readonly XenHypervisor _host = TestHosts.Create(pcpus: 2);
    private readonly byte* _buffers = (byte*)NativeMemory.AllocZeroed(BufferBytes);
    private readonly Dom0HypercallContext _dom0;
    private readonly ushort _guest;

    public DebugDomctlTests()
    {
        _dom0 = _host.OpenDom0Hypercalls((nint)_buffers, CallerBase, BufferBytes);
        _guest = _host.CreateDomain(new DomainCreateConfig(DomainKind.Pvh, 1024, 1));
        _host.PopulatePhysmap(_guest, 0, 256);
        _host.SetVcpuRegisters(_guest, 0, new Registers { Rip = 0x1234, Rsp = 0x8000, Rbx = 0xB0B, Rflags = 2 }, PvhEntryState.Flat32());
    }

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

    private long GetVcpuContext(uint vcpu, ulong buffer)
    {
        var op = new XenDomctl();
        op.As<XenDomctlVcpucontext>() = new XenDomctlVcpucontext { Vcpu = vcpu, Ctxt = buffer };
        return Domctl(XEN_DOMCTL_getvcpucontext, _guest, ref op);
    }

    [Fact]
    public void GetvcpucontextShowsTheVcpusRegisters()
    {
        Assert.Equal(0, GetVcpuContext(0, CallerBase + Data));
        ref var c = ref At<VcpuGuestContext>(Data);
        Assert.Equal(0x1234UL, c.UserRegs.Rip);
        Assert.Equal(0x8000UL, c.UserRegs.Rsp);
        Assert.Equal(0xB0BUL, c.UserRegs.Rbx);
        Assert.NotEqual(0UL, c.Flags & VcpuGuestContext.VGCF_online);
        // A vCPU the domain does not have, a buffer outside the caller's, Domain-0 itself.
        Assert.Equal(-Errno.EINVAL, GetVcpuContext(1, CallerBase + Data));
        Assert.Equal(-Errno.EFAULT, GetVcpuContext(0, 0x1000));
        var op = new XenDomctl();
        op.As<XenDomctlVcpucontext>() = new XenDomctlVcpucontext { Vcpu = 0, Ctxt = CallerBase + Data };
        Assert.Equal(-Errno.EINVAL, Domctl(XEN_DOMCTL_getvcpucontext, 0, ref op));
    }

    private long VcpuContextOp(uint cmd, ushort domain, uint vcpu, ulong buffer)
    {
        var op = new XenDomctl();
        op.As<XenDomctlVcpucontext>() = new XenDomctlVcpucontext { Vcpu = vcpu, Ctxt = buffer };
        return Domctl(cmd, domain, ref op);
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void A32BitPvVcpusContextIsSetAndReadInTheCompatLayout()
    {
        var g = new Guest(_host, vcpus: 2, ramMiB: 4, maxMiB: 8, type: DomainKind.Pv);
        _host.PvSetAddressSize(g.Id, 32);
        ulong Mfn(ulong gfn) => g.Domain.P2m.TryLookup(gfn, out uint m, out _) ? m : throw new InvalidOperationException();
        const ulong L3 = 0x100, L2 = 0x101, L2Top = 0x102;
        g.Write(L3 << 12, (Mfn(L2) << 12) | 1);
        g.Write((L3 << 12) + 3 * 8, (Mfn(L2Top) << 12) | 1);

        var size = new XenDomctl();
        Assert.Equal(0, Domctl(XEN_DOMCTL_get_address_size, g.Id, ref size));
        Assert.Equal(32u, size.As<XenDomctlAddressSize>().Size);
        Assert.Equal(0, Domctl(XEN_DOMCTL_get_address_size, _guest, ref size));
        Assert.Equal(64u, size.As<XenDomctlAddressSize>().Size);

        // vCPU 1 set from a compat context, as a restorer does, then read back in the same layout.
        ref var c = ref At<CompatVcpuGuestContext>(Data);
        c = default;
        c.Flags = (uint)VcpuGuestContext.VGCF_in_kernel;
        (c.Eip, c.Cs, c.Esp, c.Ss, c.Ds, c.Es) = (0xC0101234, 0xE019, 0xC0108000, 0xE021, 0xE021, 0xE021);
        (c.Esi, c.Eflags) = (0x5EED, 0x1202); // IOPL 1: the virtual one
        (c.KernelSs, c.KernelSp) = (0xE021, 0xC0109000);
        (c.EventCallbackCs, c.EventCallbackEip, c.FailsafeCallbackCs, c.FailsafeCallbackEip) = (0xE019, 0xC0100400, 0xE019, 0xC0100500);
        fixed (byte* traps = c.TrapCtxt)
            ((CompatTrapInfo*)traps)[14] = new CompatTrapInfo { Vector = 14, Cs = 0xE019, Address = 0xC0100600 };
        uint cr3 = X86.Pv.PvContext.CompatCr3(Mfn(L3));
        c.Ctrlreg[3] = cr3;
        Assert.Equal(0, VcpuContextOp(XEN_DOMCTL_setvcpucontext, g.Id, 1, CallerBase + Data));

        new Span<byte>(_buffers + Data, 8192).Fill(0xAA);
        Assert.Equal(0, VcpuContextOp(XEN_DOMCTL_getvcpucontext, g.Id, 1, CallerBase + Data));
        c = ref At<CompatVcpuGuestContext>(Data);
        Assert.Equal((0xC0101234u, (ushort)0xE019, 0xC0108000u, (ushort)0xE021), (c.Eip, c.Cs, c.Esp, c.Ss));
        Assert.Equal(0x5EEDu, c.Esi);
        Assert.Equal(0x1000u, c.Eflags & 0x3000);
        Assert.Equal((0xE021u, 0xC0109000u), (c.KernelSs, c.KernelSp));
        Assert.Equal((0xE019u, 0xC0100400u, 0xE019u, 0xC0100500u), (c.EventCallbackCs, c.EventCallbackEip, c.FailsafeCallbackCs, c.FailsafeCallbackEip));
        fixed (byte* traps = c.TrapCtxt)
        {
            Assert.Equal(0xC0100600u, ((CompatTrapInfo*)traps)[14].Address);
            Assert.Equal(0u, ((CompatTrapInfo*)traps)[13].Address);
        }
        Assert.Equal(cr3, c.Ctrlreg[3]);
        Assert.NotEqual(0u, c.Flags & (uint)VcpuGuestContext.VGCF_in_kernel);
        // The compat layout and nothing past it.
        Assert.Equal(0xAA, _buffers[Data + sizeof(CompatVcpuGuestContext)]);

        // Set again on the same base: the registers change; on another base: Xen's -EINVAL.
        c.Esi = 0xF00D;
        Assert.Equal(0, VcpuContextOp(XEN_DOMCTL_setvcpucontext, g.Id, 1, CallerBase + Data));
        Assert.Equal(0, VcpuContextOp(XEN_DOMCTL_getvcpucontext, g.Id, 1, CallerBase + Data));
        Assert.Equal(0xF00Du, At<CompatVcpuGuestContext>(Data).Esi);
        At<CompatVcpuGuestContext>(Data).Ctrlreg[3] = X86.Pv.PvContext.CompatCr3(Mfn(L2));
        Assert.Equal(-Errno.EINVAL, VcpuContextOp(XEN_DOMCTL_setvcpucontext, g.Id, 1, CallerBase + Data));
        Assert.Equal(-Errno.EINVAL, VcpuContextOp(XEN_DOMCTL_setvcpucontext, g.Id, 2, CallerBase + Data));
        Assert.Equal(-Errno.EFAULT, VcpuContextOp(XEN_DOMCTL_setvcpucontext, g.Id, 1, 0x1000));
        // A translated domain's vCPUs are not set this way.
        Assert.Equal(-Errno.EINVAL, VcpuContextOp(XEN_DOMCTL_setvcpucontext, _guest, 0, CallerBase + Data));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void A64BitPvVcpusContextIsSetAndReadInTheNativeLayout()
    {
        var g = new Guest(_host, vcpus: 2, ramMiB: 4, maxMiB: 8, type: DomainKind.Pv);
        ulong l4 = g.Domain.P2m.TryLookup(0x100, out uint m, out _) ? m : throw new InvalidOperationException();

        ref var c = ref At<VcpuGuestContext>(Data);
        c = default;
        c.Flags = VcpuGuestContext.VGCF_in_kernel;
        (c.UserRegs.Rip, c.UserRegs.Rsp, c.UserRegs.R12, c.UserRegs.Rflags) = (0xFFFFFFFF81001234, 0xFFFFFFFF81008000, 0x5EED, 0x2202);
        (c.KernelSs, c.KernelSp) = (0xE02B, 0xFFFFFFFF81009000);
        (c.EventCallbackEip, c.FailsafeCallbackEip, c.SyscallCallbackEip) = (0xFFFFFFFF81000400, 0xFFFFFFFF81000500, 0xFFFFFFFF81000700);
        (c.FsBase, c.GsBaseKernel, c.GsBaseUser) = (0x7F0000001000, 0xFFFF888000002000, 0x7F0000003000);
        fixed (byte* traps = c.TrapCtxt)
            ((TrapInfo*)traps)[14] = new TrapInfo { Vector = 14, Cs = 0xE033, Address = 0xFFFFFFFF81000600 };
        c.Ctrlreg[3] = l4 << 12;
        Assert.Equal(0, VcpuContextOp(XEN_DOMCTL_setvcpucontext, g.Id, 1, CallerBase + Data));

        new Span<byte>(_buffers + Data, 8192).Fill(0xAA);
        Assert.Equal(0, VcpuContextOp(XEN_DOMCTL_getvcpucontext, g.Id, 1, CallerBase + Data));
        c = ref At<VcpuGuestContext>(Data);
        Assert.Equal((0xFFFFFFFF81001234UL, 0xFFFFFFFF81008000UL, 0x5EEDUL), (c.UserRegs.Rip, c.UserRegs.Rsp, c.UserRegs.R12));
        Assert.Equal(0x2000UL, c.UserRegs.Rflags & 0x3000); // the virtual IOPL 2
        Assert.Equal((0xE02BUL, 0xFFFFFFFF81009000UL), (c.KernelSs, c.KernelSp));
        Assert.Equal((0xFFFFFFFF81000400UL, 0xFFFFFFFF81000500UL, 0xFFFFFFFF81000700UL), (c.EventCallbackEip, c.FailsafeCallbackEip, c.SyscallCallbackEip));
        Assert.Equal((0x7F0000001000UL, 0xFFFF888000002000UL, 0x7F0000003000UL), (c.FsBase, c.GsBaseKernel, c.GsBaseUser));
        fixed (byte* traps = c.TrapCtxt)
            Assert.Equal(0xFFFFFFFF81000600UL, ((TrapInfo*)traps)[14].Address);
        Assert.Equal(l4 << 12, c.Ctrlreg[3]);
        Assert.Equal(0UL, c.Ctrlreg[1]);
        Assert.NotEqual(0UL, c.Flags & VcpuGuestContext.VGCF_in_kernel);
        Assert.Equal(0xAA, _buffers[Data + sizeof(VcpuGuestContext)]);
        var size = new XenDomctl();
        Assert.Equal(0, Domctl(XEN_DOMCTL_get_address_size, g.Id, ref size));
        Assert.Equal(64u, size.As<XenDomctlAddressSize>().Size);
    }

    private long Partial(uint type, uint instance, ulong bufsz, ulong buffer, out ulong size)
    {
        var op = new XenDomctl();
        op.As<XenDomctlHvmcontextPartial>() = new XenDomctlHvmcontextPartial { Type = type, Instance = instance, Bufsz = bufsz, Buffer = buffer };
        long rc = Domctl(XEN_DOMCTL_gethvmcontext_partial, _guest, ref op);
        size = op.As<XenDomctlHvmcontextPartial>().Bufsz;
        return rc;
    }

    [Fact]
    public void GethvmcontextPartialGivesOneRecord()
    {
        Assert.Equal(0, Partial(HvmSave.CPU, 0, 0, 0, out ulong size));
        Assert.Equal((ulong)Marshal.SizeOf<HvmHwCpu>(), size);
        Assert.Equal(-Errno.ENOBUFS, Partial(HvmSave.CPU, 0, size - 1, CallerBase + Data, out _));
        Assert.Equal(0, Partial(HvmSave.CPU, 0, size, CallerBase + Data, out _));
        Assert.Equal(0x1234UL, At<HvmHwCpu>(Data).Rip);
        Assert.Equal(0xB0BUL, At<HvmHwCpu>(Data).Rbx);
        // END, HEADER and unknown types; a vCPU the domain lacks; a record a PVH domain has none of.
        Assert.Equal(-Errno.EINVAL, Partial(HvmSave.END, 0, 0, 0, out _));
        Assert.Equal(-Errno.EINVAL, Partial(HvmSave.HEADER, 0, 0, 0, out _));
        Assert.Equal(-Errno.EINVAL, Partial(99, 0, 0, 0, out _));
        Assert.Equal(-Errno.ENOENT, Partial(HvmSave.CPU, 3, 0, 0, out _));
        Assert.Equal(-Errno.ENOENT, Partial(HvmSave.PIC, 0, 0, 0, out _));
        Assert.Equal(-Errno.EFAULT, Partial(HvmSave.CPU, 0, size, 0x1000, out _));
    }

    [Fact]
    public void GetpageframeinfoTellsRamFromHoles()
    {
        ulong[] gfns = [0, 10, 255, 256, 0x100000];
        for (int i = 0; i < gfns.Length; i++)
            At<ulong>(Data + 8 * i) = gfns[i];
        var op = new XenDomctl();
        op.As<XenDomctlGetpageframeinfo3>() = new XenDomctlGetpageframeinfo3 { Num = (ulong)gfns.Length, Array = CallerBase + Data };
        Assert.Equal(0, Domctl(XEN_DOMCTL_getpageframeinfo3, _guest, ref op));
        const ulong xtab = 0xFUL << 28;
        Assert.Equal([0UL, 0, 0, xtab, xtab], new Span<ulong>(_buffers + Data, gfns.Length).ToArray());

        op.As<XenDomctlGetpageframeinfo3>() = new XenDomctlGetpageframeinfo3 { Num = 1025, Array = CallerBase + Data };
        Assert.Equal(-Errno.E2BIG, Domctl(XEN_DOMCTL_getpageframeinfo3, _guest, ref op));
        op.As<XenDomctlGetpageframeinfo3>() = new XenDomctlGetpageframeinfo3 { Num = 1, Array = 0x1000 };
        Assert.Equal(-Errno.EFAULT, Domctl(XEN_DOMCTL_getpageframeinfo3, _guest, ref op));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void GetpageframeinfoOfAPvGuestGivesEachMachineFramesTableTypeAndPin()
    {
        ushort pv = _host.CreateDomain(new DomainCreateConfig(DomainKind.Pv, 1024, 1));
        _host.PopulatePhysmap(pv, 0, 16);
        ulong Mfn(ulong pfn) => _host.PvMfnOf(pv, pfn);
        // An L4 at pfn 1 → L3 at 2 → L2 at 3 → L1 at 4 → a data page at 5; the L4 pinned, the L1 pinned as well.
        for (ulong pfn = 1; pfn <= 4; pfn++)
            _host.WriteGuestMemory(pv, pfn << 12, BitConverter.GetBytes((Mfn(pfn + 1) << 12) | 3));
        _host.PvPinTable(pv, 1, Mfn(4));
        _host.PvPinTable(pv, 4, Mfn(1));

        ulong[] frames = [Mfn(1), Mfn(2), Mfn(3), Mfn(4), Mfn(5), Mfn(6), _host.SharedInfoMfn(pv), Mfn(1) ^ 0x10000000, _host.SharedInfoMfn(_guest)];
        for (int i = 0; i < frames.Length; i++)
            At<ulong>(Data + 8 * i) = frames[i];
        var op = new XenDomctl();
        op.As<XenDomctlGetpageframeinfo3>() = new XenDomctlGetpageframeinfo3 { Num = (ulong)frames.Length, Array = CallerBase + Data };
        Assert.Equal(0, Domctl(XEN_DOMCTL_getpageframeinfo3, pv, ref op));
        const ulong pin = 1UL << 31, xtab = 0xFUL << 28;
        Assert.Equal([(4UL << 28) | pin, 3UL << 28, 2UL << 28, (1UL << 28) | pin, 0, 0, xtab, xtab, xtab],
            new Span<ulong>(_buffers + Data, frames.Length).ToArray());
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void MachphysMfnListNamesTheM2psSuperpagesToA64BitCaller()
    {
        // XENMEM_machphys_mfn_list: max_extents, extent_start, nr_extents; two of them asked for.
        At<uint>(0) = 2;
        At<ulong>(8) = CallerBase + Data;
        At<uint>(16) = 0xFFFF;
        Assert.Equal(0, _dom0.Hypercall(Xen.__HYPERVISOR_memory_op, Memory.XENMEM_machphys_mfn_list, CallerBase));
        uint n = At<uint>(16);
        Assert.InRange(n, 1u, 2u);
        Assert.NotEqual(0UL, At<ulong>(Data));
        // Each names the first of 512 contiguous frames of M2P entries (512 to a frame): a PV domain's frame is
        // found there mapping back to its pfn.
        ushort pv = _host.CreateDomain(new DomainCreateConfig(DomainKind.Pv, 1024, 1));
        _host.PopulatePhysmap(pv, 0, 4);
        _host.PvSetMachToPhys(pv, 0, 4);
        ulong mfn = _host.PvMfnOf(pv, 3);
        const ulong perChunk = 512 * 512;
        Assert.True(mfn / perChunk < n, $"the M2P list's {n} superpages do not reach frame 0x{mfn:x}");
        ulong chunk = At<ulong>(Data + 8 * (int)(mfn / perChunk));
        Assert.Equal(3UL, ((ulong*)_host.Frames.PageAddress(chunk))[mfn % perChunk]);

        Assert.Equal(-Errno.EFAULT, _dom0.Hypercall(Xen.__HYPERVISOR_memory_op, Memory.XENMEM_machphys_mfn_list, 0x1000));
    }

    [Fact]
    public void ResumedomainOfADomainNotShutDownIsNothing()
    {
        var op = new XenDomctl();
        Assert.Equal(0, Domctl(XEN_DOMCTL_resumedomain, _guest, ref op));
        Assert.Equal(DomainRunState.Paused, _host.GetDomainInfo(_guest).State);
        Assert.Equal(-Errno.ESRCH, Domctl(XEN_DOMCTL_resumedomain, 4000, ref op));
    }
}
