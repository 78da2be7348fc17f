using System.Runtime.InteropServices;
using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86.Pv;
using XenSharp.Public;
using XenSharp.Public.ArchX86;

namespace XenSharp.Hypervisor;

/// <summary>
/// What saving and restoring a PV domain asks of the hypervisor, as libxc's x86 PV save and restore ask Xen: the
/// domain's physmap and each frame's page-table type (XEN_DOMCTL_getpageframeinfo3), its vCPUs' contexts in the
/// domain's layout (XEN_DOMCTL_{get,set}vcpucontext, XEN_DOMCTL_{get,set}_ext_vcpucontext) and its shared_info.
/// </summary>
public sealed unsafe partial class XenHypervisor
{
    /// <summary>Whether the PV domain is a 32-bit (compat) one.</summary>
    public bool PvIs32(ushort domid) => PvGuest(domid, out _).Is32;

    /// <summary>The domain's RAM: each PFN with the machine frame behind it.</summary>
    public List<(ulong Pfn, ulong Mfn)> PvPhysmap(ushort domid)
    {
        PvGuest(domid, out var d);
        var map = new List<(ulong, ulong)>();
        lock (d.Lock)
            foreach (var (gfn, mfn, type) in d.P2m.Entries())
                if (type == P2mType.RamRw)
                    map.Add((gfn, mfn));
        return map;
    }

    /// <summary>The page-table level (1–4, 0 for none) a frame of the domain is validated as, and whether the guest
    /// pinned it (XEN_DOMCTL_PFINFO_LTAB_MASK and _LPINTAB).</summary>
    public (int Level, bool Pinned) PvPageType(ushort domid, ulong mfn)
    {
        PvGuest(domid, out _);
        if (mfn > Frames.MaxMfn || Frames.OwnerOf((uint)mfn) != domid)
            return (0, false);
        lock (Frames.TypeLock)
        {
            var ti = Frames.TypeInfoOf(mfn);
            return ti.Count > 0 && ti.Validated && ti.Type is >= PageType.L1 and <= PageType.L4
                ? ((int)ti.Type, ti.Pinned) : (0, false);
        }
    }

    /// <summary>XEN_DOMCTL_getvcpucontext of a PV vCPU in the domain's own layout (the compat one for a 32-bit
    /// domain), with MFNs as the domain has them; null for a vCPU that is offline (libxc saves online ones).</summary>
    public byte[]? PvGetVcpuContext(ushort domid, int vcpu)
    {
        var pv = PvGuest(domid, out var d);
        var v = d.GetVcpu((uint)vcpu) ?? throw new HypervisorException($"d{domid} has no vcpu {vcpu}", Errno.ENOENT);
        if (!v.IsUp)
            return null;
        Services.PauseDomain(d);
        try
        {
            if (pv.Is32)
            {
                var c = new CompatVcpuGuestContext();
                PvContext.GetCompat(v, ref c);
                return MemoryMarshal.AsBytes(new ReadOnlySpan<CompatVcpuGuestContext>(in c)).ToArray();
            }
            var n = new VcpuGuestContext();
            PvContext.Get(v, ref n);
            return MemoryMarshal.AsBytes(new ReadOnlySpan<VcpuGuestContext>(in n)).ToArray();
        }
        finally { Services.UnpauseDomain(d); }
    }

    /// <summary>XEN_DOMCTL_setvcpucontext of a restored PV domain's vCPU, MFNs already the new domain's: the page
    /// tables and GDT frames are referenced and validated, the FPU state loaded when the context says it is valid,
    /// vCPU 0's context sets the domain's VM assists (as Xen's arch_set_info_guest), and a vCPU marked online comes
    /// up.</summary>
    public void PvSetVcpuContext(ushort domid, int vcpu, ReadOnlySpan<byte> context)
    {
        var pv = PvGuest(domid, out var d);
        var v = d.GetVcpu((uint)vcpu) ?? throw new HypervisorException($"d{domid} has no vcpu {vcpu}", Errno.ENOENT);
        int size = pv.Is32 ? sizeof(CompatVcpuGuestContext) : sizeof(VcpuGuestContext);
        if (context.Length != size)
            throw new HypervisorException($"d{domid}: a vCPU context of {context.Length} bytes, expected {size}", Errno.EINVAL);
        ulong flags, vmAssist;
        ReadOnlySpan<byte> fpu;
        if (pv.Is32)
        {
            var c = MemoryMarshal.Read<CompatVcpuGuestContext>(context);
            (flags, vmAssist) = (c.Flags, c.VmAssist);
        }
        else
        {
            var c = MemoryMarshal.Read<VcpuGuestContext>(context);
            (flags, vmAssist) = (c.Flags, c.VmAssist);
        }
        fpu = context[..512];
        Services.PauseDomain(d);
        try
        {
            if (vcpu == 0)
                d.VmAssist = vmAssist;
            long rc = PvContext.Set(v, context);
            if (rc != 0)
                throw new HypervisorException($"d{domid}: vCPU {vcpu}'s context does not validate", (int)-rc);
            v.Pv!.SyscallMasksEvents = (flags & VcpuGuestContext.VGCF_syscall_disables_events) != 0;
            if ((flags & VcpuGuestContext.VGCF_i387_valid) != 0 && v.Engine is { } e)
                e.TrySetFpuState(fpu, 3);
            if ((flags & VcpuGuestContext.VGCF_online) != 0 && !v.IsUp)
                Services.BringUp(v);
        }
        finally { Services.UnpauseDomain(d); }
    }

