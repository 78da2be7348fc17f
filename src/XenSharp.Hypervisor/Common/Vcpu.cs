using XenSharp.Cpu;
using XenSharp.Hypervisor.X86;
using XenSharp.Public;
using XenSharp.Public.Hvm;
using HvmVcpu = XenSharp.Hypervisor.X86.HvmVcpu;

namespace XenSharp.Hypervisor.Common;

/// <summary>Xen's runstates (RUNSTATE_*).</summary>
internal enum Runstate { Running = 0, Runnable = 1, Blocked = 2, Offline = 3 }

/// <summary>
/// A virtual CPU as the hypervisor sees it (Xen's struct vcpu): the engine's vCPU, where its vcpu_info
/// lives, its runstate, timers, blocking state, and the interrupts it may take (vLAPIC and Xen upcall).
/// </summary>
internal sealed unsafe class Vcpu : IInterruptSource
{
    public Vcpu(Domain domain, int id)
    {
        Domain = domain;
        Id = id;
        Arch = new HvmVcpu(this);
        if (!domain.IsHost && id < Xen.XEN_LEGACY_MAX_VCPUS)
            VcpuInfo = (VcpuInfo*)((byte*)domain.SharedInfo + id * sizeof(VcpuInfo));
        if (domain.Pv is not null)
            Pv = new X86.Pv.PvVcpu(this);
        IsUp = id == 0;
        RunstateState = IsUp ? Runstate.Runnable : Runstate.Offline;
        Translations = new TranslationCache(() => Engine?.FlushHostTranslations(), () => Engine?.RequestExit());
        domain.Host.Frames.Register(Translations);
    }

    public Domain Domain { get; }
    public int Id { get; }
    public IVcpu? Engine { get; set; }
    /// <summary>The hypercall being handled came from 32-bit code: its arguments use the x86_32 (compat) layouts.</summary>
    public bool Compat;
    /// <summary>Set by a handler that stopped part-way (Xen's hypercall_create_continuation): the arguments the
    /// guest re-issues the same hypercall with, so long operations yield the pCPU between pieces.</summary>
    public HypercallArgs? Continuation;
    /// <summary>Set by HYPERVISOR_iret, which loaded the whole register state: the caller writes back no result.</summary>
    public bool IretDone;
    /// <summary>Set on the vCPU through which a Domain-0 program's hypercalls run: its pointers name that program's
    /// hypercall buffers, not guest-linear addresses.</summary>
    public Dom0HypercallContext? Caller;
    public ICpuidPolicy? Cpuid { get; set; }
    /// <summary>The guest type's x86 state: the vLAPIC and upcall vector.</summary>
    public HvmVcpu Arch { get; }
    /// <summary>A PV vCPU's page-table bases and LDT, null for HVM and PVH guests.</summary>
    public X86.Pv.PvVcpu? Pv { get; }
    /// <summary>The engine's host-address caches, which freed frames wait on before reuse.</summary>
    public TranslationCache Translations { get; }

    /// <summary>Protects the blocking and wake-up state below.</summary>
    public readonly object Lock = new();

    // vcpu_info: in shared_info until the guest registers another place for it.
    public VcpuInfo* VcpuInfo { get; private set; }
    private uint? _vcpuInfoMfn;
    public bool VcpuInfoRegistered => _vcpuInfoMfn is not null;
    public uint? VcpuInfoMfn => _vcpuInfoMfn;

    public void RegisterVcpuInfo(uint mfn, VcpuInfo* where)
    {
        var old = _vcpuInfoMfn;
        // Carry the pending state over so no event is lost in the move.
        if (VcpuInfo is not null)
        {
            where->EvtchnUpcallPending = VcpuInfo->EvtchnUpcallPending;
            where->EvtchnPendingSel |= VcpuInfo->EvtchnPendingSel;
            where->EvtchnUpcallMask = VcpuInfo->EvtchnUpcallMask;
        }
        Domain.Host.Frames.AddRef(mfn);
        _vcpuInfoMfn = mfn;
        VcpuInfo = where;
        if (old is uint o)
            Domain.Host.Frames.Release(o, dropRef: true);
        Domain.Host.Time.UpdateVcpuTime(this);
    }

    /// <summary>Forgets a registered vcpu_info (a soft reset): it is back in shared_info, or none for vCPUs past
    /// the legacy 32, as at creation.</summary>
    public void UnregisterVcpuInfo()
    {
        if (_vcpuInfoMfn is not uint m)
            return;
        _vcpuInfoMfn = null;
        VcpuInfo = Id < Xen.XEN_LEGACY_MAX_VCPUS
            ? (VcpuInfo*)((byte*)Domain.SharedInfo + Id * sizeof(VcpuInfo))
            : null;
        Domain.Host.Frames.Release(m, dropRef: true);
    }

    // Lifecycle and scheduling.
    public bool IsUp { get; set; }
    /// <summary>Has register state to start from (vCPU 0 from the toolstack, APs from VCPUOP_initialise or SIPI).</summary>
    public bool Initialised { get; set; }
    /// <summary>After INIT: down, waiting for a start-up IPI.</summary>
    public bool WaitForSipi { get; set; }
    public volatile bool PendingNmi;
    /// <summary>Register state to load on the vCPU's own thread before it next runs.</summary>
    public (Registers Regs, SpecialRegisters Sregs)? PendingContext;

