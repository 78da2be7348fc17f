using XenSharp.Hypervisor.Common;
using XenSharp.Public;

namespace XenSharp.Hypervisor;

/// <summary>
/// Hypercalls of one program in Domain-0's userland (what Linux's privcmd driver passes to Xen for it): they run as
/// Domain-0, so privileged, and their pointer arguments name the program's hypercall buffers, which the daemon has
/// mapped at <c>buffers</c> for the caller's range [callerBase, callerBase + length). A pointer outside that range is
/// -EFAULT, as a hypercall buffer Xen cannot reach would be. Calls are serialised per context; contexts are
/// independent of each other.
/// </summary>
public sealed unsafe class Dom0HypercallContext : IDisposable
{
    private readonly XenHypervisor _hv;
    private readonly Vcpu _vcpu;
    private readonly byte* _buffers;
    private readonly ulong _callerBase, _length;
    private readonly object _lock = new();
    private bool _disposed;

    internal Dom0HypercallContext(XenHypervisor hv, nint buffers, ulong callerBase, ulong length)
    {
        _hv = hv;
        _buffers = (byte*)buffers;
        _callerBase = callerBase;
        _length = buffers == 0 ? 0 : length;
        // A vCPU of Domain-0 that no pCPU runs: the hypercall handlers' view of "the caller".
        _vcpu = new Vcpu(hv.Dom0, 0) { Caller = this };
    }

    /// <summary>The daemon's address of the caller's byte at <paramref name="address"/>, or null outside its buffers.</summary>
    internal byte* Translate(ulong address)
    {
        ulong offset = address - _callerBase;
        return offset < _length ? _buffers + offset : null;
    }

    /// <summary>
    /// Whether a program may make hypercall <paramref name="nr"/>. Those that act on the calling vCPU (vcpu_op,
    /// set_timer_op, vm_assist, sched_op other than remote_shutdown) have no meaning for a process, which has no vCPU
    /// of its own; Linux's privcmd would run them on whatever dom0 vCPU the process was on.
    /// </summary>
    internal static bool Allows(ulong nr, in HypercallArgs a) => nr switch
    {
        Xen.__HYPERVISOR_sched_op => (int)a.A1 == Sched.SCHEDOP_remote_shutdown,
        Xen.__HYPERVISOR_vcpu_op or Xen.__HYPERVISOR_set_timer_op or Xen.__HYPERVISOR_vm_assist => false,
        _ => true,
    };

    /// <summary>Runs hypercall <paramref name="nr"/> to completion (continuations are followed here, where a guest
    /// would re-execute its VMCALL) and returns Xen's result: ≥ 0, or -errno.</summary>
    public long Hypercall(ulong nr, ulong a1, ulong a2 = 0, ulong a3 = 0, ulong a4 = 0, ulong a5 = 0)
    {
        var args = new HypercallArgs(a1, a2, a3, a4, a5);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            while (true)
            {
                _vcpu.Continuation = null;
                _vcpu.Compat = false;
                long rc = Common.Hypercall.Dispatch(_vcpu, nr, args);
                if (_vcpu.Continuation is not { } next)
                    return rc;
                args = next;
            }
        }
    }

    /// <summary>A dm_op whose caller does not wait for its result (<see cref="X86.DmOps.DoPosted"/>): the bytes of
    /// its one buffer are <paramref name="buffer"/>. Returns what the hypercall would have.</summary>
    public long PostedDmOp(ushort domid, ReadOnlySpan<byte> buffer)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return X86.DmOps.DoPosted(_vcpu.Domain, domid, buffer);
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
                return;
            _disposed = true;
            _hv.Frames.Unregister(_vcpu.Translations);
        }
    }
}

public sealed partial class XenHypervisor
{
    /// <summary>A hypercall context for one Domain-0 program whose hypercall buffers the daemon has mapped at
    /// <paramref name="buffers"/> (<paramref name="length"/> bytes, at <paramref name="callerBase"/> in the program).</summary>
    public Dom0HypercallContext OpenDom0Hypercalls(nint buffers, ulong callerBase, ulong length) =>
        new(this, buffers, callerBase, length);

