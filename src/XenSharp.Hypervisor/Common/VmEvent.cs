using System.Runtime.CompilerServices;
using XenSharp.Cpu;
using XenSharp.Public;
using static XenSharp.Public.VmEvent;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// A domain's vm_event ring (Xen's common/vm_event.c, struct vm_event_domain), the monitor's or the pager's: a page of
/// the guest that the toolstack names in HVM_PARAM_MONITOR_RING_PFN (HVM_PARAM_PAGING_RING_PFN), where the hypervisor is the front end (it produces requests) and
/// the introspection agent the back end (it answers), and an event channel in the domain whose consumer is the
/// hypervisor. A synchronous request pauses its vCPU until the response with VM_EVENT_FLAG_VCPU_PAUSED comes back;
/// a vCPU that finds the ring full waits, paused, for a free slot and then retries what raised the event. The ring
/// page is the hypervisor's from enable to disable (it holds a reference), even once libxc has taken it out of the
/// guest's physmap. The paging ring also carries requests of the hypervisor itself (a foreign mapping of a paged-out
/// page), which pause no vCPU, and every response on it is handed to <see cref="MemPaging.Resume"/>.
/// </summary>
internal sealed unsafe class VmEventRing
{
    private const int HeaderSize = 64, EntrySize = 400;
    /// <summary>__RING_SIZE: the entries that fit after the header, rounded down to a power of two.</summary>
    public const uint Entries = 8;
    private const int ReqProd = 0, ReqEvent = 4, RspProd = 8, RspEvent = 12;

    private readonly Domain _d;
    private readonly bool _paging;
    private readonly uint _mfn;
    private readonly byte* _page;
    private readonly object _lock = new();
    private uint _reqProdPvt, _rspCons;
    // Per vCPU: pauses this ring owes a response for, and whether the vCPU waits for a free slot.
    private readonly int[] _paused;
    private readonly bool[] _waitingForSlot;
    private bool _closed;

    public uint Port { get; private set; }

    private VmEventRing(Domain d, uint mfn, bool paging)
    {
        _d = d;
        _paging = paging;
        _mfn = mfn;
        _page = d.Host.Frames.PageAddress(mfn);
        _paused = new int[d.Vcpus.Length];
        _waitingForSlot = new bool[d.Vcpus.Length];
    }

    /// <summary>XEN_VM_EVENT_ENABLE of the monitor ring (or with <paramref name="paging"/> the pager's): -EBUSY when
    /// there is one, -EOPNOTSUPP without a ring gfn, -EINVAL when that gfn is not the guest's writable RAM; the port
    /// the agent binds to otherwise.</summary>
    public static long Enable(Domain d, ushort agent, out uint port, bool paging = false)
    {
        port = 0;
        if ((paging ? d.PagingRing : d.Monitor.Ring) is not null)
            return -Errno.EBUSY;
        ulong gfn = d.Arch.Params[paging ? Public.Hvm.Params.HVM_PARAM_PAGING_RING_PFN : Public.Hvm.Params.HVM_PARAM_MONITOR_RING_PFN];
        if (gfn == 0)
            return -Errno.EOPNOTSUPP;
        if (!d.P2m.TryLookup(gfn, out uint mfn, out var type) || type != P2mType.RamRw)
            return -Errno.EINVAL;
        d.Host.Frames.AddRef(mfn);
        var ring = new VmEventRing(d, mfn, paging);
        new Span<byte>(ring._page, FrameTable.PageSize).Clear();
        // SHARED_RING_INIT: events wanted from the first entry on.
        Volatile.Write(ref *(uint*)(ring._page + ReqEvent), 1);
        Volatile.Write(ref *(uint*)(ring._page + RspEvent), 1);
        long rc = d.Evtchn.AllocUnbound(agent, out uint p, ring.Resume);
        if (rc != 0)
        {
            d.Host.Frames.Release(mfn, dropRef: true);
            return rc;
        }
        ring.Port = port = p;
        if (paging)
            d.PagingRing = ring;
        else
            d.Monitor.Ring = ring;
        return 0;
    }

