using XenSharp.Public;
using XenSharp.Hypervisor.Common;
using static XenSharp.Public.Memory;

namespace XenSharp.Hypervisor.Tests;

/// <summary>XENMEM_exchange: frames traded chunk by chunk, nr_exchanged progress and Xen's errors.</summary>
[Trait("Feature", "Dynamic memory control")]
public class MemoryExchangeTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private const ulong InList = Guest.Scratch + 0x1000, OutList = Guest.Scratch + 0x2000;

    private static XenMemoryExchange Exchange(Guest g, ulong[] inGfns, uint inOrder, ulong[] outGfns, uint outOrder, uint outFlags = 0,
        ushort outDomid = Xen.DOMID_SELF)
    {
        for (int i = 0; i < inGfns.Length; i++)
            g.Write(InList + (ulong)i * 8, inGfns[i]);
        for (int i = 0; i < outGfns.Length; i++)
            g.Write(OutList + (ulong)i * 8, outGfns[i]);
        return new XenMemoryExchange
        {
            In = new XenMemoryReservation { ExtentStart = InList, NrExtents = (ulong)inGfns.Length, ExtentOrder = inOrder, Domid = Xen.DOMID_SELF },
            Out = new XenMemoryReservation { ExtentStart = OutList, NrExtents = (ulong)outGfns.Length, ExtentOrder = outOrder, MemFlags = outFlags, Domid = outDomid },
        };
    }

    private static long Run(Guest g, XenMemoryExchange x, out XenMemoryExchange after, out int pieces)
    {
        g.Write(Guest.Scratch, x);
        long rc = g.CallToCompletion(Xen.__HYPERVISOR_memory_op, XENMEM_exchange, Guest.Scratch, 0, out pieces);
        after = g.Read<XenMemoryExchange>(Guest.Scratch);
        return rc;
    }

    private static bool Mapped(Guest g, ulong gfn) => g.Domain.P2m.TryLookup(gfn, out _, out _);

    [Fact]
    public void ExchangedFramesAreFreshAndTheOldOnesGo()
    {
        var g = new Guest(_host, ramMiB: 4, maxMiB: 8);
        g.Write(0x100000, 0x1111UL);
        g.Write(0x101000, 0x2222UL);
        long tot = g.Domain.TotPages;
        g.Domain.P2m.TryLookup(0x100, out uint oldMfn, out _);

        var x = Exchange(g, [0x100, 0x101], 0, [0x500, 0x501], 0);
        Assert.Equal(0, Run(g, x, out var after, out _));
        Assert.Equal(2UL, after.NrExchanged);
        Assert.False(Mapped(g, 0x100));
        Assert.False(Mapped(g, 0x101));
        Assert.Equal(0UL, g.Read<ulong>(0x500000));
        Assert.Equal(0UL, g.Read<ulong>(0x501000));
        Assert.Equal(tot, g.Domain.TotPages);
        Assert.NotEqual(oldMfn, g.Domain.P2m.TryLookup(0x500, out uint newMfn, out _) ? newMfn : oldMfn);
        // A translated guest's output list keeps its GFNs.
        Assert.Equal(0x500UL, g.Read<ulong>(OutList));
    }

    [Fact]
    public void ExtentOrdersMakeChunks()
    {
        var g = new Guest(_host, ramMiB: 4, maxMiB: 8);
        // Four single pages become one order-2 extent, and back.
        var x = Exchange(g, [0x100, 0x101, 0x102, 0x103], 0, [0x600], 2);
        Assert.Equal(0, Run(g, x, out var after, out _));
        Assert.Equal(4UL, after.NrExchanged);
        for (ulong p = 0; p < 4; p++)
            Assert.True(Mapped(g, 0x600 + p));
        x = Exchange(g, [0x600], 2, [0x100, 0x101, 0x102, 0x103], 0);
        Assert.Equal(0, Run(g, x, out after, out _));
        Assert.Equal(1UL, after.NrExchanged);
        Assert.False(Mapped(g, 0x600));
        Assert.True(Mapped(g, 0x103));
    }

    [Fact]
    public void FailureReportsTheExtentsDoneAndLeavesTheRestAlone()
    {
        var g = new Guest(_host, ramMiB: 4, maxMiB: 8);
        g.Write(0x102000, 0xABCDUL);
        // The second input GFN has no RAM: the first extent is exchanged, the third is untouched.
        var x = Exchange(g, [0x100, 0x5000, 0x102], 0, [0x500, 0x501, 0x502], 0);
        Assert.Equal(-Errno.EINVAL, Run(g, x, out var after, out _));
        Assert.Equal(1UL, after.NrExchanged);
        Assert.True(Mapped(g, 0x500));
        Assert.False(Mapped(g, 0x501));
        Assert.Equal(0xABCDUL, g.Read<ulong>(0x102000));

        // The caller resumes from nr_exchanged once the problem is fixed.
        g.Write(InList + 8, 0x101UL);
        Assert.Equal(0, Run(g, after, out after, out _));
        Assert.Equal(3UL, after.NrExchanged);
        Assert.False(Mapped(g, 0x102));
        Assert.True(Mapped(g, 0x502));
    }

    [Fact]
    public void AddressBitsTooNarrowIsOutOfMemoryAndChangesNothing()
    {
        var g = new Guest(_host, ramMiB: 4, maxMiB: 8);
        long free = (long)_host.GetHostInfo().FreeMemoryBytes;
        var x = Exchange(g, [0x100], 0, [0x500], 0, outFlags: 12);
        Assert.Equal(-Errno.ENOMEM, Run(g, x, out var after, out _));
        Assert.Equal(0UL, after.NrExchanged);
        Assert.True(Mapped(g, 0x100));
        Assert.False(Mapped(g, 0x500));
        Assert.Equal(free, (long)_host.GetHostInfo().FreeMemoryBytes);
        // Wide enough for the whole machine: it works.
        x = Exchange(g, [0x100], 0, [0x500], 0, outFlags: 40);
        Assert.Equal(0, Run(g, x, out after, out _));
        Assert.Equal(1UL, after.NrExchanged);
    }

    [Fact]
    public void InconsistentRequestsAreInvalid()
    {
        var g = new Guest(_host, ramMiB: 4, maxMiB: 8);
        // Sizes differ.
        Assert.Equal(-Errno.EINVAL, Run(g, Exchange(g, [0x100, 0x101], 0, [0x500], 0), out var after, out _));
        Assert.Equal(0UL, after.NrExchanged);
        // Domains differ.
        Assert.Equal(-Errno.EINVAL, Run(g, Exchange(g, [0x100], 0, [0x500], 0, outDomid: g.Id), out _, out _));
        // nr_exchanged beyond the input.
        var x = Exchange(g, [0x100], 0, [0x500], 0);
        x.NrExchanged = 5;
        Assert.Equal(-Errno.EINVAL, Run(g, x, out after, out _));
        Assert.Equal(5UL, after.NrExchanged);
        // An order above what a domU may ask.
        Assert.Equal(-Errno.EPERM, Run(g, Exchange(g, [0x200], 10, [0x200], 10), out _, out _));
        // A continuation start in the command.
        g.Write(Guest.Scratch, Exchange(g, [0x100], 0, [0x500], 0));
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_exchange | (1UL << MEMOP_EXTENT_SHIFT), Guest.Scratch));
        // The argument structure itself is unreadable.
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_exchange, Guest.Bad));
        // A frame another party holds cannot be traded.
        using (var m = _host.Dom0Services.MapGuestFrame(g.Id, 0x100))
            Assert.Equal(-Errno.EINVAL, Run(g, Exchange(g, [0x100], 0, [0x500], 0), out _, out _));
        Assert.True(Mapped(g, 0x100));
    }

    [Fact]
    public void OtherDomainsNeedPrivilege()
    {
        var a = new Guest(_host);
        var b = new Guest(_host);
        var x = Exchange(a, [0x100], 0, [0x500], 0);
        x.In.Domid = x.Out.Domid = b.Id;
        Assert.Equal(-Errno.EPERM, Run(a, x, out _, out _));
        x.In.Domid = x.Out.Domid = 0x7000;
        Assert.Equal(-Errno.ESRCH, Run(a, x, out _, out _));
    }

    [Fact]
    public void LongExchangesYieldWithTheirProgressRecorded()
    {
        var g = new Guest(_host, ramMiB: 4, maxMiB: 8);
        int n = 3 * Hypercall.PreemptBudget / 2;
        var ins = Enumerable.Range(0, n).Select(i => 0x100UL + (ulong)i).ToArray();
        var outs = Enumerable.Range(0, n).Select(i => 0x800UL + (ulong)i).ToArray();
        var x = Exchange(g, ins, 0, outs, 0);
        g.Write(Guest.Scratch, x);
        var v = g.Vcpu();
        v.Continuation = null;
        Assert.Equal(0, Hypercall.Dispatch(v, Xen.__HYPERVISOR_memory_op, new HypercallArgs(XENMEM_exchange, Guest.Scratch)));
        Assert.NotNull(v.Continuation);
        Assert.Equal((ulong)Hypercall.PreemptBudget, g.Read<XenMemoryExchange>(Guest.Scratch).NrExchanged);
        v.Continuation = null;

        Assert.Equal(0, g.CallToCompletion(Xen.__HYPERVISOR_memory_op, XENMEM_exchange, Guest.Scratch, 0, out int pieces));
        Assert.Equal(1, pieces);
        Assert.Equal((ulong)n, g.Read<XenMemoryExchange>(Guest.Scratch).NrExchanged);
        Assert.True(Mapped(g, 0x800 + (ulong)n - 1));
    }
}
