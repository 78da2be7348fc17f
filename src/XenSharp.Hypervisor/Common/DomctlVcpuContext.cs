using System.Runtime.InteropServices;
using XenSharp.Public;
using XenSharp.Public.ArchX86;
using XenSharp.Public.Hvm;
using static XenSharp.Public.Domctl;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// The domctls that show a running guest's vCPUs to a debugger (xenctx, gdbsx, libxc's page-table walker):
/// XEN_DOMCTL_getvcpucontext (a translated vCPU's vcpu_guest_context, 64-bit layout) and
/// XEN_DOMCTL_gethvmcontext_partial (one record of the HVM context, e.g. a vCPU's CPU record for its CR3 and EFER).
/// </summary>
internal static class DomctlVcpuContext
{
    private static XenHypervisor Control(Vcpu v) =>
        v.Domain.Host.Control ?? throw new InvalidOperationException("no control face for the toolstack's domctls");

    /// <summary>XEN_DOMCTL_getvcpucontext: -EINVAL for a vCPU the domain does not have, -ENODATA for one not yet
    /// initialised (no state to show), as Xen's common/domctl.c. PV vCPUs are not translated this way.</summary>
    public static long GetVcpuContext(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        ref var c = ref op.As<XenDomctlVcpucontext>();
        if (d!.IsHost || d == v.Domain || d.GetVcpu(c.Vcpu) is not { } target)
            return -Errno.EINVAL;
        if (target.Engine is null && target.PendingContext is null)
            return -Errno.ENODATA;
        if (d.Pv is { } pv)
            return GetPvContext(v, d, target, c.Ctxt, pv.Is32, out copyBack);
        VcpuGuestContext context;
        try
        {
            context = Control(v).GetVcpuContext(d.DomainId, (int)c.Vcpu);
        }
        catch (HypervisorException e)
        {
            return -(e.Errno == 0 ? Errno.EINVAL : e.Errno);
        }
        if (!GuestAccess.Write(v, c.Ctxt, context))
            return -Errno.EFAULT;
        copyBack = true;
        return 0;
    }

    /// <summary>A PV vCPU's context, in the domain's own layout: the compat (x86_32) one for a 32-bit PV domain, as
    /// Xen's arch_get_info_guest writes it for any caller.</summary>
    private static unsafe long GetPvContext(Vcpu v, Domain d, Vcpu target, ulong ctxt, bool compat, out bool copyBack)
    {
        copyBack = false;
        bool written;
        d.Host.PauseDomain(d);
        try
        {
            if (compat)
            {
                var c = new CompatVcpuGuestContext();
                X86.Pv.PvContext.GetCompat(target, ref c);
                written = GuestAccess.Write(v, ctxt, c);
            }
            else
            {
                var c = new VcpuGuestContext();
                X86.Pv.PvContext.Get(target, ref c);
                written = GuestAccess.Write(v, ctxt, c);
            }
        }
        finally { d.Host.UnpauseDomain(d); }
        if (!written)
            return -Errno.EFAULT;
        copyBack = true;
        return 0;
    }

    /// <summary>XEN_DOMCTL_setvcpucontext of a PV domain (Xen's arch_set_info_guest through the domctl): the context
    /// in the domain's layout, read while the domain is paused. A translated domain's vCPUs are set through
    /// XEN_DOMCTL_sethvmcontext instead: -EINVAL here, as for a vCPU the domain does not have or the caller's own
    /// domain; a null context (Xen's vCPU reset) is -EOPNOTSUPP.</summary>
    public static unsafe long SetVcpuContext(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        ref var c = ref op.As<XenDomctlVcpucontext>();
        if (d!.IsHost || d == v.Domain || d.GetVcpu(c.Vcpu) is not { } target || d.Pv is not { } pv)
            return -Errno.EINVAL;
        if (c.Ctxt == 0)
            return -Errno.EOPNOTSUPP;
        int size = pv.Is32 ? sizeof(CompatVcpuGuestContext) : sizeof(VcpuGuestContext);
        var buffer = new byte[size];
        if (!GuestAccess.CopyFrom(v, c.Ctxt, buffer))
            return -Errno.EFAULT;
        d.Host.PauseDomain(d);
        try
        {
            return X86.Pv.PvContext.Set(target, buffer);
        }
        finally { d.Host.UnpauseDomain(d); }
    }

    /// <summary>XEN_DOMCTL_get_address_size: 32 for a 32-bit PV domain, 64 for any other (Xen's
    /// BITS_PER_LONG for a native one).</summary>
    public static long GetAddressSize(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        op.As<XenDomctlAddressSize>().Size = d!.Pv is { Is32: true } ? 32u : 64u;
        copyBack = true;
        return 0;
    }

    /// <summary>Per-vCPU record types (HVMSR_PER_VCPU): a missing instance is -ENODATA, beyond the vCPUs -ENOENT.</summary>
    private static bool PerVcpu(uint type) => type is HvmSave.CPU or HvmSave.LAPIC or HvmSave.LAPIC_REGS or HvmSave.MTRR
        or HvmSave.CPU_XSAVE or HvmSave.VIRIDIAN_VCPU or HvmSave.VMCE_VCPU or HvmSave.TSC_ADJUST or HvmSave.CPU_MSR;

    /// <summary>XEN_DOMCTL_gethvmcontext_partial (Xen's hvm_save_one): the body of the record of <c>type</c> and
    /// <c>instance</c>. A null buffer asks for its length; a short one is -ENOBUFS; END, HEADER and unknown types
    /// are -EINVAL.</summary>
    public static long GetHvmContextPartial(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        ref var p = ref op.As<XenDomctlHvmcontextPartial>();
        if (d!.IsHost || d == v.Domain || d.Type == DomainKind.Pv || d.IsDying)
            return -Errno.EINVAL;
        if (p.Type is HvmSave.END or HvmSave.HEADER || p.Type > HvmSave.CPU_MSR)
            return -Errno.EINVAL;
        if (PerVcpu(p.Type) && p.Instance >= (uint)d.Vcpus.Length)
            return -Errno.ENOENT;
        byte[] context;
        try
        {
            context = Control(v).GetHvmContext(d.DomainId);
        }
        catch (HypervisorException e)
        {
            return -(e.Errno == 0 ? Errno.EINVAL : e.Errno);
        }
        int descriptor = Marshal.SizeOf<HvmSaveDescriptor>();
        for (int off = 0; off + descriptor <= context.Length;)
        {
            var desc = MemoryMarshal.Read<HvmSaveDescriptor>(context.AsSpan(off));
            int body = off + descriptor;
            if (desc.Length > (uint)(context.Length - body))
                break;
            if (desc.Typecode == p.Type && desc.Instance == p.Instance)
            {
                if (p.Buffer != 0)
                {
                    if (p.Bufsz < desc.Length)
                        return -Errno.ENOBUFS;
                    if (!GuestAccess.CopyTo(v, p.Buffer, context.AsSpan(body, (int)desc.Length)))
                        return -Errno.EFAULT;
                }
                p.Bufsz = desc.Length;
                copyBack = true;
                return 0;
            }
            off = body + (int)desc.Length;
        }
        return PerVcpu(p.Type) ? -Errno.ENODATA : -Errno.ENOENT;
    }
}
