using System.Collections.Concurrent;
using XenSharp.Public;
using static XenSharp.Public.Hvm.Altp2m;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// One alternate view of a domain's p2m (Xen's altp2m, arch/x86/mm/altp2m.c and the altp2m parts of p2m.c): per
/// gfn, an access of its own and, after HVMOP_altp2m_change_gfn, the gfn whose frame this view shows there. A gfn
/// the view has no entry for is seen as the host p2m has it (Xen copies the host entry into the view on first use,
/// with the host's access), so later changes of the host p2m show through.
/// </summary>
internal sealed class Altp2mView(P2m host, int index, byte defaultAccess)
{
    public readonly record struct Entry(ulong Target, byte Access);

    private readonly ConcurrentDictionary<ulong, Entry> _entries = new();

    public P2m Host { get; } = host;
    public int Index { get; } = index;
    /// <summary>The view's default access (create_p2m's hvmmem_default_access), which XENMEM_access_default means here.</summary>
    public byte DefaultAccess { get; } = defaultAccess;

    public bool TryGet(ulong gfn, out Entry e) => _entries.TryGetValue(gfn, out e);
    public void Set(ulong gfn, Entry e) => _entries[gfn] = e;
    public void Remove(ulong gfn) => _entries.TryRemove(gfn, out _);
}

/// <summary>
/// The alternate p2m views of a domain and which one each vCPU sees. View 0 is the host p2m itself. Only the
/// engine's view of memory follows a vCPU's view (<see cref="EnterView"/> names it for the pCPU thread before each
/// run): the hypervisor's own copies and backends' mappings use the host p2m, as in Xen. While altp2m is active it
/// counts as a restriction (<see cref="_restricted"/>), so the engine's unrestricted path stays one field test.
/// </summary>
internal sealed unsafe partial class P2m
{
    private Altp2mView?[]? _views;
    private int[] _vcpuView = [];

    // The view of the vCPU the current pCPU thread runs (checked against its owner before use).
    [ThreadStatic] private static Altp2mView? t_view;

    /// <summary>Whether altp2m is active (HVMOP_altp2m_set_domain_state).</summary>
    public bool Altp2mActive => Volatile.Read(ref _views) is not null;

    /// <summary>Called on the pCPU thread before a vCPU of this domain runs: the engine sees memory through its view.</summary>
    public void EnterView(int vcpu)
    {
        var views = Volatile.Read(ref _views);
        t_view = views is not null && (uint)vcpu < (uint)_vcpuView.Length ? views[Volatile.Read(ref _vcpuView[vcpu])] : null;
    }

    private Altp2mView? CurrentView => t_view is { } v && v.Host == this && Volatile.Read(ref _views) is not null ? v : null;

    /// <summary>The view a vCPU sees (0 when altp2m is off).</summary>
    public int VcpuView(int vcpu) => Altp2mActive && (uint)vcpu < (uint)_vcpuView.Length ? Volatile.Read(ref _vcpuView[vcpu]) : 0;

    /// <summary>Turns altp2m on (every vCPU in view 0) or off (every view goes); false when it already was so.</summary>
    public bool SetAltp2mActive(bool on, int vcpus)
    {
        lock (_lock)
        {
            if (on == (_views is not null))
                return false;
            if (on)
            {
                _vcpuView = new int[vcpus];
                Volatile.Write(ref _views, new Altp2mView?[MAX_ALTP2M]);
                Interlocked.Increment(ref _restricted);
            }
            else
            {
                Volatile.Write(ref _views, null);
                Interlocked.Decrement(ref _restricted);
            }
            Interlocked.Increment(ref _generation);
            return true;
        }
    }

    /// <summary>p2m_init_next_altp2m: the first free view from 1 on; -EINVAL when all are taken.</summary>
    public long CreateView(byte defaultAccess, out int index)
    {
        index = 0;
        lock (_lock)
        {
            var views = _views;
            if (views is null)
                return -Errno.EOPNOTSUPP;
            for (int i = 1; i < views.Length; i++)
            {
                if (views[i] is not null)
                    continue;
                views[i] = new Altp2mView(this, i, defaultAccess);
                index = i;
                return 0;
            }
            return -Errno.EINVAL;
        }
    }

    /// <summary>p2m_destroy_altp2m_by_id: -EBUSY for view 0, a view that does not exist, or one a vCPU still sees.</summary>
    public long DestroyView(int index)
    {
        lock (_lock)
        {
            var views = _views;
            if (views is null || index <= 0 || index >= views.Length || views[index] is null)
                return -Errno.EBUSY;
            if (Array.IndexOf(_vcpuView, index) >= 0)
                return -Errno.EBUSY;
            views[index] = null;
            return 0;
        }
    }

    /// <summary>A view's default access, null when it does not exist (or is view 0).</summary>
    public byte? ViewDefaultAccess(int index) => _views is { } views && index > 0 && index < views.Length ? views[index]?.DefaultAccess : null;

    private bool ViewExists(int index) => _views is { } views && (uint)index < (uint)views.Length && (index == 0 || views[index] is not null);

