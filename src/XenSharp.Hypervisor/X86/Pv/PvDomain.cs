using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.X86.Pv;

/// <summary>
/// A PV domain's x86 state (Xen's pv_domain). A PV guest's page tables hold machine frame numbers, so the engine
/// sees machine memory itself (<see cref="Machine"/>), limited to what the domain may reach; the PV MMU
/// (<see cref="PvMm"/>) keeps every page table the guest can load validated.
/// </summary>
internal sealed unsafe class PvDomain : ArchDomain
{
    /// <summary>Xen's per-domain L4 slot (here 257, 0xFFFF808000000000): each vCPU's GDT window of 16 pages, the
    /// guest's GDT frames in pages 0–13 (set_gdt), Xen's reserved descriptors in page 14.</summary>
    public const int PerDomainSlot = 257;
    public const ulong PerDomainVirt = 0xFFFF808000000000;
    public const int GdtWindowPages = 16, ReservedGdtPage = 14, MaxGdtWindows = 512 / GdtWindowPages;

    public PvDomain(Domain domain) : base(domain)
    {
        MachToPhys = domain.Host.MachToPhys;
        Machine = new PvMachineMemory(domain.Host.Frames, domain.DomainId, GrantMapped, domain.P2m, MachToPhys);
        var frames = domain.Host.Frames;
        PerDomainL3 = Allocate(frames);
        _perDomainL2 = Allocate(frames);
        _perDomainL1 = Allocate(frames);
        _ldtL1 = Allocate(frames);
        ((ulong*)frames.PageAddress(PerDomainL3))[0] = XenPte(_perDomainL2);
        ((ulong*)frames.PageAddress(_perDomainL2))[0] = XenPte(_perDomainL1);
        ((ulong*)frames.PageAddress(_perDomainL2))[1] = XenPte(_ldtL1);
        for (int w = 0; w < MaxGdtWindows; w++)
            ((ulong*)frames.PageAddress(_perDomainL1))[w * GdtWindowPages + ReservedGdtPage] = XenPte(MachToPhys.ReservedGdtMfn);
        domain.Host.PvDomains[domain.DomainId] = this;
    }

    /// <summary>A 32-bit PAE PV domain (Xen's is_pv_32bit_domain, set by XEN_DOMCTL_set_address_size before the
    /// build): its kernel runs in ring 1 in compatibility mode, its hypercalls come by INT $0x82 with the compat
    /// layouts, its page tables are PAE with an L3 as the root (each vCPU runs on a Xen L4 whose slot 0 is that L3,
    /// <see cref="PvVcpu.CompatL4"/>), and its shared_info has the 32-bit layout.</summary>
    public bool Is32 { get; private set; }

    /// <summary>XEN_DOMCTL_set_address_size: 32 makes the domain a compat one (only before it has page tables).</summary>
    public void SetAddressSize(int bits)
    {
        Is32 = bits == 32;
        Domain.Has32BitSharedInfo = Is32;
        uint reserved = Is32 ? MachToPhys.CompatReservedGdtMfn : MachToPhys.ReservedGdtMfn;
        for (int w = 0; w < MaxGdtWindows; w++)
            ((ulong*)Domain.Host.Frames.PageAddress(_perDomainL1))[w * GdtWindowPages + ReservedGdtPage] = XenPte(reserved);
    }

    /// <summary>The L3 every L4 of the domain gets in <see cref="PerDomainSlot"/>.</summary>
    public uint PerDomainL3 { get; }
    private readonly uint _perDomainL2, _perDomainL1, _ldtL1;

    /// <summary>Each vCPU's LDT window (16 pages, an LDT's most) in the second 2 MiB of the per-domain slot: the
    /// guest's LDT pages are mapped there read-only as the guest first uses them (Xen's LDT shadow mapping).</summary>
    public const ulong LdtAreaVirt = PerDomainVirt + (2UL << 20);
    public const int LdtWindowPages = 16, MaxLdtWindows = 512 / LdtWindowPages;
    public static ulong LdtVirt(int id) => LdtAreaVirt + (ulong)id * LdtWindowPages * FrameTable.PageSize;

    /// <summary>Maps (or, with 0, unmaps) page <paramref name="page"/> of vCPU <paramref name="id"/>'s LDT window.</summary>
    public void MapLdtPage(int id, int page, ulong mfn)
    {
        if (id < MaxLdtWindows && page < LdtWindowPages)
            ((ulong*)Domain.Host.Frames.PageAddress(_ldtL1))[id * LdtWindowPages + page] = mfn == 0 ? 0 : XenPte(mfn);
    }

    private static uint Allocate(FrameTable frames) => frames.TryAllocate(Public.Xen.DOMID_XEN, FrameType.XenShared, out uint mfn)
        ? mfn : throw new HypervisorException("out of machine memory for a PV domain's per-domain tables");

    private static ulong XenPte(ulong mfn) => (mfn << FrameTable.PageShift) | PvMm.PAGE_PRESENT | PvMm.PAGE_USER | PvMm.PAGE_ACCESSED;

    /// <summary>Where vCPU <paramref name="id"/>'s GDT is (its GDTR base).</summary>
    public static ulong GdtVirt(int id) => PerDomainVirt + (ulong)id * GdtWindowPages * FrameTable.PageSize;

    /// <summary>Maps a vCPU's GDT frames (read-only) into its window; the rest of pages 0–13 unmapped.</summary>
    public void MapGdt(int id, ReadOnlySpan<ulong> mfns)
    {
        if (id >= MaxGdtWindows)
            return;
        var l1 = (ulong*)Domain.Host.Frames.PageAddress(_perDomainL1);
        for (int i = 0; i < ReservedGdtPage; i++)
            l1[id * GdtWindowPages + i] = i < mfns.Length ? XenPte(mfns[i]) : 0;
    }