    /// <summary>XEN_VM_EVENT_DISABLE: every vCPU the ring paused runs again, the port closes and the page is let go.</summary>
    public void Disable()
    {
        lock (_lock)
        {
            if (_closed)
                return;
            _closed = true;
        }
        if (_paging)
            _d.PagingRing = null;
        else
            _d.Monitor.Ring = null;
        _d.Evtchn.Close(Port);
        for (int i = 0; i < _paused.Length; i++)
        {
            _waitingForSlot[i] = false;
            while (Unpause(_d.Vcpus[i])) { }
        }
        _d.Host.Frames.Release(_mfn, dropRef: true);
    }

    /// <summary>Puts a request on the ring and tells the agent; with <paramref name="sync"/> the vCPU is paused until
    /// the response. False when the ring is full: the vCPU is paused until a slot frees and must then retry what
    /// raised the event (the caller leaves the instruction to be run again). A request of the hypervisor's own
    /// (<paramref name="v"/> null) pauses nothing and names vCPU 0; when the ring is full its caller tries later.</summary>
    public bool Post(Vcpu? v, ref VmEventSt req, bool sync)
    {
        lock (_lock)
        {
            if (_closed)
                return false;
            if (_reqProdPvt - _rspCons >= Entries)
            {
                if (v is not null && !_waitingForSlot[v.Id])
                {
                    _waitingForSlot[v.Id] = true;
                    Pause(v);
                }
                return false;
            }
            req.Version = VM_EVENT_INTERFACE_VERSION;
            req.VcpuId = v is null ? 0 : (uint)v.Id;
            // monitor_traps: with altp2m active, every event names the view the vCPU was in.
            if (!_paging && v is not null && _d.P2m.Altp2mActive)
            {
                req.Flags |= VM_EVENT_FLAG_ALTERNATE_P2M;
                req.Altp2mIdx = (ushort)_d.P2m.VcpuView(v.Id);
            }
            if (sync && v is not null)
            {
                req.Flags |= VM_EVENT_FLAG_VCPU_PAUSED;
                // Before the request is seen, so that its response always finds the pause to undo.
                Pause(v);
            }
            Unsafe.WriteUnaligned(_page + HeaderSize + (_reqProdPvt % Entries) * EntrySize, req);
            _reqProdPvt++;
            Volatile.Write(ref *(uint*)(_page + ReqProd), _reqProdPvt);
        }
        _d.Evtchn.Send(Port);
        return true;
    }

    /// <summary>The agent's notification (and XEN_VM_EVENT_RESUME): takes every response, unpausing the vCPUs they
    /// name, then lets the vCPUs waiting for a slot try again. A response that names no vCPU, or one not paused by
    /// this ring, is skipped, as Xen skips it.</summary>
    public void Resume()
    {
        bool took = false;
        while (true)
        {
            VmEventSt rsp;
            lock (_lock)
            {
                if (_closed)
                    return;
                uint prod = Volatile.Read(ref *(uint*)(_page + RspProd));
                // A producer index more than a ring ahead is garbage: nothing is taken.
                if (prod == _rspCons || prod - _rspCons > Entries)
                    break;
                rsp = Unsafe.ReadUnaligned<VmEventSt>(_page + HeaderSize + (_rspCons % Entries) * EntrySize);
                _rspCons++;
                Volatile.Write(ref *(uint*)(_page + RspEvent), _rspCons + 1);
                took = true;
            }
            // Xen skips a response of another interface version. Xen's own xenpaging never fills in a response's
            // version (nor its reason or paging flags: only the gfn, vcpu_id and flags it copies from the request), so
            // on the paging ring, where every response is the pager's answer about a gfn, the version is not asked.
            if ((!_paging && rsp.Version != VM_EVENT_INTERFACE_VERSION) || rsp.VcpuId >= (uint)_d.Vcpus.Length)
                continue;
            // p2m_mem_paging_resume: the gfn the pager answers for becomes plain RAM again.
            if (_paging)
                MemPaging.Resume(_d, rsp);
            if ((rsp.Flags & VM_EVENT_FLAG_VCPU_PAUSED) == 0)
                continue;
            var v = _d.Vcpus[rsp.VcpuId];
            // vm_event_resume: what the agent asks for the paused vCPU, before it runs again. A view that does not
            // exist is ignored, as p2m_altp2m_check ignores it.
            if ((rsp.Flags & VM_EVENT_FLAG_ALTERNATE_P2M) != 0 && _d.P2m.Altp2mActive)
                _d.P2m.SwitchVcpu(v.Id, rsp.Altp2mIdx);
            if ((rsp.Flags & VM_EVENT_FLAG_TOGGLE_SINGLESTEP) != 0 && _d.Pv is null && IsPaused(v))
                _d.Monitor.ToggleSingleStep(v);
            Unpause(v);
        }
        if (!took)
            return;
        for (int i = 0; i < _waitingForSlot.Length; i++)
        {
            bool wake;
            lock (_lock)
            {
                wake = _waitingForSlot[i];
                _waitingForSlot[i] = false;
            }
            if (wake)
                Unpause(_d.Vcpus[i]);
        }
    }

