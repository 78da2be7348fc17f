using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// A scheduling policy (Xen's sched_ops): which runnable vCPU a pCPU runs next and for how long.
/// All calls may come from any pCPU thread or from wake-ups on other threads.
/// </summary>
internal interface IScheduler
{
    string Name { get; }
    void AddVcpu(Vcpu v);
    void RemoveVcpu(Vcpu v);
    /// <summary>The vCPU may have become runnable: queue it unless it is running or queued already.</summary>
    void Wake(Vcpu v);
    /// <summary>Takes the next vCPU to run on <paramref name="pcpu"/> and its time slice, or null when none is runnable.</summary>
    Vcpu? PickNext(int pcpu, long now, out long sliceNs);
    /// <summary>The vCPU left the CPU after running <paramref name="ranNs"/>; requeue it if it is still runnable.</summary>
    void Descheduled(Vcpu v, long ranNs);
    /// <summary>Waits until something may have become runnable, or the timeout passes.</summary>
    void WaitForWork(int pcpu, int timeoutMs);
    /// <summary>Wakes every idle pCPU (shutdown).</summary>
    void WakeAll();
}