    /// <summary>Lets go of the page tables: the vCPUs' bases and every pinned table, so each frame's last
    /// reference goes and the domain's memory returns to the pool (Xen's relinquish_memory).</summary>
    public override void Teardown()
    {
        var frames = Domain.Host.Frames;
        foreach (var v in Domain.Vcpus)
        {
            PvMm.ReleaseVcpu(v);
            v.Pv?.FreeCompatL4();
        }
        foreach (var (_, mfn, type) in Domain.P2m.Entries())
            if (type == P2mType.RamRw)
                PvMm.Unpin(frames, mfn);
        Domain.Host.PvDomains.TryRemove(new KeyValuePair<ushort, PvDomain>(Domain.DomainId, this));
        frames.Free(PerDomainL3);
        frames.Free(_perDomainL2);
        frames.Free(_perDomainL1);
        frames.Free(_ldtL1);
    }

    /// <summary>Other domains' frames this domain has grant-mapped into its page tables: MFN → (read-only, writable)
    /// mappings. The engine may reach such a frame while a mapping of it lasts (writes only through a writable one).</summary>
    public GrantMappedFrames GrantMapped { get; } = new();

    /// <summary>The engine's "physical" memory for this domain: machine frames by MFN.</summary>
    public PvMachineMemory Machine { get; }
    public MachToPhys MachToPhys { get; }

    /// <summary>Marks the domain's frame <paramref name="mfn"/> dirty in log-dirty mode (Xen's paging_mark_dirty):
    /// the bitmap is by PFN, found through the M2P, as Xen finds it.</summary>
    public void MarkDirty(ulong mfn)
    {
        if (Domain.P2m.LogDirty)
            Domain.P2m.MarkDirty(MachToPhys.Get(mfn));
    }

    /// <summary>Makes every vCPU of the domain drop its cached translations before it runs guest code again
    /// (Xen's flush_tlb_mask over the domain's dirty CPUs); the caller's own vCPU flushes now.</summary>
    public void FlushTlbs(Vcpu? self, ulong mask = ulong.MaxValue)
    {
        foreach (var v in Domain.Vcpus)
            if (v.Id >= 64 ? mask == ulong.MaxValue : (mask & (1UL << v.Id)) != 0)
                v.Pv!.FlushTlb(v == self);
    }
}

/// <summary>
/// Machine memory as a PV domain's engine sees it: frames it owns (a write not to a page table or descriptor
/// page) and Xen's read-only frames. A write the view refuses leaves the engine as an MMIO exit. In log-dirty mode a
/// write to an own frame marks its PFN (through the M2P) dirty, and a frame whose PFN is clean is not left writable in
/// the soft TLB, so the first write after a CLEAN comes back here, as for a translated guest's p2m.
/// </summary>
internal sealed unsafe class PvMachineMemory(FrameTable frames, ushort domid, GrantMappedFrames grantMapped, P2m p2m, MachToPhys m2p)
    : IGuestMemory
{
    public byte* GetPage(ulong mfn, bool write)
    {
        if (frames.IsGuestAccessible(mfn, domid, write))
        {
            // Writable here means the domain's own frame; another domain's grant-mapped frame is marked in its
            // owner's bitmap when the grant is released.
            if (write && p2m.LogDirty)
                p2m.MarkDirty(m2p.Get(mfn));
            return frames.PageAddress(mfn);
        }
        return grantMapped.Allows(mfn, write) ? frames.PageAddress(mfn) : null;
    }

    public byte* GetPageForWriteCache(ulong mfn)
    {
        if (!p2m.LogDirty)
            return GetPage(mfn, true);
        if (frames.IsGuestAccessible(mfn, domid, true))
            return p2m.IsDirty(m2p.Get(mfn)) ? frames.PageAddress(mfn) : null;
        return grantMapped.Allows(mfn, true) ? frames.PageAddress(mfn) : null;
    }

    /// <summary>MFNs never move to other host pages; TLB flushes and freed frames have their own paths, so decoded
    /// code stays valid.</summary>
    public long Generation => 0;
}

/// <summary>Counts of a PV domain's grant mappings of other domains' frames, by MFN. Looked up on a soft-TLB miss of
/// a frame the domain does not own, never per instruction.</summary>
internal sealed class GrantMappedFrames
{
    private readonly Dictionary<ulong, (int ReadOnly, int Writable)> _frames = new();

    public void Add(ulong mfn, bool readOnly)
    {
        lock (_frames)
        {
            _frames.TryGetValue(mfn, out var c);
            _frames[mfn] = readOnly ? (c.ReadOnly + 1, c.Writable) : (c.ReadOnly, c.Writable + 1);
        }
    }

    public void Remove(ulong mfn, bool readOnly)
    {
        lock (_frames)
        {
            if (!_frames.TryGetValue(mfn, out var c))
                return;
            c = readOnly ? (c.ReadOnly - 1, c.Writable) : (c.ReadOnly, c.Writable - 1);
            if (c.ReadOnly <= 0 && c.Writable <= 0)
                _frames.Remove(mfn);
            else
                _frames[mfn] = c;
        }
    }

    public bool Allows(ulong mfn, bool write)
    {
        lock (_frames)
            return _frames.TryGetValue(mfn, out var c) && (write ? c.Writable > 0 : c.ReadOnly + c.Writable > 0);
    }
}
