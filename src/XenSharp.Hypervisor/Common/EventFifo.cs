using XenSharp.Public;
using static XenSharp.Public.EventChannel;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// The FIFO event channel ABI: one event word per port in guest pages added by EVTCHNOP_expand_array,
/// a control block per vCPU with a queue head per priority. Raising links the port behind the queue's
/// tail (or into the head when the guest already consumed the tail) and sets the priority's READY bit.
/// </summary>
internal sealed unsafe class EventFifo(Domain d) : IEvtchnPortOps
{
    private const uint Pending = 1u << EVTCHN_FIFO_PENDING, Masked = 1u << EVTCHN_FIFO_MASKED,
        Linked = 1u << EVTCHN_FIFO_LINKED;
    private const int WordsPerPage = EVTCHN_FIFO_EVENT_WORDS_PER_PAGE;
    private const int MaxPages = EVTCHN_FIFO_NR_CHANNELS / WordsPerPage;

    private sealed class VcpuQueues
    {
        public uint Mfn;
        public EvtchnFifoControlBlock* ControlBlock;
        public readonly uint[] Tail = new uint[EVTCHN_FIFO_MAX_QUEUES];
    }

    private readonly VcpuQueues?[] _queues = new VcpuQueues?[d.Vcpus.Length];
    private readonly List<(uint Mfn, nint Words)> _pages = new();

    public uint MaxPorts => EVTCHN_FIFO_NR_CHANNELS;

    public long InitControl(Vcpu v, ulong gfn, uint offset)
    {
        if (_queues[v.Id] is not null)
            return -Errno.EINVAL;
        if (offset > FrameTable.PageSize - (uint)sizeof(EvtchnFifoControlBlock) || (offset & 7) != 0)
            return -Errno.EINVAL;
        if (!X86.Pv.PvMm.TryGuestWritableFrame(d, gfn, out uint mfn))
            return -Errno.EINVAL;
        d.Host.Frames.AddRef(mfn);
        var cb = (EvtchnFifoControlBlock*)(d.Host.Frames.PageAddress(mfn) + offset);
        new Span<byte>(cb, sizeof(EvtchnFifoControlBlock)).Clear();
        _queues[v.Id] = new VcpuQueues { Mfn = mfn, ControlBlock = cb };
        return 0;
    }

    public long ExpandArray(ulong gfn, out uint firstNew, out uint endNew)
    {
        firstNew = endNew = (uint)(_pages.Count * WordsPerPage);
        if (_queues.All(q => q is null))
            return -Errno.EOPNOTSUPP;
        if (_pages.Count >= MaxPages)
            return -Errno.EINVAL;
        if (!X86.Pv.PvMm.TryGuestWritableFrame(d, gfn, out uint mfn))
            return -Errno.EINVAL;
        d.Host.Frames.AddRef(mfn);
        // The page is taken as the guest wrote it, as Xen does: the guest masks every event of a page before it adds
        // it, and a resumed Linux counts on the ports it binds again starting masked (clearing the page here would
        // unmask its SMP lock-kick IPIs, which must never be delivered).
        byte* page = d.Host.Frames.PageAddress(mfn);
        _pages.Add((mfn, (nint)page));
        endNew = firstNew + WordsPerPage;
        return 0;
    }

    private uint* Word(uint port)
    {
        int page = (int)(port / WordsPerPage);
        return page < _pages.Count ? (uint*)_pages[page].Words + port % WordsPerPage : null;
    }

    public void SetPending(Vcpu v, Evtchn chn)
    {
        uint* w = Word(chn.Port);
        if (w is null)
        {
            chn.PendingWithoutWord = true;
            return;
        }
        uint old = Interlocked.Or(ref *w, Pending);
        if ((old & (Masked | Linked)) != 0)
            return;
        Link(v, chn, w);
    }

    private void Link(Vcpu v, Evtchn chn, uint* w)
    {
        var q = _queues[v.Id];
        if (q is null)
            return; // this vCPU has no control block: the event stays pending until unmask or rebind
        if ((Interlocked.Or(ref *w, Linked) & Linked) != 0)
            return;
        int prio = chn.Priority;
        lock (q)
        {
            uint tail = q.Tail[prio];
            bool linked = false;
            if (tail != 0 && tail != chn.Port && Word(tail) is var tw && tw is not null)
            {
                // Append behind the tail while the guest has not yet consumed it (LINKED still set).
                while (true)
                {
                    uint ow = Volatile.Read(ref *tw);
                    if ((ow & Linked) == 0)
                        break;
                    uint nw = (ow & ~EVTCHN_FIFO_LINK_MASK) | chn.Port;
                    if (Interlocked.CompareExchange(ref *tw, nw, ow) == ow)
                    {
                        linked = true;
                        break;
                    }
                }
            }
            if (!linked)
                Volatile.Write(ref q.ControlBlock->Head[prio], chn.Port);
            q.Tail[prio] = chn.Port;
        }
        chn.LastVcpu = v.Id;
        chn.LastPriority = (byte)prio;
        uint bit = 1u << prio;
        if ((Interlocked.Or(ref q.ControlBlock->Ready, bit) & bit) == 0)
            v.MarkEventsPending();
    }

    public void ClearPending(Evtchn chn)
    {
        uint* w = Word(chn.Port);
        chn.PendingWithoutWord = false;
        if (w is not null)
            Interlocked.And(ref *w, ~Pending);
    }

    public void Unmask(Vcpu v, Evtchn chn)
    {
        uint* w = Word(chn.Port);
        if (w is null)
            return;
        Interlocked.And(ref *w, ~Masked);
        if ((Volatile.Read(ref *w) & Pending) != 0 && (Volatile.Read(ref *w) & Linked) == 0)
            Link(v, chn, w);
    }

    public bool IsPending(Evtchn chn) => Word(chn.Port) is var w && w is not null ? (*w & Pending) != 0 : chn.PendingWithoutWord;
    public bool IsMasked(Evtchn chn) => Word(chn.Port) is var w && w is not null && (*w & Masked) != 0;

    public long SetPriority(Evtchn chn, uint priority)
    {
        if (priority > EVTCHN_FIFO_PRIORITY_MIN)
            return -Errno.EINVAL;
        chn.Priority = (byte)priority;
        return 0;
    }

    public void Destroy()
    {
        foreach (var q in _queues)
            if (q is not null)
                d.Host.Frames.Release(q.Mfn, dropRef: true);
        Array.Clear(_queues);
        foreach (var (mfn, _) in _pages)
            d.Host.Frames.Release(mfn, dropRef: true);
        _pages.Clear();
    }
}
