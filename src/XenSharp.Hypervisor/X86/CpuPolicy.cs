using XenSharp.Cpu;
using XenSharp.Public;
using static XenSharp.Public.Domctl;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// The serialised CPU policy of the control ABI (xen_cpuid_leaf_t and xen_msr_entry_t arrays, as Xen's
/// x86_cpuid_copy_to_buffer / x86_msr_copy_to_buffer write them and libxenguest reads them back): which leaves and
/// subleaves exist, how many, and which a caller may send. The leaves are what a vCPU's CPUID answers.
/// </summary>
internal static class CpuPolicy
{
    // Xen 4.17's policy array sizes (CPUID_GUEST_NR_*): a leaf or subleaf past them is not part of a policy.
    public const uint NrBasic = 0xD + 1, NrCache = 5 + 1, NrFeat = 2 + 1, NrTopo = 1 + 1, NrXstate = 62 + 1, NrExtd = 0x21 + 1;

    /// <summary>CPUID_MAX_SERIALISED_LEAVES: every basic leaf, the subleaves beyond the first of the leaves that have
    /// them, every extended leaf, and the two hypervisor-limit leaves.</summary>
    public const uint MaxLeaves = NrBasic + (NrFeat - 1) + (NrCache - 1) + (NrTopo - 1) + (NrXstate - 1) + NrExtd + 2;

    /// <summary>MSR_MAX_SERIALISED_ENTRIES: MSR_INTEL_PLATFORM_INFO and MSR_ARCH_CAPABILITIES.</summary>
    public const uint MaxMsrs = 2;
    public const uint MsrPlatformInfo = 0xCE, MsrArchCapabilities = 0x10A;

    /// <summary>The feature words of a featureset (FEATURESET_1d ... FEATURESET_m10Ah), in Xen 4.17's order.</summary>
    public const int FeaturesetWords = 18;

    /// <summary>Serialises <paramref name="cpuid"/> in Xen's order: basic leaves up to the lower of leaf 0's limit and
    /// 0xD (leaf 4 and 0xB until a null subleaf, leaf 7 up to its subleaf limit, leaf 0xD's subleaves 0 and 1 and
    /// then one per state component XCR0|XSS names), the hypervisor limits, then the extended leaves.</summary>
    public static List<XenCpuidLeaf> Serialise(ICpuidPolicy cpuid)
    {
        var leaves = new List<XenCpuidLeaf>((int)MaxLeaves);
        void Add(uint leaf, uint subleaf)
        {
            cpuid.Cpuid(leaf, subleaf == XEN_CPUID_NO_SUBLEAF ? 0 : subleaf, out uint a, out uint b, out uint c, out uint d);
            leaves.Add(new XenCpuidLeaf { Leaf = leaf, Subleaf = subleaf, A = a, B = b, C = c, D = d });
        }

        cpuid.Cpuid(0, 0, out uint maxBasic, out _, out _, out _);
        for (uint leaf = 0; leaf <= Math.Min(maxBasic, NrBasic - 1); leaf++)
        {
            switch (leaf)
            {
                case 4:
                case 0xB:
                    for (uint sub = 0; sub < (leaf == 4 ? NrCache : NrTopo); sub++)
                    {
                        Add(leaf, sub);
                        var last = leaves[^1];
                        // The type field: cache type in EAX[4:0], level type in ECX[15:8]; 0 ends the list.
                        if ((leaf == 4 ? last.A & 0x1F : (last.C >> 8) & 0xFF) == 0)
                            break;
                    }
                    break;
                case 7:
                    cpuid.Cpuid(7, 0, out uint maxSub, out _, out _, out _);
                    for (uint sub = 0; sub <= Math.Min(maxSub, NrFeat - 1); sub++)
                        Add(7, sub);
                    break;
                case 0xD:
                {
                    cpuid.Cpuid(0xD, 0, out uint xcr0Lo, out _, out _, out uint xcr0Hi);
                    cpuid.Cpuid(0xD, 1, out _, out _, out uint xssLo, out uint xssHi);
                    ulong states = ((ulong)(xcr0Hi | xssHi) << 32) | xcr0Lo | xssLo;
                    Add(0xD, 0);
                    Add(0xD, 1);
                    uint sub = 2;
                    for (states >>= 2; states != 0 && sub < NrXstate; states >>= 1, sub++)
                        Add(0xD, sub);
                    break;
                }
                default:
                    Add(leaf, XEN_CPUID_NO_SUBLEAF);
                    break;
            }
        }
        // Xen's policy keeps no hypervisor leaves but their limits, which it leaves at 0 (Xen picks them itself).
        leaves.Add(new XenCpuidLeaf { Leaf = 0x40000000, Subleaf = XEN_CPUID_NO_SUBLEAF });
        leaves.Add(new XenCpuidLeaf { Leaf = 0x40000100, Subleaf = XEN_CPUID_NO_SUBLEAF });
        cpuid.Cpuid(0x80000000, 0, out uint maxExtd, out _, out _, out _);
        if ((maxExtd & 0xFFFF0000) == 0x80000000)
            for (uint leaf = 0; leaf <= Math.Min(maxExtd & 0xFFFF, NrExtd - 1); leaf++)
                Add(0x80000000 | leaf, XEN_CPUID_NO_SUBLEAF);
        return leaves;
    }