    /// <summary>p2m_switch_domain_altp2m_by_id: every vCPU to one view; false when it does not exist.</summary>
    public bool SwitchAll(int index)
    {
        lock (_lock)
        {
            if (!ViewExists(index))
                return false;
            for (int i = 0; i < _vcpuView.Length; i++)
                Volatile.Write(ref _vcpuView[i], index);
            Interlocked.Increment(ref _generation);
            return true;
        }
    }

    /// <summary>p2m_switch_vcpu_altp2m_by_id (a vm_event response's VM_EVENT_FLAG_ALTERNATE_P2M); false when the view
    /// does not exist.</summary>
    public bool SwitchVcpu(int vcpu, int index)
    {
        lock (_lock)
        {
            if (!ViewExists(index) || (uint)vcpu >= (uint)_vcpuView.Length)
                return false;
            if (_vcpuView[vcpu] != index)
            {
                Volatile.Write(ref _vcpuView[vcpu], index);
                // Decoded code and translations are the domain's: none made under the old view may stay.
                Interlocked.Increment(ref _generation);
            }
            return true;
        }
    }

    /// <summary>p2m_set_altp2m_mem_access: the access of one gfn in a view. -EINVAL for a view that does not exist,
    /// -ESRCH for a gfn the view has no entry for whose host entry is not writable RAM.</summary>
    public long SetViewAccess(int index, ulong gfn, byte access)
    {
        lock (_lock)
        {
            if (!ViewExists(index) || index == 0)
                return -Errno.EINVAL;
            var view = _views![index]!;
            if (!view.TryGet(gfn, out var e))
            {
                if (!TryLookupEntry(gfn, out ulong host) || (P2mType)(byte)host != P2mType.RamRw)
                    return -Errno.ESRCH;
                e = new Altp2mView.Entry(gfn, access);
            }
            view.Set(gfn, e with { Access = access });
            Interlocked.Increment(ref _generation);
            return 0;
        }
    }

    /// <summary>The access of one gfn in a view (the host's where the view has no entry); -ESRCH when neither has one.</summary>
    public long GetViewAccess(int index, ulong gfn, out byte access)
    {
        access = 0;
        lock (_lock)
        {
            if (!ViewExists(index) || index == 0)
                return -Errno.EINVAL;
            if (_views![index]!.TryGet(gfn, out var e))
            {
                access = e.Access;
                return 0;
            }
        }
        return TryGetAccess(gfn, out access) ? 0 : -Errno.ESRCH;
    }

    /// <summary>p2m_change_altp2m_gfn: in a view, <paramref name="oldGfn"/> shows the frame (and access) that
    /// <paramref name="newGfn"/> has there; <paramref name="newGfn"/> ~0 takes the view's entry away again.</summary>
    public long ChangeGfn(int index, ulong oldGfn, ulong newGfn)
    {
        lock (_lock)
        {
            if (!ViewExists(index) || index == 0)
                return -Errno.EINVAL;
            var view = _views![index]!;
            if (newGfn == ulong.MaxValue)
                view.Remove(oldGfn);
            else
            {
                // Both ends must be RAM, in the view or in the host p2m.
                if (!view.TryGet(oldGfn, out _) && !IsRam(oldGfn))
                    return -Errno.ESRCH;
                Altp2mView.Entry to;
                if (view.TryGet(newGfn, out var e))
                    to = e;
                else if (IsRam(newGfn) && TryGetAccess(newGfn, out byte a))
                    to = new Altp2mView.Entry(newGfn, a);
                else
                    return -Errno.ESRCH;
                view.Set(oldGfn, to);
            }
            Interlocked.Increment(ref _generation);
            return 0;
        }
    }

    private bool IsRam(ulong gfn) => TryLookupEntry(gfn, out ulong e) && IsAccessType((P2mType)(byte)e);

    /// <summary>Where the engine's access to <paramref name="gfn"/> goes, and what it may not do there, in the view the
    /// current pCPU thread's vCPU sees.</summary>
    private ulong ResolveForEngine(ulong gfn, out uint denied)
    {
        if (CurrentView is { } view && view.TryGet(gfn, out var e))
        {
            denied = (uint)(~e.Access & 7);
            return e.Target;
        }
        denied = DeniedAccess(gfn);
        return gfn;
    }

    /// <summary>What the running vCPU may not do at <paramref name="gfn"/> in the view it sees (MEM_ACCESS_R/W/X).</summary>
    public uint EngineDeniedAccess(ulong gfn)
    {
        ResolveForEngine(gfn, out uint denied);
        return denied;
    }

    private byte* RestrictedGetPage(ulong gfn, bool write, bool forWriteCache)
    {
        ulong target = ResolveForEngine(gfn, out uint denied);
        if ((denied & (write ? VmEvent.MEM_ACCESS_W : VmEvent.MEM_ACCESS_R)) != 0)
            return null;
        return forWriteCache ? GetPageForWriteCache(target) : GetPage(target, write, mayUnshare: true);
    }
}
