using XenSharp.Public;

namespace XenSharp.Hypervisor.Common;

/// <summary>The 2-level event channel ABI: pending and mask bitmaps in shared_info, a selector word per vCPU.</summary>
internal sealed unsafe class Event2L(Domain d) : IEvtchnPortOps
{
    private ulong* Pending => d.SharedInfo->EvtchnPending;
    private ulong* Mask => d.SharedInfo->EvtchnMask;

    public uint MaxPorts => EventChannel.EVTCHN_2L_NR_CHANNELS;

    public void SetPending(Vcpu v, Evtchn chn)
    {
        uint port = chn.Port;
        int word = (int)(port / 64);
        ulong bit = 1UL << (int)(port % 64);
        if ((Interlocked.Or(ref Pending[word], bit) & bit) != 0)
            return;
        if ((Volatile.Read(ref Mask[word]) & bit) == 0)
            RaiseSelector(v, word);
    }

    private static void RaiseSelector(Vcpu v, int word)
    {
        if (v.VcpuInfo is null)
            return;
        ulong sel = 1UL << word;
        if ((Interlocked.Or(ref v.VcpuInfo->EvtchnPendingSel, sel) & sel) == 0)
            v.MarkEventsPending();
    }

    public void ClearPending(Evtchn chn)
    {
        uint port = chn.Port;
        Interlocked.And(ref Pending[port / 64], ~(1UL << (int)(port % 64)));
    }

    public void Unmask(Vcpu v, Evtchn chn)
    {
        uint port = chn.Port;
        int word = (int)(port / 64);
        ulong bit = 1UL << (int)(port % 64);
        // Re-raise only what the mask was holding back.
        if ((Interlocked.And(ref Mask[word], ~bit) & bit) != 0 && (Volatile.Read(ref Pending[word]) & bit) != 0)
            RaiseSelector(v, word);
    }

    public bool IsPending(Evtchn chn) => (Volatile.Read(ref Pending[chn.Port / 64]) & (1UL << (int)(chn.Port % 64))) != 0;
    public bool IsMasked(Evtchn chn) => (Volatile.Read(ref Mask[chn.Port / 64]) & (1UL << (int)(chn.Port % 64))) != 0;
    public long SetPriority(Evtchn chn, uint priority) => -Errno.ENOSYS;
    public void Destroy() { }
}