    // Domain-0's event channels for its programs (the evtchn driver's role). Unlike the backends' forms in
    // Dom0Services, the other end may be any domain, Domain-0 included, as Xen allows a domain to talk to itself.
    // onEvent runs on the notifying thread and must only hand the work on. Each returns 0 or -errno.

    /// <summary>EVTCHNOP_alloc_unbound in Domain-0 for <paramref name="remoteDom"/> to bind.</summary>
    public long Dom0EvtchnAllocUnbound(ushort remoteDom, Action onEvent, out uint port)
    {
        port = 0;
        if (FindDomain(remoteDom) is null)
            return -Errno.ESRCH;
        return Dom0.Evtchn.AllocUnbound(remoteDom, out port, onEvent);
    }

    /// <summary>EVTCHNOP_bind_interdomain from Domain-0 to <paramref name="remotePort"/> of <paramref name="remoteDom"/>.</summary>
    public long Dom0EvtchnBindInterdomain(ushort remoteDom, uint remotePort, Action onEvent, out uint port)
    {
        port = 0;
        var remote = FindDomain(remoteDom);
        if (remote is null)
            return -Errno.ESRCH;
        return Dom0.Evtchn.BindInterdomain(remote, remotePort, out port, onEvent);
    }

    /// <summary>EVTCHNOP_bind_virq of a global VIRQ (VIRQ_DOM_EXC, ...) to Domain-0.</summary>
    public long Dom0EvtchnBindVirq(uint virq, Action onEvent, out uint port) =>
        Dom0.Evtchn.BindVirq(virq, 0, out port, onEvent);

    /// <summary>EVTCHNOP_send from Domain-0's <paramref name="port"/>.</summary>
    public long Dom0EvtchnSend(uint port) => Dom0.Evtchn.Send(port);

    /// <summary>
    /// Where Domain-0's <paramref name="port"/> is bound to an IOREQ server's vCPU port (the device model's half of the
    /// ioreq round trip), lets the program notify it by memory instead of EVTCHNOP_send: <paramref name="word"/> is a
    /// 32-bit word shared with the program, in which it sets <see cref="X86.IoreqServer.DoorbellNotified"/> and wakes
    /// futex waiters, and the waiting vCPU sleeps on it. Returns the attachment, to be disposed before the word goes
    /// away, or null where the port is anything else (or the security policy would deny the send).
    /// </summary>
    public IDisposable? Dom0EvtchnDoorbell(uint port, nint word)
    {
        ushort remoteDom;
        uint remotePort;
        var dom0 = Dom0;
        lock (dom0.Lock)
        {
            if (dom0.Evtchn.Get(port) is not { State: Common.EvtchnState.Interdomain } c)
                return null;
            remoteDom = c.RemoteDom;
            remotePort = c.RemotePort;
        }
        var remote = FindDomain(remoteDom);
        if (remote is null || Xsm.XsmHooks.EvtchnSend(dom0, remote) < 0)
            return null;
        foreach (var server in remote.Arch.Ioreq.All)
        {
            int vcpu = server.VcpuOfPort(remotePort);
            if (vcpu >= 0)
                return server.AttachDoorbell(vcpu, word);
        }
        return null;
    }

    /// <summary>EVTCHNOP_close of Domain-0's <paramref name="port"/>.</summary>
    public long Dom0EvtchnClose(uint port) => Dom0.Evtchn.Close(port);

