using XenSharp.Public;
using XenSharp.Public.Compat;

namespace XenSharp.Hypervisor.Common;

/// <summary>The 2-level event channel ABI: pending and mask bitmaps in shared_info, a selector word per vCPU.</summary>
internal sealed unsafe class Event2L(Domain d) : IEvtchnPortOps
{
    // Bit n of a bitmap is the same memory bit whether the guest sees 32- or 64-bit words, so both layouts
    // use 64-bit atomics; only where the mask starts, the selector's width and the port count differ.
    private bool Compat => d.Has32BitSharedInfo;
    private ulong* Pending => d.SharedInfo->EvtchnPending;
    private ulong* Mask => Compat ? (ulong*)((byte*)d.SharedInfo + SharedInfo32.OffsetEvtchnMask) : d.SharedInfo->EvtchnMask;

    public uint MaxPorts => Compat ? (uint)SharedInfo32.EVTCHN_2L_NR_CHANNELS : EventChannel.EVTCHN_2L_NR_CHANNELS;

    public void SetPending(Vcpu v, Evtchn chn)
    {
        uint port = chn.Port;
        int word = (int)(port / 64);
        ulong bit = 1UL << (int)(port % 64);
        if ((Interlocked.Or(ref Pending[word], bit) & bit) != 0)
            return;
        if ((Volatile.Read(ref Mask[word]) & bit) == 0)
            RaiseSelector(v, port);
    }

    private void RaiseSelector(Vcpu v, uint port)
    {
        if (v.VcpuInfo is null)
            return;
        if (Compat)
        {
            uint sel32 = 1u << (int)(port / 32);
            ref uint word32 = ref *(uint*)((byte*)v.VcpuInfo + SharedInfo32.VcpuInfoOffsetPendingSel);
            if ((Interlocked.Or(ref word32, sel32) & sel32) == 0)
                v.MarkEventsPending();
            return;
        }
        ulong sel = 1UL << (int)(port / 64);
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
            RaiseSelector(v, port);
    }

    public bool IsPending(Evtchn chn) => (Volatile.Read(ref Pending[chn.Port / 64]) & (1UL << (int)(chn.Port % 64))) != 0;
    public bool IsMasked(Evtchn chn) => (Volatile.Read(ref Mask[chn.Port / 64]) & (1UL << (int)(chn.Port % 64))) != 0;
    public long SetPriority(Evtchn chn, uint priority) => -Errno.ENOSYS;
    public void Destroy() { }
}
