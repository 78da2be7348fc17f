using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using XenSharp.Public;
using static XenSharp.Public.Trace;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// Xen's trace buffers (common/trace.c), which `xentrace` drains: one buffer per pCPU of a size set once, described
/// by a t_info page that lists each buffer's frames. They live in a memfd of their own whose frames Domain-0 maps as
/// DOMID_XEN's, numbered from <see cref="BaseMfn"/>, above machine memory. Each pCPU writes its own buffer as a
/// ring of t_rec records (prod and cons run modulo twice the data size, as Xen keeps them), counts what did not fit
/// and says so with TRC_LOST_RECORDS once there is room, and raises VIRQ_TBUF when a buffer is half full.
/// </summary>
internal sealed unsafe class TraceBuffers : IDisposable
{
    private const int PageSize = 4096;
    /// <summary>struct t_buf: cons, prod.</summary>
    private const int HeaderBytes = 8;

    private readonly HostServices _host;
    private readonly object _lock = new();
    private readonly int _cpus;
    private SafeFileHandle? _file;
    private byte* _map;
    private long _bytes;
    private int _pagesPerCpu, _infoPages;
    private uint[] _lost = [];
    private bool[] _cpuMask;
    private object[] _cpuLocks;

    public TraceBuffers(HostServices host, int cpus, ulong baseMfn)
    {
        _host = host;
        _cpus = cpus;
        BaseMfn = baseMfn;
        _cpuMask = Enumerable.Repeat(true, cpus).ToArray();
        _cpuLocks = Enumerable.Range(0, cpus).Select(_ => new object()).ToArray();
    }

    /// <summary>The machine frame of the first t_info page.</summary>
    public ulong BaseMfn { get; }

    /// <summary>Records are written (tb_init_done): checked before any record is built.</summary>
    public volatile bool Enabled;

    public uint EventMask { get; private set; } = TRC_ALL;

    private int DataBytes => _pagesPerCpu * PageSize - HeaderBytes;

    // ---- XEN_SYSCTL_tbuf_op ----

    /// <summary>Allocates <paramref name="pages"/> per pCPU; the size is set once, as Xen's buffers cannot be reallocated.</summary>
    public long SetSize(uint pages)
    {
        lock (_lock)
        {
            if (_file != null)
                return pages == _pagesPerCpu ? 0 : -Errno.EINVAL;
            // Each buffer's frames are listed as uint32s in t_info, whose sizes are 16-bit.
            if (pages == 0 || pages > ushort.MaxValue || (ulong)pages * (ulong)_cpus > 1UL << 20)
                return -Errno.EINVAL;
            int first = FirstListOffset();
            _infoPages = (first * 4 + _cpus * (int)pages * 4 + PageSize - 1) / PageSize;
            _bytes = ((long)_infoPages + (long)_cpus * pages) * PageSize;
            var file = HostMemory.CreateMemoryFile("xen-trace", out int errno);
            if (file is null)
                return -errno;
            byte* map = HostMemory.SetFileSize(file, _bytes) ? HostMemory.Reserve((ulong)_bytes) : null;
            if (map == null || !HostMemory.MapFileAt(map, (ulong)_bytes, file, 0))
            {
                if (map != null)
                    HostMemory.Release(map, (ulong)_bytes);
                file.Dispose();
                return -Errno.ENOMEM;
            }
            _pagesPerCpu = (int)pages;
            _lost = new uint[_cpus];
            // t_info: tbuf_size, then per pCPU the offset (in uint32s) of its frame list.
            *(ushort*)map = (ushort)pages;
            for (int c = 0; c < _cpus; c++)
            {
                int list = first + c * (int)pages;
                ((ushort*)map)[1 + c] = (ushort)list;
                for (int p = 0; p < pages; p++)
                    ((uint*)map)[list + p] = (uint)(BaseMfn + (ulong)_infoPages + (ulong)c * pages + (ulong)p);
            }
            _map = map;
            _file = file;
            _host.Log($"xentrace: {_cpus} trace buffers of {pages} pages allocated");
            return 0;
        }
    }

    /// <summary>Where the first frame list starts in t_info, in uint32s: after tbuf_size and one offset per pCPU.</summary>
    private int FirstListOffset() => (2 + 2 * _cpus + 3) / 4;

    public long Enable()
    {
        lock (_lock)
        {
            if (_file == null)
                return -Errno.EINVAL;
            Enabled = true;
            return 0;
        }
    }

    public void Disable() => Enabled = false;

    /// <summary>XEN_SYSCTL_TBUFOP_get_info: the event mask, t_info's first frame and t_info's size in bytes (0 before any size is set).</summary>
    public (uint EventMask, ulong Mfn, uint Size) Info()
    {
        lock (_lock)
            return (EventMask, _file == null ? 0 : BaseMfn, (uint)(_infoPages * PageSize));
    }

    public void SetEventMask(uint mask) => EventMask = mask;

    public void SetCpuMask(ReadOnlySpan<bool> cpus)
    {
        var mask = new bool[_cpus];
        for (int c = 0; c < _cpus; c++)
            mask[c] = c < cpus.Length && cpus[c];
        _cpuMask = mask;
    }

    /// <summary>Where frame <paramref name="mfn"/> of DOMID_XEN lies in the buffers' memfd, or -EINVAL when it is not a trace frame.</summary>
    public long OffsetOf(ulong mfn, out SafeFileHandle? file)
    {
        lock (_lock)
        {
            file = _file;
            if (file == null || mfn < BaseMfn || mfn >= BaseMfn + (ulong)(_bytes / PageSize))
                return -Errno.EINVAL;
            return (long)(mfn - BaseMfn) * PageSize;
        }
    }