    /// <summary>The MSRs of a policy, read from <paramref name="vcpu"/> (0 for one the engine does not have).</summary>
    public static XenMsrEntry[] SerialiseMsrs(IVcpu? vcpu)
    {
        ulong platformInfo = 0, archCaps = 0;
        if (vcpu is not null)
        {
            vcpu.TryGetMsr(MsrPlatformInfo, out platformInfo);
            vcpu.TryGetMsr(MsrArchCapabilities, out archCaps);
        }
        return [new XenMsrEntry { Idx = MsrPlatformInfo, Val = platformInfo }, new XenMsrEntry { Idx = MsrArchCapabilities, Val = archCaps }];
    }

    /// <summary>The checks of Xen's x86_cpuid_copy_from_buffer: -E2BIG for more than <see cref="MaxLeaves"/>, -ERANGE
    /// naming the first leaf or subleaf that no policy has. Returns 0 when every leaf has a place.</summary>
    public static long CheckLeaves(ReadOnlySpan<XenCpuidLeaf> leaves, out uint errLeaf, out uint errSubleaf)
    {
        errLeaf = errSubleaf = uint.MaxValue;
        if ((uint)leaves.Length > MaxLeaves)
            return -Errno.E2BIG;
        foreach (var l in leaves)
        {
            bool ok = l.Leaf switch
            {
                4 => l.Subleaf < NrCache,
                7 => l.Subleaf < NrFeat,
                0xB => l.Subleaf < NrTopo,
                0xD => l.Subleaf < NrXstate,
                < NrBasic => l.Subleaf == XEN_CPUID_NO_SUBLEAF,
                0x40000000 or 0x40000100 => l.Subleaf == XEN_CPUID_NO_SUBLEAF,
                >= 0x80000000 and < 0x80000000 + NrExtd => l.Subleaf == XEN_CPUID_NO_SUBLEAF,
                _ => false,
            };
            if (!ok)
            {
                (errLeaf, errSubleaf) = (l.Leaf, l.Subleaf);
                return -Errno.ERANGE;
            }
        }
        return 0;
    }

    /// <summary>Xen's check that a domain's policy fits what the host can give (x86_cpu_policies_are_compatible):
    /// the vendor is the host's and no feature word asks for a bit the host's policy lacks. -EINVAL names the leaf.</summary>
    public static long CheckCompatible(ReadOnlySpan<XenCpuidLeaf> leaves, ICpuidPolicy host, out uint errLeaf, out uint errSubleaf)
    {
        errLeaf = errSubleaf = uint.MaxValue;
        foreach (var l in leaves)
        {
            uint sub = l.Subleaf == XEN_CPUID_NO_SUBLEAF ? 0 : l.Subleaf;
            host.Cpuid(l.Leaf, sub, out uint a, out uint b, out uint c, out uint d);
            bool ok = (l.Leaf, l.Subleaf) switch
            {
                (0, _) => l.B == b && l.C == c && l.D == d && l.A <= Math.Max(a, NrBasic - 1),
                // Feature words: a subset of the host's (the toolstack may only take features away). Leaf 1's ECX
                // hypervisor bit and EDX APIC bit are Xen's own, and EDX HTT is topology the toolstack states
                // for HVM guests (APIC IDs of 2 × vCPU id), which Xen's maximum policy allows.
                (1, _) => (l.C & ~(c | 1u << 31)) == 0 && (l.D & ~(d | 1u << 9 | 1u << 28)) == 0,
                (7, 0) => (l.B & ~b) == 0 && (l.C & ~c) == 0 && (l.D & ~d) == 0,
                (0x80000001, _) => (l.C & ~c) == 0 && (l.D & ~d) == 0,
                _ => true,
            };
            if (!ok)
            {
                (errLeaf, errSubleaf) = (l.Leaf, l.Subleaf);
                return -Errno.EINVAL;
            }
        }
        return 0;
    }