    /// <summary>VCPUOP_initialise: the start state of an HVM/PVH vCPU, in 32- or 64-bit form.</summary>
    public long SetInitialContext(in VcpuHvmContext ctx)
    {
        Registers r = default;
        SpecialRegisters s = default;
        switch (ctx.Mode)
        {
            case XenSharp.Public.Hvm.HvmVcpu.VCPU_HVM_MODE_32B:
            {
                var c = ctx.X86_32;
                r = new Registers { Rax = c.Eax, Rcx = c.Ecx, Rdx = c.Edx, Rbx = c.Ebx, Rsp = c.Esp, Rbp = c.Ebp, Rsi = c.Esi, Rdi = c.Edi, Rip = c.Eip, Rflags = c.Eflags | 2 };
                s.Cr0 = c.Cr0; s.Cr3 = c.Cr3; s.Cr4 = c.Cr4; s.Efer = c.Efer;
                s.Cs = new Segment { Base = c.CsBase, Limit = c.CsLimit, Attributes = c.CsAr, Selector = 0x10 };
                s.Ds = new Segment { Base = c.DsBase, Limit = c.DsLimit, Attributes = c.DsAr, Selector = 0x18 };
                s.Ss = new Segment { Base = c.SsBase, Limit = c.SsLimit, Attributes = c.SsAr, Selector = 0x18 };
                s.Es = new Segment { Base = c.EsBase, Limit = c.EsLimit, Attributes = c.EsAr, Selector = 0x18 };
                s.Fs = s.Ds;
                s.Gs = s.Ds;
                s.Tr = new Segment { Base = c.TrBase, Limit = c.TrLimit, Attributes = c.TrAr, Selector = 0x20 };
                break;
            }
            case XenSharp.Public.Hvm.HvmVcpu.VCPU_HVM_MODE_64B:
            {
                var c = ctx.X86_64;
                r = new Registers { Rax = c.Rax, Rcx = c.Rcx, Rdx = c.Rdx, Rbx = c.Rbx, Rsp = c.Rsp, Rbp = c.Rbp, Rsi = c.Rsi, Rdi = c.Rdi, Rip = c.Rip, Rflags = c.Rflags | 2 };
                s.Cr0 = c.Cr0; s.Cr3 = c.Cr3; s.Cr4 = c.Cr4; s.Efer = c.Efer;
                // Flat segments: 64-bit code, data, a busy 64-bit TSS (VMX access-rights encoding).
                s.Cs = new Segment { Limit = 0xFFFFFFFF, Attributes = 0xA09B, Selector = 0x10 };
                s.Ds = new Segment { Limit = 0xFFFFFFFF, Attributes = 0xC093, Selector = 0x18 };
                s.Ss = s.Ds; s.Es = s.Ds; s.Fs = s.Ds; s.Gs = s.Ds;
                s.Tr = new Segment { Limit = 0x67, Attributes = 0x008B, Selector = 0x20 };
                break;
            }
            default:
                return -Errno.EINVAL;
        }
        s.Ldt = new Segment { Attributes = 0x0082 };
        s.ApicBase = Vlapic.DefaultBase | Vlapic.ApicBaseEnable | (Id == 0 ? Vlapic.ApicBaseBsp : 0);
        PendingContext = (r, s);
        Initialised = true;
        return 0;
    }
    public bool Blocked { get; set; }
    /// <summary>Paused by the toolstack or by the hypervisor for this vCPU alone.</summary>
    public int PauseCount { get; set; }
    public bool IsRunning
    {
        get => _isRunning;
        set
        {
            _isRunning = value;
            if (value) return;
            // A pause waiting for the domain's vCPUs to leave their pCPUs (HostServices.WaitOffCpu) is woken as
            // this one goes, rather than spinning on a core the vCPU's own thread may need.
            Interlocked.MemoryBarrier();
            if (Volatile.Read(ref Domain.OffCpuWaiters) != 0)
                lock (Domain.OffCpuSignal) Monitor.PulseAll(Domain.OffCpuSignal);
        }
    }
    private bool _isRunning;
    /// <summary>The pCPU loop saw an exit that needs this vCPU taken off the CPU now (block, shutdown, pause).</summary>
    public volatile bool DescheduleRequested;
    public long CpuTimeNs;
    /// <summary>Scheduler-private data (credits and such).</summary>
    public object? SchedData;

    public bool IsRunnable => IsUp && !Blocked && PauseCount == 0 && Domain.State == DomainRunState.Running && !Domain.IsDying;

    // Runstate accounting.
    public Runstate RunstateState { get; private set; }
    public long RunstateEntryNs { get; private set; }
    public readonly long[] RunstateTime = new long[4];
    /// <summary>Guest-linear address of the registered vcpu_runstate_info, or 0.</summary>
    public ulong RunstateGuestArea;
    /// <summary>Guest-linear address of a second vcpu_time_info the guest registered, or 0.</summary>
    public ulong TimeGuestArea;

