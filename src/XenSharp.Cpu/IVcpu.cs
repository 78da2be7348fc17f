namespace XenSharp.Cpu;

/// <summary>
/// One virtual CPU of an execution engine, driven the way KVM's vCPU file descriptor is:
/// set state, <see cref="Run"/>, handle the exit, run again. Only the thread that calls
/// <see cref="Run"/> may touch the state; <see cref="RequestExit"/> is the only cross-thread call.
/// </summary>
public interface IVcpu
{
    int Id { get; }

    /// <summary>Runs guest code until something needs the hypervisor. The returned exit is owned
    /// by the vCPU and valid until the next call.</summary>
    ref readonly VcpuExit Run();

    /// <summary>Makes a running (or the next) <see cref="Run"/> return <see cref="VcpuExitReason.Preempted"/>
    /// at the next instruction-block boundary. Safe from any thread.</summary>
    void RequestExit();

    /// <summary>Supplies the result of an IN, MMIO read or RDMSR exit before the next <see cref="Run"/>.
    /// <paramref name="fault"/> makes the instruction raise #GP(0) instead (an MSR nobody owns).</summary>
    void CompleteExit(ulong value, bool fault = false);

    /// <summary>Instead of completing an MMIO exit, runs its instruction again from the start on the next
    /// <see cref="Run"/> (the access was refused for now, e.g. a write to a page an introspection agent protects,
    /// and is retried once the agent has answered).</summary>
    void RetryExit() { }

    void GetRegisters(out Registers regs);
    void SetRegisters(in Registers regs);
    void GetSpecialRegisters(out SpecialRegisters sregs);
    void SetSpecialRegisters(in SpecialRegisters sregs);

    /// <summary>The x87/SSE state as an FXSAVE image (512 bytes, all sixteen XMM registers) and XCR0, for a saved
    /// domain (Xen's CPU and CPU_XSAVE context records); false when the engine cannot give them.</summary>
    bool TryGetFpuState(Span<byte> fxsave, out ulong xcr0) { xcr0 = 0; return false; }

    /// <summary>Loads what <see cref="TryGetFpuState"/> gave; false when the engine cannot, or the image or XCR0 is
    /// one the CPU would refuse (reserved MXCSR bits, XCR0 without x87 or with components it lacks).</summary>
    bool TrySetFpuState(ReadOnlySpan<byte> fxsave, ulong xcr0) => false;

    /// <summary>Reads or writes an MSR the engine owns; false when it does not know it.</summary>
    bool TryGetMsr(uint index, out ulong value);
    bool TrySetMsr(uint index, ulong value);

    /// <summary>Queues an exception for delivery before the next instruction.</summary>
    void InjectException(byte vector, uint? errorCode = null);

    /// <summary>Queues an NMI.</summary>
    void InjectNmi();

    /// <summary>Where external interrupts come from (the vLAPIC, the Xen upcall); polled at
    /// instruction boundaries where IF=1 and no interrupt shadow is in force.</summary>
    IInterruptSource? InterruptSource { get; set; }

    /// <summary>True when the guest could take an external interrupt now (IF=1, no shadow).</summary>
    bool InterruptWindowOpen { get; }

    /// <summary>Instructions retired since creation (for accounting and benchmarks).</summary>
    ulong InstructionsRetired { get; }

    /// <summary>The guest-linear-to-physical walk a hypercall handler needs to copy from guest
    /// virtual addresses. Returns false when the page is not present (or not writable for a write).</summary>
    bool TryTranslateLinear(ulong linear, bool write, out ulong physical);

    /// <summary>Drops every host address of guest memory the vCPU caches (soft TLB, jump cache), so that a freed
    /// frame can be given to someone else. Called between <see cref="Run"/> calls, on the thread that runs it.</summary>
    void FlushHostTranslations() { }

    /// <summary>Drops the cached write permissions only (log-dirty was enabled or cleaned), so the next write to each
    /// page asks <see cref="IGuestMemory.GetPage"/> again. Called while the vCPU is not in <see cref="Run"/>.</summary>
    void DropWritableTranslations() => FlushHostTranslations();
}

/// <summary>Something that may have an external interrupt for a vCPU.</summary>
public interface IInterruptSource
{
    /// <summary>Cheap check, called at instruction-block boundaries.</summary>
    bool HasPendingInterrupt { get; }

    /// <summary>Takes the highest-priority pending vector (the INTA cycle), or -1 when none.</summary>
    int Acknowledge();
}

/// <summary>
/// Guest-physical memory as the engine sees it: frames resolved through the domain's p2m.
/// </summary>
public unsafe interface IGuestMemory
{
    /// <summary>Host address of the 4 KiB page backing <paramref name="gfn"/>, or null when the
    /// frame is not RAM (the access becomes an MMIO exit) or is read-only for a write.</summary>
    byte* GetPage(ulong gfn, bool write);

    /// <summary>Host address under which a read may also make the page writable in the soft TLB, or null to leave
    /// writes to a later <see cref="GetPage"/> miss: log-dirty memory answers null for a page not yet dirty, so the
    /// first write after its bitmap is cleaned is seen (QEMU's TLB_NOTDIRTY).</summary>
    byte* GetPageForWriteCache(ulong gfn) => GetPage(gfn, true);

    /// <summary>Whether the guest may fetch instructions from <paramref name="gfn"/> (an introspection agent may
    /// forbid it); asked before code is decoded from the page. A page that loses the right moves
    /// <see cref="Generation"/>, so no code decoded before stays cached. False makes the fetch a
    /// <see cref="VcpuExitReason.FetchDenied"/> exit.</summary>
    bool MayExecute(ulong gfn) => true;

    /// <summary>Whether <paramref name="gfn"/>, for which <see cref="GetPage"/> gave null, is RAM paged out (or on its
    /// way out or back) rather than MMIO: asked only on that slow path. A page-table entry read there during a walk
    /// then becomes an <see cref="VcpuExitReason.Mmio"/> read exit at the entry, and an instruction fetch a
    /// <see cref="VcpuExitReason.FetchDenied"/> exit, so that the hypervisor can have the page brought back and run
    /// the instruction again (<see cref="IVcpu.RetryExit"/>) instead of the guest seeing the entry as not present.</summary>
    bool IsPaged(ulong gfn) => false;

    /// <summary>Whether <see cref="IsPaged"/> can ever be true (a pager was set up): only then does the engine keep
    /// what it needs to start an event delivery over.</summary>
    bool MayBePaged => false;

    /// <summary>Bumped whenever a mapping is removed or changed; engines drop cached translations
    /// when it moves.</summary>
    long Generation { get; }
}

/// <summary>Answers CPUID for one vCPU.</summary>
public interface ICpuidPolicy
{
    void Cpuid(uint leaf, uint subleaf, out uint eax, out uint ebx, out uint ecx, out uint edx);
}

/// <summary>Creates vCPUs over one domain's memory. One engine instance per domain, so that
/// decoded code is shared between the domain's vCPUs.</summary>
public interface ICpuEngine : IDisposable
{
    IVcpu CreateVcpu(int id, ICpuidPolicy cpuid);

    /// <summary>Drops cached code (decoded, compiled) that has not run since the previous call, so that code a guest
    /// ran once (its boot) does not stay in host memory; returns how many blocks went. Called every few seconds from
    /// outside the vCPUs' threads.</summary>
    int AgeCode() => 0;
}
