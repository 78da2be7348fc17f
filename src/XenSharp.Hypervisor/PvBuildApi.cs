using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86;
using XenSharp.Hypervisor.X86.Pv;
using XenSharp.Public;

namespace XenSharp.Hypervisor;

/// <summary>
/// What the PV domain builder asks of the hypervisor, as libxc does of Xen: the MFNs behind the guest's PFNs,
/// M2P entries (MMU_MACHPHYS_UPDATE), pinning the initial page tables and loading them (MMUEXT_PIN_L4_TABLE,
/// the vCPU context's CR3), and the hypercall page (XEN_DOMCTL_hypercall_init).
/// </summary>
public sealed unsafe partial class XenHypervisor
{
    private PvDomain PvGuest(ushort domid, out Domain d)
    {
        d = Guest(domid);
        return d.Pv ?? throw new HypervisorException($"domain {domid} is not a PV domain", Errno.EINVAL);
    }

    public bool IsPvDomain(ushort domid) => FindDomain(domid)?.Pv is not null;

    /// <summary>The machine frame behind a PV domain's PFN.</summary>
    public ulong PvMfnOf(ushort domid, ulong pfn)
    {
        PvGuest(domid, out var d);
        return d.P2m.TryLookup(pfn, out uint mfn, out var t) && t == P2mType.RamRw
            ? mfn : throw new HypervisorException($"d{domid} has no RAM at pfn 0x{pfn:x}", Errno.EINVAL);
    }

    /// <summary>Records PFNs [first, first+count) in the M2P.</summary>
    public void PvSetMachToPhys(ushort domid, ulong firstPfn, ulong count)
    {
        var pv = PvGuest(domid, out var d);
        for (ulong pfn = firstPfn; pfn < firstPfn + count; pfn++)
            if (d.P2m.TryLookup(pfn, out uint mfn, out var t) && t == P2mType.RamRw)
                pv.MachToPhys.Set(mfn, pfn);
    }

    /// <summary>The machine frame of the domain's shared_info (start_info.shared_info holds its address).</summary>
    public ulong SharedInfoMfn(ushort domid) => Guest(domid).SharedInfoMfn;

    /// <summary>Pins a page table of level 1–4 the builder wrote, validating it as the guest's own pin would.</summary>
    public void PvPinTable(ushort domid, int level, ulong mfn)
    {
        PvGuest(domid, out var d);
        if (level is < 1 or > 4)
            throw new ArgumentOutOfRangeException(nameof(level));
        long rc = PvMm.Pin(d, (PageType)level, mfn);
        if (rc != 0)
            throw new HypervisorException($"d{domid}: the L{level} table at mfn 0x{mfn:x} does not validate", (int)-rc);
    }

    /// <summary>Loads a vCPU's kernel page tables (the L4 at <paramref name="mfn"/>).</summary>
    public void PvSetBaseptr(ushort domid, int vcpu, ulong mfn)
    {
        PvGuest(domid, out var d);
        var v = d.GetVcpu((uint)vcpu) ?? throw new HypervisorException($"d{domid} has no vcpu {vcpu}", Errno.ENOENT);
        long rc = PvMm.NewBaseptr(v, mfn, user: false);
        if (rc != 0)
            throw new HypervisorException($"d{domid}: the L4 at mfn 0x{mfn:x} does not validate", (int)-rc);
    }

    /// <summary>Fills the PV hypercall page at <paramref name="pfn"/> (the guest's HYPERCALL_PAGE note).</summary>
    public void PvInitHypercallPage(ushort domid, ulong pfn)
    {
        PvGuest(domid, out var d);
        byte* page = d.P2m.GetPage(pfn, write: true);
        if (page is null)
            throw new HypervisorException($"d{domid} has no RAM at pfn 0x{pfn:x} for the hypercall page", Errno.EINVAL);
        if (d.Pv!.Is32)
            HypercallPage.WritePvCompat(new Span<byte>(page, FrameTable.PageSize));
        else
            HypercallPage.WritePv(new Span<byte>(page, FrameTable.PageSize));
    }

    /// <summary>XEN_DOMCTL_set_address_size: 32 or 64 (the default), before the domain has page tables.</summary>
    public void PvSetAddressSize(ushort domid, int bits)
    {
        var pv = PvGuest(domid, out var d);
        if (bits is not (32 or 64))
            throw new HypervisorException($"d{domid}: no {bits}-bit PV guests", Errno.EINVAL);
        if (d.Vcpus.Any(v => v.Pv is { GuestTable: not 0 }))
            throw new HypervisorException($"d{domid} has page tables already", Errno.EINVAL);
        pv.SetAddressSize(bits);
    }
}