    /// <summary>A featureset (the feature words libxenguest works in) of <paramref name="cpuid"/>.</summary>
    public static uint[] Featureset(ICpuidPolicy cpuid, IVcpu? vcpu)
    {
        var fs = new uint[FeaturesetWords];
        cpuid.Cpuid(1, 0, out _, out _, out fs[1], out fs[0]);
        cpuid.Cpuid(0x80000001, 0, out _, out _, out fs[3], out fs[2]);
        cpuid.Cpuid(0xD, 1, out fs[4], out _, out _, out _);
        cpuid.Cpuid(7, 0, out uint max7, out fs[5], out fs[6], out fs[9]);
        cpuid.Cpuid(0x80000007, 0, out _, out _, out _, out fs[7]);
        cpuid.Cpuid(0x80000008, 0, out _, out fs[8], out _, out _);
        if (max7 >= 1)
            cpuid.Cpuid(7, 1, out fs[10], out fs[12], out fs[14], out fs[15]);
        if (max7 >= 2)
            cpuid.Cpuid(7, 2, out _, out _, out _, out fs[13]);
        cpuid.Cpuid(0x80000000, 0, out uint maxExtd, out _, out _, out _);
        if (maxExtd >= 0x80000021)
            cpuid.Cpuid(0x80000021, 0, out fs[11], out _, out _, out _);
        if (vcpu is not null && vcpu.TryGetMsr(MsrArchCapabilities, out ulong caps))
            (fs[16], fs[17]) = ((uint)caps, (uint)(caps >> 32));
        return fs;
    }
}

/// <summary>
/// A domain's CPU policy as XEN_DOMCTL_set_cpu_policy left it, applied by each vCPU's CPUID over what the engine
/// offers: the basic and extended leaf limits (a leaf past them reads as zeros, as Xen's guest_cpuid answers) and the
/// feature words (Xen's featureset: leaf 1 ECX/EDX, 7.0 EBX/ECX/EDX, 7.1 EAX, 7.2 EDX, 0xD.1 EAX, 0x80000001
/// ECX/EDX, 0x80000007 EDX, 0x80000008 EBX, 0x80000021 EAX), and 0xD.0's XCR0 bits. Set-policy checks the policy
/// against the engine's maximum first, so each word is a subset of it; here they only take bits away, which keeps
/// what is per-vCPU or dynamic (APIC IDs, the APIC bit, OSXSAVE, the hypervisor bit, XSAVE sizes) the engine's. A
/// hidden feature hides those built on it, as Xen's deep dependencies do. Leaves the toolstack did not send keep
/// their previous values, as Xen updates a domain's policy leaf by leaf.
/// </summary>
internal sealed class DomainCpuPolicy
{
    private readonly Dictionary<(uint Leaf, uint Subleaf), XenCpuidLeaf> _leaves;

    private DomainCpuPolicy(Dictionary<(uint, uint), XenCpuidLeaf> leaves) => _leaves = leaves;

    /// <summary>A feature bit: its leaf, subleaf (XEN_CPUID_NO_SUBLEAF for a leaf without), register (0-3 for
    /// EAX, EBX, ECX, EDX) and bit.</summary>
    private readonly record struct Feature(uint Leaf, uint Subleaf, int Reg, int Bit);

    private static Feature L1C(int bit) => new(1, XEN_CPUID_NO_SUBLEAF, 2, bit);
    private static Feature L1D(int bit) => new(1, XEN_CPUID_NO_SUBLEAF, 3, bit);
    private static Feature L7B(int bit) => new(7, 0, 1, bit);
    private static Feature XsaveSub1(int bit) => new(0xD, 1, 0, bit);
    private static Feature E1C(int bit) => new(0x80000001, XEN_CPUID_NO_SUBLEAF, 2, bit);
    private static Feature E1D(int bit) => new(0x80000001, XEN_CPUID_NO_SUBLEAF, 3, bit);

    /// <summary>Features that make no sense without another (what Xen's sanitise_featureset clears with a hidden
    /// feature), among those the x86 engine can offer: the x87 for MMX, PAE for long mode and NX, FXSR for SSE, each
    /// SSE for the next, XSAVE for its sub-features and AVX, AVX for FMA, F16C and AVX2, NX for SMAP, long mode for
    /// CMPXCHG16B, PCIDs, LAHF in long mode and 1 GiB pages, the TSC for RDTSCP, PSE for PSE-36.</summary>
    private static readonly (Feature Needed, Feature[] By)[] Dependencies =
    [
        (L1D(0), [L1D(23)]),
        (L1D(3), [L1D(17)]),
        (L1D(4), [E1D(27)]),
        (L1D(6), [E1D(29), E1D(20)]),
        (L1D(24), [L1D(25)]),
        (L1D(25), [L1D(26)]),
        (L1D(26), [L1C(0), E1D(29), L1C(25), L1C(1)]),
        (L1C(0), [L1C(9)]),
        (L1C(9), [L1C(19)]),
        (L1C(19), [L1C(20)]),
        (L1C(26), [XsaveSub1(0), XsaveSub1(1), XsaveSub1(2), XsaveSub1(3), L1C(28)]),
        (L1C(28), [L1C(12), L1C(29), L7B(5)]),
        (E1D(20), [L7B(20)]),
        (E1D(29), [L1C(13), L1C(17), E1C(0), E1D(26)]),
    ];