    // ---- records ----

    /// <summary>Writes a record on pCPU <paramref name="cpu"/>'s buffer, stamped with <paramref name="tsc"/>.</summary>
    public void Record(int cpu, uint evt, ulong tsc, ReadOnlySpan<uint> extra)
    {
        if (!Enabled || !Wanted(evt) || (uint)cpu >= (uint)_cpus || !_cpuMask[cpu] || extra.Length > TRACE_EXTRA_MAX)
            return;
        lock (_cpuLocks[cpu])
        {
            byte* buf = _map;
            if (buf == null)
                return;
            buf += (long)(_infoPages + cpu * _pagesPerCpu) * PageSize;
            uint* cons = (uint*)buf, prod = cons + 1;
            uint ds = (uint)DataBytes;
            uint p = Volatile.Read(ref *prod), c = Volatile.Read(ref *cons);
            uint used = p >= c ? p - c : p + 2 * ds - c;
            uint size = RecordBytes(extra.Length);
            uint lostSize = _lost[cpu] > 0 ? RecordBytes(1) : 0;
            if (used + lostSize + size > ds)
            {
                _lost[cpu]++;
                return;
            }
            Span<uint> lostExtra = [_lost[cpu]];
            if (lostSize > 0)
            {
                p = Put(buf + HeaderBytes, ds, p, TRC_LOST_RECORDS, tsc, lostExtra);
                _lost[cpu] = 0;
            }
            p = Put(buf + HeaderBytes, ds, p, evt, tsc, extra);
            Volatile.Write(ref *prod, p);
            // The reader is told once a buffer passes half full, as Xen's trace_notify_dom0.
            uint now = used + lostSize + size;
            if (used < ds / 2 && now >= ds / 2)
                _host.Dom0.Evtchn.SendVirq(null, Xen.VIRQ_TBUF);
        }
    }

    // ---- the scheduler's events (Xen's sched/core.c records) ----

    private ulong Tsc(long ns) => _host.Time.ReadTsc(ns);

    private static uint DomVcpu(Vcpu v) => (uint)v.Id | (uint)v.Domain.DomainId << 16;

    /// <summary>A vCPU starts running on <paramref name="cpu"/>: its runstate leaves runnable, the pCPU leaves idle.</summary>
    public void SwitchIn(int cpu, Vcpu v, long ns)
    {
        ulong tsc = Tsc(ns);
        Record(cpu, TRC_SCHED_RUNSTATE_CHANGE | (uint)Runstate.Runnable << 8 | (uint)Runstate.Running << 4, tsc, [DomVcpu(v)]);
        Record(cpu, TRC_SCHED_SWITCH, tsc, [DOMID_IDLE, (uint)cpu, v.Domain.DomainId, (uint)v.Id]);
    }

    /// <summary>The vCPU's slice on <paramref name="cpu"/> ended in <paramref name="after"/>; the pCPU is idle until the next.</summary>
    public void SwitchOut(int cpu, Vcpu v, Runstate after, long ns)
    {
        ulong tsc = Tsc(ns);
        Record(cpu, TRC_SCHED_RUNSTATE_CHANGE | (uint)Runstate.Running << 8 | ((uint)after & 3) << 4, tsc, [DomVcpu(v)]);
        Record(cpu, TRC_SCHED_SWITCH, tsc, [v.Domain.DomainId, (uint)v.Id, DOMID_IDLE, (uint)cpu]);
    }

    /// <summary>A domain joins or leaves the scheduler (recorded on pCPU 0, as the toolstack's call would be).</summary>
    public void DomainEvent(uint evt, ushort domid)
    {
        if (Enabled)
            Record(0, evt, Tsc(_host.Time.NowNs), [domid]);
    }

    /// <summary>The mask selects classes (bits 16-27) and, within them, subclasses (bits 12-15): an event needs both.</summary>
    private bool Wanted(uint evt)
    {
        uint mask = EventMask;
        return (mask >> 16 & evt >> 16 & 0xfff) != 0 && (mask >> 12 & evt >> 12 & 0xf) != 0;
    }

    private static uint RecordBytes(int extras) => (uint)(4 + 8 + 4 * extras);

    /// <summary>Writes one t_rec (header with extra_u32 and cycles_included, the TSC, the extras) at <paramref name="p"/>,
    /// wrapping byte-wise: xentrace copies the window in two pieces, so a record may straddle the end.</summary>
    private static uint Put(byte* data, uint ds, uint p, uint evt, ulong tsc, ReadOnlySpan<uint> extra)
    {
        Span<uint> words = stackalloc uint[3 + TRACE_EXTRA_MAX];
        words[0] = (evt & 0x0fffffff) | ((uint)extra.Length << TRACE_EXTRA_SHIFT) | 0x80000000u;
        words[1] = (uint)tsc;
        words[2] = (uint)(tsc >> 32);
        extra.CopyTo(words[3..]);
        var bytes = MemoryMarshal.AsBytes(words[..(3 + extra.Length)]);
        uint at = p % ds;
        for (int i = 0; i < bytes.Length; i++)
            data[(at + i) % ds] = bytes[i];
        return (uint)((p + (uint)bytes.Length) % (2 * ds));
    }

    public void Dispose()
    {
        lock (_lock)
        {
            Enabled = false;
            if (_map != null)
                HostMemory.Release(_map, (ulong)_bytes);
            _map = null;
            _file?.Dispose();
            _file = null;
        }
    }
}