    private bool IsPaused(Vcpu v)
    {
        lock (v.Lock)
            return _paused[v.Id] != 0;
    }

    private void Pause(Vcpu v)
    {
        lock (v.Lock)
        {
            _paused[v.Id]++;
            v.PauseCount++;
        }
        v.DescheduleRequested = true;
        v.Engine?.RequestExit();
    }

    /// <summary>Undoes one pause of this ring; false when it owed none.</summary>
    private bool Unpause(Vcpu v)
    {
        bool wake;
        lock (v.Lock)
        {
            if (_paused[v.Id] == 0)
                return false;
            _paused[v.Id]--;
            v.PauseCount--;
            wake = v.PauseCount == 0;
        }
        if (wake)
        {
            v.SetRunstate(Runstate.Runnable, _d.Host.Time.NowNs);
            _d.Host.Scheduler.Wake(v);
        }
        return true;
    }

    /// <summary>The vCPU's registers as vm_event_fill_regs gives them with a request.</summary>
    public static void FillRegs(IVcpu cpu, ref VmEventRegsX86 r)
    {
        cpu.GetRegisters(out var g);
        cpu.GetSpecialRegisters(out var s);
        r.Rax = g.Rax; r.Rcx = g.Rcx; r.Rdx = g.Rdx; r.Rbx = g.Rbx; r.Rsp = g.Rsp; r.Rbp = g.Rbp; r.Rsi = g.Rsi; r.Rdi = g.Rdi;
        r.R8 = g.R8; r.R9 = g.R9; r.R10 = g.R10; r.R11 = g.R11; r.R12 = g.R12; r.R13 = g.R13; r.R14 = g.R14; r.R15 = g.R15;
        r.Rflags = g.Rflags; r.Rip = g.Rip;
        r.Cr0 = s.Cr0; r.Cr2 = s.Cr2; r.Cr3 = s.Cr3; r.Cr4 = s.Cr4; r.MsrEfer = s.Efer;
        r.GdtrBase = s.Gdt.Base; r.GdtrLimit = s.Gdt.Limit;
        r.FsBase = s.Fs.Base; r.GsBase = s.Gs.Base;
        r.CsBase = (uint)s.Cs.Base; r.SsBase = (uint)s.Ss.Base; r.DsBase = (uint)s.Ds.Base; r.EsBase = (uint)s.Es.Base;
        r.CsSel = s.Cs.Selector; r.SsSel = s.Ss.Selector; r.DsSel = s.Ds.Selector; r.EsSel = s.Es.Selector;
        r.FsSel = s.Fs.Selector; r.GsSel = s.Gs.Selector;
        r.Cs = Selector(s.Cs); r.Ss = Selector(s.Ss); r.Ds = Selector(s.Ds); r.Es = Selector(s.Es); r.Fs = Selector(s.Fs); r.Gs = Selector(s.Gs);
        r.VmtracePos = ulong.MaxValue;
    }

    private static uint Selector(in Segment s) => (s.Limit & 0xFFFFF) | ((uint)(s.Attributes & 0xFFF) << 20);
}