    /// <summary>This policy (null for none yet) with <paramref name="leaves"/> written over it, and every feature
    /// that depends on one it hides hidden too.</summary>
    public static DomainCpuPolicy Merge(DomainCpuPolicy? previous, ReadOnlySpan<XenCpuidLeaf> leaves)
    {
        var merged = previous is null ? new Dictionary<(uint, uint), XenCpuidLeaf>() : new Dictionary<(uint, uint), XenCpuidLeaf>(previous._leaves);
        foreach (var l in leaves)
            merged[(l.Leaf, l.Subleaf)] = l;
        // A feature is hidden when its leaf is in the policy with the bit clear; a dependent whose leaf is not gets
        // an entry of all ones but that bit (the policy only takes bits away). Repeated until nothing changes, for
        // chains such as SSE2, SSE3, SSSE3.
        bool changed = true;
        while (changed)
        {
            changed = false;
            foreach (var (needed, by) in Dependencies)
            {
                if (!merged.TryGetValue((needed.Leaf, needed.Subleaf), out var l) || Register(l, needed.Reg, needed.Bit))
                    continue;
                foreach (var f in by)
                {
                    if (!merged.TryGetValue((f.Leaf, f.Subleaf), out var dep))
                        dep = new XenCpuidLeaf { Leaf = f.Leaf, Subleaf = f.Subleaf, A = ~0u, B = ~0u, C = ~0u, D = ~0u };
                    if (!Register(dep, f.Reg, f.Bit))
                        continue;
                    uint clear = ~(1u << f.Bit);
                    switch (f.Reg)
                    {
                        case 0: dep.A &= clear; break;
                        case 1: dep.B &= clear; break;
                        case 2: dep.C &= clear; break;
                        default: dep.D &= clear; break;
                    }
                    merged[(f.Leaf, f.Subleaf)] = dep;
                    changed = true;
                }
            }
        }
        return new DomainCpuPolicy(merged);
    }

    private static bool Register(in XenCpuidLeaf l, int reg, int bit) =>
        (((reg switch { 0 => l.A, 1 => l.B, 2 => l.C, _ => l.D }) >> bit) & 1) != 0;

    private bool TryGet(uint leaf, uint subleaf, out XenCpuidLeaf l) =>
        _leaves.TryGetValue((leaf, leaf is 4 or 7 or 0xB or 0xD ? subleaf : XEN_CPUID_NO_SUBLEAF), out l);

    /// <summary>Restricts the engine's answer for (<paramref name="leaf"/>, <paramref name="subleaf"/>).</summary>
    public void Apply(uint leaf, uint subleaf, ref uint a, ref uint b, ref uint c, ref uint d)
    {
        bool extended = leaf >= 0x80000000;
        if (leaf < 0x40000000 || extended)
        {
            uint limitLeaf = extended ? 0x80000000 : 0;
            if (TryGet(limitLeaf, 0, out var limit))
            {
                if (leaf == limitLeaf)
                {
                    a = Math.Min(a, limit.A);
                    return;
                }
                if (leaf > limit.A)
                {
                    a = b = c = d = 0;
                    return;
                }
            }
        }
        if (!TryGet(leaf, subleaf, out var p))
            return;
        switch (leaf, subleaf)
        {
            case (1, _):
                // The APIC bit follows the vLAPIC and the hypervisor bit is always set (Xen's too); OSXSAVE follows CR4.
                c &= p.C | 1u << 31;
                d &= p.D | 1u << 9;
                break;
            case (0x80000001, _):
                c &= p.C;
                d &= p.D;
                break;
            case (7, 0):
                b &= p.B;
                c &= p.C;
                d &= p.D;
                break;
            case (7, 1):
            case (0xD, 1):
            case (0x80000021, _):
                a &= p.A;
                break;
            case (7, 2):
            case (0x80000007, _):
                d &= p.D;
                break;
            case (0x80000008, _):
                b &= p.B;
                break;
            case (0xD, 0):
                a &= p.A;
                d &= p.D;
                break;
        }
    }
}

