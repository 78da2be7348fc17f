using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using XenSharp.Public.ArchX86;

namespace XenSharp.Hypervisor;

/// <summary>What XEN_VERSION answers, as a dump-core file records it.</summary>
public sealed record XenVersionInfo(int Major, int Minor, string ExtraVersion, byte[] CompileInfo, string Capabilities,
    string Changeset, ulong VirtStart, int PageSize);

/// <summary>The domctls a core dump is made with: vCPU contexts, the shared info page, and the
/// domain's RAM frame by frame as its p2m has it (the role of XEN_DOMCTL_getvcpucontext,
/// XEN_DOMCTL_getpageframeinfo and foreign mappings for libxc's xc_domain_dumpcore).</summary>
public sealed unsafe partial class XenHypervisor
{
    public static XenVersionInfo VersionInfo { get; } = new(XenVersion.Major, XenVersion.Minor, XenVersion.ExtraVersion,
        XenVersion.CompileInfo(), XenVersion.Capabilities, XenVersion.Changeset, XenVersion.VirtStart, FrameTable.PageSize);

    /// <summary>XEN_DOMCTL_getvcpucontext for a translated (PVH/HVM) vCPU: its registers, control registers and
    /// segment bases. The domain is held off the CPUs while they are read.</summary>
    public VcpuGuestContext GetVcpuContext(ushort domid, int vcpu)
    {
        var d = Guest(domid);
        var v = d.GetVcpu((uint)vcpu) ?? throw new HypervisorException($"domain {domid} has no vCPU {vcpu}", Errno.ENOENT);
        var c = new VcpuGuestContext();
        Services.PauseDomain(d);
        try
        {
            Cpu.Registers r;
            Cpu.SpecialRegisters s;
            // A context set by the toolstack and not yet loaded (a vCPU that has not run) is the vCPU's state.
            if (v.PendingContext is { } pending)
                (r, s) = pending;
            else if (v.Engine is not null)
            {
                v.Engine.GetRegisters(out r);
                v.Engine.GetSpecialRegisters(out s);
            }
            else
                return c;
            ref var u = ref c.UserRegs;
            (u.Rax, u.Rbx, u.Rcx, u.Rdx, u.Rsi, u.Rdi, u.Rsp, u.Rbp) = (r.Rax, r.Rbx, r.Rcx, r.Rdx, r.Rsi, r.Rdi, r.Rsp, r.Rbp);
            (u.R8, u.R9, u.R10, u.R11, u.R12, u.R13, u.R14, u.R15) = (r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15);
            (u.Rip, u.Rflags) = (r.Rip, r.Rflags);
            (u.Cs, u.Ss, u.Ds, u.Es, u.Fs, u.Gs) = (s.Cs.Selector, s.Ss.Selector, s.Ds.Selector, s.Es.Selector, s.Fs.Selector, s.Gs.Selector);
            c.Ctrlreg[0] = s.Cr0;
            c.Ctrlreg[2] = s.Cr2;
            c.Ctrlreg[3] = s.Cr3;
            c.Ctrlreg[4] = s.Cr4;
            c.FsBase = s.Fs.Base;
            c.GsBaseKernel = s.Gs.Base;
            // Ring 0 of a translated guest is its kernel.
            c.Flags = (v.IsUp ? VcpuGuestContext.VGCF_online : 0) | ((s.Cs.Selector & 3) == 0 ? VcpuGuestContext.VGCF_in_kernel : 0);
            return c;
        }
        finally { Services.UnpauseDomain(d); }
    }

    /// <summary>A copy of the domain's shared info page.</summary>
    public void ReadSharedInfo(ushort domid, Span<byte> page)
    {
        var d = Guest(domid);
        new ReadOnlySpan<byte>(d.SharedInfo, FrameTable.PageSize).CopyTo(page);
    }

    /// <summary>The highest GFN the domain's p2m ever mapped.</summary>
    public ulong MaxGfn(ushort domid) => Guest(domid).P2m.MaxMappedGfn;

    /// <summary>Copies guest frame <paramref name="gfn"/> when it is RAM with a frame behind it; false for holes,
    /// MMIO, grant and foreign mappings and populate-on-demand entries not yet touched (read without filling them).</summary>
    public bool TryReadRamFrame(ushort domid, ulong gfn, Span<byte> page)
    {
        var d = Guest(domid);
        lock (d.Lock)
        {
            if (!d.P2m.TryLookup(gfn, out uint mfn, out var type) || type is not (P2mType.RamRw or P2mType.RamRo))
                return false;
            Frames.CopyOut(mfn, page);
            return true;
        }
    }
}
