using System.Runtime.InteropServices;
using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using static XenSharp.Public.Trace;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// The trace buffers as xentrace reads them: t_info's frame lists, the DOMID_XEN frames a Domain-0 program maps,
/// records in the ring (prod and cons modulo twice the data size, a record straddling the end), lost records
/// counted while the reader lags and reported once there is room, and the sysctl's errno.
/// </summary>
[Trait("Feature", "xentrace")]
public sealed unsafe class TraceBufferTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create(pcpus: 2);
    private TraceBuffers Trace => _host.Services.TraceBuffers;

    public void Dispose() => _host.Dispose();

    /// <summary>Maps DOMID_XEN frames the way xentrace does, through the foreign-frame call privcmd makes.</summary>
    private byte* Map(ulong firstMfn, int count)
    {
        var mfns = Enumerable.Range(0, count).Select(i => firstMfn + (ulong)i).ToArray();
        var offsets = new long[count];
        Assert.Equal(0, _host.Dom0ForeignFrames(Xen.DOMID_XEN, mfns, writable: true, offsets, out var memfd));
        Assert.All(offsets, o => Assert.True(o >= 0));
        for (int i = 1; i < count; i++)
            Assert.Equal(offsets[0] + i * 4096, offsets[i]);
        var p = (byte*)Mmap(0, (nuint)(count * 4096), 3, 1, (int)memfd!.DangerousGetHandle(), offsets[0]);
        memfd.DangerousRelease();
        Assert.NotEqual(-1, (nint)p);
        return p;
    }

    [DllImport("libc", EntryPoint = "mmap")]
    private static extern nint Mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [Fact]
    public void TinfoListsEachPcpusFramesAndTheRingWrapsAndCountsLosses()
    {
        Assert.Equal(-Errno.EINVAL, Trace.Enable());
        Assert.Equal(-Errno.EINVAL, Trace.SetSize(0));
        Assert.Equal(0, Trace.SetSize(1));
        Assert.Equal(-Errno.EINVAL, Trace.SetSize(2));
        var (_, mfn, size) = Trace.Info();
        Assert.Equal(4096u, size);
        var info = Map(mfn, 1);
        Assert.Equal(1, *(ushort*)info);
        ushort list0 = ((ushort*)info)[1], list1 = ((ushort*)info)[2];
        Assert.NotEqual(list0, list1);
        uint frame0 = ((uint*)info)[list0];
        Assert.Equal(frame0 + 1, ((uint*)info)[list1]);
        Assert.Equal(-Errno.EINVAL, _host.Dom0ForeignFrames(Xen.DOMID_XEN, [mfn - 1], writable: false, new long[1], out _));

        var buf = Map(frame0, 1);
        uint* cons = (uint*)buf, prod = cons + 1;
        const uint dataSize = 4096 - 8;
        Trace.Record(0, TRC_SCHED_SWITCH, 0x1234, [1, 2, 3, 4]);
        Assert.Equal(0u, *prod); // nothing is written while tracing is off
        Assert.Equal(0, Trace.Enable());
        Trace.Record(0, TRC_SCHED_SWITCH, 0x1_0000_1234, [1, 2, 3, 4]);
        Assert.Equal(28u, *prod);
        uint* rec = (uint*)(buf + 8);
        Assert.Equal(TRC_SCHED_SWITCH | 4u << 28 | 1u << 31, rec[0]);
        Assert.Equal((0x1234u, 1u), (rec[1], rec[2]));
        Assert.Equal(new uint[] { 1, 2, 3, 4 }, new[] { rec[3], rec[4], rec[5], rec[6] });

        // The reader does not move: records that do not fit are counted, not written.
        int fit = 1;
        while (*prod + 28 <= dataSize) { Trace.Record(0, TRC_SCHED_SWITCH, 1, [1, 2, 3, 4]); fit++; }
        uint full = *prod;
        for (int i = 0; i < 5; i++) Trace.Record(0, TRC_SCHED_SWITCH, 2, [1, 2, 3, 4]);
        Assert.Equal(full, *prod);

        // Once the reader has taken everything, the loss is reported first, then the record; both straddle the end.
        *cons = full;
        Trace.Record(0, TRC_SCHED_SWITCH, 3, [5, 6, 7, 8]);
        uint lost = full % dataSize;
        var data = buf + 8;
        uint Word(uint at) => BitConverter.ToUInt32([data[at % dataSize], data[(at + 1) % dataSize], data[(at + 2) % dataSize], data[(at + 3) % dataSize]]);
        Assert.Equal(TRC_LOST_RECORDS | 1u << 28 | 1u << 31, Word(lost));
        Assert.Equal(5u, Word(lost + 12));
        Assert.Equal(TRC_SCHED_SWITCH | 4u << 28 | 1u << 31, Word(lost + 16));
        Assert.Equal(8u, Word(lost + 16 + 24));
        Assert.Equal((full + 16 + 28) % (2 * dataSize), *prod);

        // pCPU 1's buffer was untouched; the event mask filters classes.
        Assert.Equal(0u, ((uint*)Map(frame0 + 1, 1))[1]);
        Trace.SetEventMask(TRC_HVM);
        uint before = *prod;
        Trace.Record(0, TRC_SCHED_SWITCH, 4, [1]);
        Assert.Equal(before, *prod);
    }
}
