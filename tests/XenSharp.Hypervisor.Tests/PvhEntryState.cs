using XenSharp.Cpu;

namespace XenSharp.Hypervisor.Tests;

/// <summary>The register state the tests start hand-assembled guest code in.</summary>
internal static class PvhEntryState
{
    /// <summary>PVH's 32-bit flat entry state (CR0.PE, flat code and data, a 32-bit TSS).</summary>
    public static SpecialRegisters Flat32()
    {
        var code = new Segment { Limit = 0xFFFFFFFF, Attributes = 0xC09B, Selector = 0x10 };
        var data = new Segment { Limit = 0xFFFFFFFF, Attributes = 0xC093, Selector = 0x18 };
        return new SpecialRegisters
        {
            Cs = code, Ds = data, Es = data, Fs = data, Gs = data, Ss = data,
            Tr = new Segment { Limit = 0x67, Attributes = 0x8B, Selector = 0x20 },
            Ldt = new Segment { Attributes = 0x82 },
            Cr0 = 0x11,
        };
    }
}