    /// <summary>XEN_DOMCTL_get_ext_vcpucontext of a PV vCPU: its SYSCALL-from-compat-mode and SYSENTER callbacks
    /// (struct xen_domctl_ext_vcpucontext, 64 bytes; the vMCE part zero).</summary>
    public byte[] PvGetExtVcpuContext(ushort domid, int vcpu)
    {
        PvGuest(domid, out var d);
        var v = d.GetVcpu((uint)vcpu) ?? throw new HypervisorException($"d{domid} has no vcpu {vcpu}", Errno.ENOENT);
        var pv = v.Pv!;
        var e = new ExtVcpuContext
        {
            Vcpu = (uint)vcpu, Size = (uint)sizeof(ExtVcpuContext),
            Syscall32CallbackEip = pv.Syscall32Callback, SysenterCallbackEip = pv.SysenterCallback,
            Syscall32CallbackCs = pv.Syscall32CallbackCs, SysenterCallbackCs = pv.SysenterCallbackCs,
            Syscall32DisablesEvents = (byte)(pv.Syscall32MasksEvents ? 1 : 0),
            SysenterDisablesEvents = (byte)(pv.SysenterMasksEvents ? 1 : 0),
        };
        return MemoryMarshal.AsBytes(new ReadOnlySpan<ExtVcpuContext>(in e)).ToArray();
    }

    /// <summary>XEN_DOMCTL_set_ext_vcpucontext: the callbacks <see cref="PvGetExtVcpuContext"/> gave; a shorter
    /// struct (an older Xen's) sets what it has.</summary>
    public void PvSetExtVcpuContext(ushort domid, int vcpu, ReadOnlySpan<byte> context)
    {
        PvGuest(domid, out var d);
        var v = d.GetVcpu((uint)vcpu) ?? throw new HypervisorException($"d{domid} has no vcpu {vcpu}", Errno.ENOENT);
        Span<byte> whole = stackalloc byte[sizeof(ExtVcpuContext)];
        whole.Clear();
        context[..Math.Min(context.Length, whole.Length)].CopyTo(whole);
        var e = MemoryMarshal.Read<ExtVcpuContext>(whole);
        if (context.Length < 30)
            throw new HypervisorException($"d{domid}: an extended vCPU context of {context.Length} bytes", Errno.EINVAL);
        var pv = v.Pv!;
        pv.Syscall32Callback = (uint)e.Syscall32CallbackEip;
        pv.SysenterCallback = (uint)e.SysenterCallbackEip;
        pv.Syscall32CallbackCs = e.Syscall32CallbackCs;
        pv.SysenterCallbackCs = e.SysenterCallbackCs;
        pv.Syscall32MasksEvents = e.Syscall32DisablesEvents != 0;
        pv.SysenterMasksEvents = e.SysenterDisablesEvents != 0;
    }

    /// <summary>A restored PV domain's shared_info from the saved one, as libxc's restore makes it: the vCPU info
    /// and arch parts copied, no event pending, every event channel masked (the guest unmasks those it binds again),
    /// the p2m frame-list list cleared for the guest to publish again.</summary>
    public void PvRestoreSharedInfo(ushort domid, ReadOnlySpan<byte> saved)
    {
        var pv = PvGuest(domid, out var d);
        if (saved.Length != FrameTable.PageSize)
            throw new HypervisorException($"d{domid}: a shared info of {saved.Length} bytes", Errno.EINVAL);
        var page = new Span<byte>(d.SharedInfo, FrameTable.PageSize);
        // x86_64: vcpu_info[32] (64 bytes each), evtchn_pending[64] and evtchn_mask[64] (unsigned long), wallclock
        // (four 32-bit words), arch. x86_32: vcpu_info of the same size, 32 words each of pending and mask, three
        // wallclock words.
        int word = pv.Is32 ? 4 : 8;
        int bitmap = 8 * word * word;
        int pending = 2048, mask = pending + bitmap, arch = mask + bitmap + (pv.Is32 ? 12 : 16);
        int archSize = 6 * word;
        Services.PauseDomain(d);
        try
        {
            saved[..2048].CopyTo(page);
            saved.Slice(arch, archSize).CopyTo(page[arch..]);
            page.Slice(arch + word, word).Clear(); // pfn_to_mfn_frame_list_list
            page.Slice(pending, bitmap).Clear();
            page.Slice(mask, bitmap).Fill(0xFF);
            for (int i = 0; i < 32; i++)
                page.Slice(i * 64 + word, word).Clear(); // evtchn_pending_sel
        }
        finally { Services.UnpauseDomain(d); }
    }

    /// <summary>struct xen_domctl_ext_vcpucontext (x86).</summary>
    [StructLayout(LayoutKind.Explicit, Size = 64)]
    private struct ExtVcpuContext
    {
        [FieldOffset(0)] public uint Vcpu;
        [FieldOffset(4)] public uint Size;
        [FieldOffset(8)] public ulong Syscall32CallbackEip;
        [FieldOffset(16)] public ulong SysenterCallbackEip;
        [FieldOffset(24)] public ushort Syscall32CallbackCs;
        [FieldOffset(26)] public ushort SysenterCallbackCs;
        [FieldOffset(28)] public byte Syscall32DisablesEvents;
        [FieldOffset(29)] public byte SysenterDisablesEvents;
        [FieldOffset(32)] public ulong McgCap;
    }
}
