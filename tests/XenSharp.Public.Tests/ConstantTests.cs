using XenSharp.Public;
using XenSharp.Public.Io;

namespace XenSharp.Public.Tests;

public class ConstantTests
{
    [Fact]
    public void HypercallNumbersFollowXenH()
    {
        Assert.Equal(12, Xen.__HYPERVISOR_memory_op);
        Assert.Equal(17, Xen.__HYPERVISOR_xen_version);
        Assert.Equal(32, Xen.__HYPERVISOR_event_channel_op);
        Assert.Equal(34, Xen.__HYPERVISOR_hvm_op);
    }

    [Fact]
    public void RingSizeRoundsDownToPowerOfTwo()
    {
        // blkif: 112-byte entries in one page → 32 entries (4032/112 = 36, rounded down).
        Assert.Equal(32, Ring.Size(4096, 112));
        Assert.True(Ring.NeedNotify(5, 7, 6));
        Assert.False(Ring.NeedNotify(5, 7, 8));
    }
}
