using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// A scheduling policy (Xen's sched_ops): which runnable vCPU a pCPU of its cpupool runs next and until when.
/// One instance per cpupool. Calls may come from any pCPU thread or from wake-ups on other threads.
/// </summary>
internal interface IScheduler
{
    /// <summary>The name xl and the sched= option use (sched_ops.opt_name).</summary>
    string Name { get; }
    /// <summary>XEN_SCHEDULER_*.</summary>
    uint SchedId { get; }
    /// <summary>A preempting vCPU waits until the running one has had this long (0: no rate limit).</summary>
    long RatelimitNs { get; }
    /// <summary>
    /// What <see cref="Descheduled"/> charges: the CPU time the pCPU thread had (true: shares and caps hold whatever
    /// the host's load) or the slice's wall time (false: budgets and windows are slots of the host's clock).
    /// </summary>
    bool ChargesCpuTime => false;

    void AddPcpu(int cpu);
    void RemovePcpu(int cpu);
    void AddVcpu(Vcpu v);
    void RemoveVcpu(Vcpu v);
    /// <summary>The vCPU may have become runnable: queue it unless it is running or queued already.</summary>
    void Wake(Vcpu v);
    /// <summary>
    /// Takes the next vCPU to run on <paramref name="cpu"/>. <paramref name="untilNs"/> is when its slice ends, or,
    /// when none is runnable, when the scheduler wants the idle pCPU back (long.MaxValue: only when woken).
    /// </summary>
    Vcpu? PickNext(int cpu, long now, out long untilNs);
    /// <summary>
    /// The vCPU left <paramref name="cpu"/> after running <paramref name="ranNs"/> (as <see cref="ChargesCpuTime"/>
    /// says); requeue it if still runnable.
    /// </summary>
    void Descheduled(Vcpu v, int cpu, long ranNs, long now);
}

/// <summary>The schedulers by name, as Xen registers its sched_ops.</summary>
internal static class Schedulers
{
    public const uint XEN_SCHEDULER_CREDIT = 5;
    public const uint XEN_SCHEDULER_CREDIT2 = 6;
    public const uint XEN_SCHEDULER_ARINC653 = 7;
    public const uint XEN_SCHEDULER_RTDS = 8;
    public const uint XEN_SCHEDULER_NULL = 9;

    public static readonly string[] Names = ["credit", "credit2", "rtds", "arinc653", "null"];

    public static IScheduler? Create(string name, Cpupool pool) => name switch
    {
        "credit" => new CreditScheduler(pool),
        "credit2" => new Credit2Scheduler(pool),
        "rtds" => new RtdsScheduler(pool),
        "arinc653" => new Arinc653Scheduler(pool),
        "null" => new NullScheduler(pool),
        _ => null,
    };
}
