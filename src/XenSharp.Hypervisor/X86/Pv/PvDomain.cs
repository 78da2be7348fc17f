using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.X86.Pv;

/// <summary>
/// A PV domain's x86 state (Xen's pv_domain). A PV guest's page tables hold machine frame numbers, so the engine
/// sees machine memory itself (<see cref="Machine"/>), limited to what the domain may reach; the PV MMU
/// (<see cref="PvMm"/>) keeps every page table the guest can load validated.
/// </summary>
internal sealed class PvDomain : ArchDomain
{
    public PvDomain(Domain domain) : base(domain)
    {
        Machine = new PvMachineMemory(domain.Host.Frames, domain.DomainId);
        MachToPhys = domain.Host.MachToPhys;
        domain.Host.PvDomains[domain.DomainId] = this;
    }

    /// <summary>Lets go of the page tables: the vCPUs' bases and every pinned table, so each frame's last
    /// reference goes and the domain's memory returns to the pool (Xen's relinquish_memory).</summary>
    public override void Teardown()
    {
        var frames = Domain.Host.Frames;
        foreach (var v in Domain.Vcpus)
            PvMm.ReleaseVcpu(v);
        foreach (var (_, mfn, type) in Domain.P2m.Entries())
            if (type == P2mType.RamRw)
                PvMm.Unpin(frames, mfn);
        Domain.Host.PvDomains.TryRemove(new KeyValuePair<ushort, PvDomain>(Domain.DomainId, this));
    }

    /// <summary>The engine's "physical" memory for this domain: machine frames by MFN.</summary>
    public PvMachineMemory Machine { get; }
    public MachToPhys MachToPhys { get; }

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
/// page) and Xen's read-only frames. A write the view refuses leaves the engine as an MMIO exit.
/// </summary>
internal sealed unsafe class PvMachineMemory(FrameTable frames, ushort domid) : IGuestMemory
{
    public byte* GetPage(ulong mfn, bool write) =>
        frames.IsGuestAccessible(mfn, domid, write) ? frames.PageAddress(mfn) : null;

    /// <summary>MFNs never move to other host pages; TLB flushes and freed frames have their own paths, so decoded
    /// code stays valid.</summary>
    public long Generation => 0;
}