    /// <summary>
    /// Where a Domain-0 program finds frames <paramref name="gfns"/> of <paramref name="domid"/> to map them itself
    /// (privcmd's mmapbatch): the domain's memfd, and per frame its offset in it or -errno (-EINVAL for no RAM there,
    /// -EACCES for a read-only frame asked writable). Returns 0, or -ESRCH when there is no such guest. The memfd
    /// carries a reference the caller releases (<see cref="System.Runtime.InteropServices.SafeHandle.DangerousRelease"/>).
    /// A mapping needs no reference of its own: a frame the domain frees is reused only by the same domain.
    /// </summary>
    public long Dom0ForeignFrames(ushort domid, ReadOnlySpan<ulong> gfns, bool writable, Span<long> offsets,
        out Microsoft.Win32.SafeHandles.SafeFileHandle? memfd)
    {
        memfd = null;
        if (domid == Xen.DOMID_XEN)
            return XenFrames(gfns, offsets, out memfd);
        var d = FindDomain(domid);
        if (d is null || d.IsHost)
            return -Errno.ESRCH;
        if (Xsm.XsmHooks.MapForeign(Dom0, d, writable) is < 0 and var denied)
            return denied;
        var file = Frames.MemoryFileOf(domid);
        if (file is null)
            return -Errno.ESRCH;
        bool added = false;
        file.DangerousAddRef(ref added);
        for (int i = 0; i < gfns.Length; i++)
        {
            // A PV domain is not translated: its frames are named by MFN, as Xen's privcmd mapping of a PV guest
            // writes them into PTEs; a page table or descriptor page of its own only read-only.
            if (d.Pv is not null)
            {
                offsets[i] = PvFrameOffset(domid, gfns[i], writable, file);
                continue;
            }
            // A shared page gets its own copy first (Xen's P2M_UNSHARE): the program may write it, and the frame it
            // shares may be another domain's.
            if (d.P2m.TryLookup(gfns[i], out _, out var st) && st == P2mType.RamShared)
                d.Host.Sharing.Unshare(d, gfns[i]);
            lock (d.Lock)
            {
                bool found = d.P2m.TryLookup(gfns[i], out uint mfn, out var t);
                // A page still (or again) holding its frame maps as RAM: the pager reads what it nominated.
                if (t is P2mType.PagingOut or P2mType.PagingIn && mfn != 0)
                    t = P2mType.RamRw;
                if (P2m.IsPaging(t))
                {
                    // Paged out: the pager is asked for it and the program told to retry (privcmd's paged error,
                    // -ENOENT, which libxenforeignmemory retries until the page is back).
                    Common.MemPaging.Populate(d, gfns[i], null);
                    offsets[i] = -Errno.ENOENT;
                }
                else if (!found || t is not (P2mType.RamRw or P2mType.RamRo or P2mType.XenShared))
                    offsets[i] = -Errno.EINVAL;
                else if (writable && t == P2mType.RamRo)
                    offsets[i] = -Errno.EACCES;
                else if (!Frames.TryGetBacking(mfn, out var fd, out long offset) || fd != file)
                    offsets[i] = -Errno.EINVAL;
                else
                    offsets[i] = offset;
            }
        }
        memfd = file;
        return 0;
    }

    /// <summary>The offset in the PV domain's memory file of machine frame <paramref name="mfn"/>, if the domain owns
    /// it: -EINVAL for a frame not its own, -EACCES for a writable mapping of one the PV MMU has typed.</summary>
    private long PvFrameOffset(ushort domid, ulong mfn, bool writable, Microsoft.Win32.SafeHandles.SafeFileHandle file)
    {
        if (mfn >= Frames.FrameCount || Frames.OwnerOf((uint)mfn) != domid || Frames.TypeOf((uint)mfn) == FrameType.Free)
            return -Errno.EINVAL;
        if (writable)
            lock (Frames.TypeLock)
                if (Frames.TypeInfoOf(mfn) is { Count: > 0, Type: not (PageType.None or PageType.Writable) })
                    return -Errno.EACCES;
        return Frames.TryGetBacking((uint)mfn, out var fd, out long offset) && fd == file ? offset : -Errno.EINVAL;
    }