    public void SetRunstate(Runstate s, long nowNs)
    {
        lock (RunstateTime)
        {
            if (RunstateEntryNs != 0 || RunstateState != Runstate.Offline)
                RunstateTime[(int)RunstateState] += Math.Max(0, nowNs - RunstateEntryNs);
            RunstateState = s;
            RunstateEntryNs = nowNs;
        }
    }

    /// <summary>The runstate as kept, or with <paramref name="includeCurrent"/> the time spent so far in the current
    /// state added to it, as Xen's vcpu_runstate_get does for VCPUOP_get_runstate_info (the registered area gets the
    /// runstate as kept, updated at each state change).</summary>
    public VcpuRunstateInfo GetRunstate(long nowNs, bool includeCurrent = false)
    {
        var info = new VcpuRunstateInfo();
        lock (RunstateTime)
        {
            info.State = (int)RunstateState;
            info.StateEntryTime = (ulong)RunstateEntryNs;
            for (int i = 0; i < 4; i++)
                info.Time[i] = (ulong)RunstateTime[i];
            if (includeCurrent && RunstateEntryNs != 0)
                info.Time[(int)RunstateState] += (ulong)Math.Max(0, nowNs - RunstateEntryNs);
        }
        return info;
    }

    // Timers, in system time (ns).
    public long SingleshotDeadline = long.MaxValue;
    public long PeriodicPeriod;
    public long PeriodicNext = long.MaxValue;
    public uint VirqTimerPending;

    // SCHEDOP_poll: the ports this vCPU waits on, and its timeout.
    public uint[]? PollPorts;
    public long PollDeadline = long.MaxValue;

    /// <summary>Marks events pending for this vCPU (vcpu_mark_events_pending) and wakes it.</summary>
    public void MarkEventsPending()
    {
        if (VcpuInfo is null)
            return;
        if (Interlocked.Exchange(ref VcpuInfo->EvtchnUpcallPending, 1) == 0 || Blocked)
            Arch.AssertEvtchnIrq();
    }

    /// <summary>Something this vCPU may be waiting for happened (Xen's vcpu_kick): wake it if blocked; if it is running
    /// on another thread, make it leave the guest, so that the run loop sees the new interrupt at its next entry rather
    /// than when compiled code next returns on its own (a loop of compiled blocks may never return).</summary>
    public void Kick()
    {
        if (_isRunning && Scheduling.Pcpu.RunningHere != this)
            Engine?.RequestExit();
        bool wake = false;
        lock (Lock)
        {
            if (Blocked && (HasPendingInterrupt || PollSatisfied()))
            {
                Blocked = false;
                PollPorts = null;
                PollDeadline = long.MaxValue;
                wake = true;
            }
        }
        if (wake)
        {
            SetRunstate(Runstate.Runnable, Domain.Host.Time.NowNs);
            Domain.Host.Scheduler.Wake(this);
        }
    }

    /// <summary>Puts the vCPU to sleep until an interrupt (or a polled port) arrives; false if one already has.</summary>
    public bool Block(uint[]? pollPorts = null, long pollDeadline = long.MaxValue)
    {
        lock (Lock)
        {
            PollPorts = pollPorts;
            PollDeadline = pollDeadline;
            Interlocked.MemoryBarrier(); // publish PollPorts before reading the ports (see EventChannel.SetPending)
            if (HasPendingInterrupt || PollSatisfied())
            {
                PollPorts = null;
                PollDeadline = long.MaxValue;
                return false;
            }
            Blocked = true;
            DescheduleRequested = true;
        }
        if (pollDeadline != long.MaxValue)
            Domain.Host.Timers.Schedule(pollDeadline, this, TimerKind.Poll);
        return true;
    }

    /// <summary>Wakes a blocked vCPU unconditionally (poll timeout, VCPUOP_up, SIPI).</summary>
    public void Unblock()
    {
        bool wake;
        lock (Lock)
        {
            wake = Blocked;
            Blocked = false;
            PollPorts = null;
            PollDeadline = long.MaxValue;
        }
        if (wake)
        {
            SetRunstate(Runstate.Runnable, Domain.Host.Time.NowNs);
            Domain.Host.Scheduler.Wake(this);
        }
    }

    private bool PollSatisfied()
    {
        if (PollPorts is null)
            return false;
        foreach (var p in PollPorts)
            if (Domain.Evtchn.IsPending(p))
                return true;
        return false;
    }

    // IInterruptSource: what the guest type takes interrupts from.
    public bool HasPendingInterrupt => Pv is { } pv ? pv.EventsNeedDelivery : Arch.HasPendingInterrupt;
    public int Acknowledge() => Arch.Acknowledge();

    public void Teardown()
    {
        Domain.Host.Frames.Unregister(Translations);
        if (_vcpuInfoMfn is uint m)
        {
            Domain.Host.Frames.Release(m, dropRef: true);
            _vcpuInfoMfn = null;
        }
        VcpuInfo = null;
    }
}