    /// <summary>DOMID_XEN's frames a Domain-0 program may map: the trace buffers (by machine frame, as xentrace asks).</summary>
    private long XenFrames(ReadOnlySpan<ulong> mfns, Span<long> offsets, out Microsoft.Win32.SafeHandles.SafeFileHandle? memfd)
    {
        memfd = null;
        for (int i = 0; i < mfns.Length; i++)
        {
            offsets[i] = Services.TraceBuffers.OffsetOf(mfns[i], out var file);
            if (offsets[i] >= 0)
                memfd = file;
        }
        if (memfd is null)
            return -Errno.EINVAL;
        bool added = false;
        memfd.DangerousAddRef(ref added);
        return 0;
    }
    /// <summary>
    /// gntdev's map for a Domain-0 program: maps grants <paramref name="refs"/> of <paramref name="domid"/> into
    /// Domain-0 (each held until <see cref="Dom0GrantUnmap"/>) and gives, per page, its grant handle, the page in the
    /// daemon and its offset in <paramref name="memfd"/>, the granting domain's memory file, which the program maps
    /// itself. All or nothing: the first failing grant's GNTST_* status is returned with nothing left mapped. The memfd
    /// carries a reference the caller releases.
    /// </summary>
    public unsafe short Dom0GrantMap(ushort domid, ReadOnlySpan<uint> refs, bool readOnly, Span<uint> handles,
        Span<nint> pages, Span<long> offsets, out Microsoft.Win32.SafeHandles.SafeFileHandle? memfd)
    {
        memfd = null;
        var ops = new XenSharp.Dom0.GrantMapOp[refs.Length];
        for (int i = 0; i < refs.Length; i++)
            ops[i] = new XenSharp.Dom0.GrantMapOp(domid, refs[i], readOnly);
        Dom0Services.MapGrantRefs(ops);
        short status = XenSharp.Public.GrantTable.GNTST_okay;
        Microsoft.Win32.SafeHandles.SafeFileHandle? file = null;
        for (int i = 0; i < ops.Length && status == XenSharp.Public.GrantTable.GNTST_okay; i++)
        {
            if (ops[i].Status != XenSharp.Public.GrantTable.GNTST_okay)
            {
                status = ops[i].Status;
                break;
            }
            uint mfn = (uint)(((byte*)ops[i].Address - Frames.Base) >> FrameTable.PageShift);
            // A granted frame lies in its domain's memory file; one map shares one file.
            if (!Frames.TryGetBacking(mfn, out var fd, out long offset) || (file is not null && fd != file))
                status = XenSharp.Public.GrantTable.GNTST_general_error;
            file = fd;
            handles[i] = ops[i].Handle;
            pages[i] = ops[i].Address;
            offsets[i] = offset;
        }
        if (status != XenSharp.Public.GrantTable.GNTST_okay)
        {
            foreach (var o in ops)
                if (o.Status == XenSharp.Public.GrantTable.GNTST_okay)
                    Dom0.Gnttab.Unmap(o.Handle, 0, host: true);
            return status;
        }
        bool added = false;
        file!.DangerousAddRef(ref added);
        memfd = file;
        return XenSharp.Public.GrantTable.GNTST_okay;
    }

    /// <summary>Lets go of a page mapped by <see cref="Dom0GrantMap"/>; returns its GNTST_* status.</summary>
    public short Dom0GrantUnmap(uint handle) => Dom0.Gnttab.Unmap(handle, 0, host: true);
    // gntalloc's grants: pages of Domain-0 (frames the daemon allocates in its own memory file, which the program maps)
    // offered to a domain through Domain-0's own grant table, whose entries name machine frames.
    private readonly object _dom0ShareLock = new();
    private readonly HashSet<uint> _dom0SharedRefs = [];

    /// <summary>
    /// gntalloc's share for a Domain-0 program: allocates one zeroed page per entry of <paramref name="refs"/> and grants
    /// each to <paramref name="grantee"/>, giving its grant ref, its frame and its offset in <paramref name="memfd"/>
    /// (Domain-0's memory file, carrying a reference the caller releases). Returns 0, -EINVAL for a reserved domid,
    /// -ENOMEM with no memory left or -ENOSPC with Domain-0's grant table full; on failure nothing stays shared.
    /// </summary>
    public long Dom0ShareFrames(ushort grantee, bool writable, Span<uint> refs, Span<uint> frames, Span<long> offsets,
        out Microsoft.Win32.SafeHandles.SafeFileHandle? memfd)
    {
        memfd = null;
        if (grantee >= Xen.DOMID_FIRST_RESERVED)
            return -Errno.EINVAL;
        Microsoft.Win32.SafeHandles.SafeFileHandle? file = null;
        long rc = 0;
        int done = 0;
        lock (_dom0ShareLock)
        {
            uint limit = (uint)(Dom0.Gnttab.MaxFrames * (FrameTable.PageSize / 8));
            uint next = XenSharp.Public.GrantTable.GNTTAB_NR_RESERVED_ENTRIES;
            for (; done < refs.Length; done++)
            {
                // A ref a grantee still has mapped after its unshare stays taken until the grantee lets go.
                while (next < limit && (_dom0SharedRefs.Contains(next) || Dom0.Gnttab.IsActive(next)))
                    next++;
                if (next >= limit)
                {
                    rc = -Errno.ENOSPC;
                    break;
                }
                if (!Frames.TryAllocate(0, FrameType.Ram, out uint mfn))
                {
                    rc = -Errno.ENOMEM;
                    break;
                }
                if (!Frames.TryGetBacking(mfn, out var fd, out long offset) || (file is not null && fd != file)
                    || !Dom0.Gnttab.WriteEntryV1(next, (ushort)(XenSharp.Public.GrantTable.GTF_permit_access
                        | (writable ? 0 : XenSharp.Public.GrantTable.GTF_readonly)), grantee, mfn))
                {
                    Frames.Free(mfn);
                    rc = -Errno.ENOSPC;
                    break;
                }
                file = fd;
                _dom0SharedRefs.Add(next);
                refs[done] = next;
                frames[done] = mfn;
                offsets[done] = offset;
            }
        }
        if (rc != 0)
        {
            Dom0Unshare(refs[..done], frames[..done]);
            return rc;
        }
        bool added = false;
        file!.DangerousAddRef(ref added);
        memfd = file;
        return 0;
    }

    /// <summary>Ends grants made by <see cref="Dom0ShareFrames"/> and gives their pages up; a page a grantee still
    /// has mapped lives on until it unmaps it (its mapping holds a reference), as under gntalloc.</summary>
    public void Dom0Unshare(ReadOnlySpan<uint> refs, ReadOnlySpan<uint> frames)
    {
        lock (_dom0ShareLock)
        {
            for (int i = 0; i < refs.Length; i++)
            {
                if (!_dom0SharedRefs.Remove(refs[i]))
                    continue;
                Dom0.Gnttab.WriteEntryV1(refs[i], 0, 0, 0);
                Frames.Free(frames[i]);
            }
        }
    }

    /// <summary>The page in the daemon of a frame shared by <see cref="Dom0ShareFrames"/> (for gntalloc's unmap
    /// notification).</summary>
    public unsafe byte* Dom0SharedPage(uint mfn) => Frames.PageAddress(mfn);
    /// <summary>
    /// Where a Domain-0 program finds the frames of a resource of <paramref name="domid"/> to map them itself
    /// (privcmd's mmap_resource, XENMEM_acquire_resource): the grant table's shared frames (id 0, the table grown to
    /// hold them, as Xen's acquire grows it) or v2 status frames (id 1), or an IOREQ server's pages (id the server:
    /// frame 0 the buffered ring, frame 1 the synchronous ioreq page). The answer is as
    /// <see cref="Dom0ForeignFrames"/>'s. -ESRCH for no such guest, -EINVAL for frames beyond the resource,
    /// -EOPNOTSUPP for a resource type not served here.
    /// </summary>
    public long Dom0ResourceFrames(ushort domid, uint type, uint id, ulong frame, Span<long> offsets,
        out Microsoft.Win32.SafeHandles.SafeFileHandle? memfd)
    {
        memfd = null;
        var d = FindDomain(domid);
        if (d is null || d.IsHost)
            return -Errno.ESRCH;
        var mfns = new uint[offsets.Length];
        long rc;
        if (type == Memory.XENMEM_resource_grant_table)
        {
            if (id > Memory.XENMEM_resource_grant_table_id_status)
                return -Errno.EINVAL;
            rc = d.Gnttab.ResourceFrames(id == Memory.XENMEM_resource_grant_table_id_status, frame, mfns);
        }
        else if (type == Memory.XENMEM_resource_ioreq_server)
            rc = d.Arch.Ioreq.ResourceFrames(id, Dom0.DomainId, frame, mfns);
        else
            return -Errno.EOPNOTSUPP;
        if (rc != 0)
            return rc;
        var file = Frames.MemoryFileOf(domid);
        if (file is null)
            return -Errno.ESRCH;
        for (int i = 0; i < mfns.Length; i++)
            offsets[i] = Frames.TryGetBacking(mfns[i], out var fd, out long offset) && fd == file ? offset : -Errno.EINVAL;
        bool added = false;
        file.DangerousAddRef(ref added);
        memfd = file;
        return 0;
    }
}
