namespace XenSharp.Toolstack.Platform;

/// <summary>
/// A domain's guest-physical memory as the domain builder sees it (the role of libxc's
/// xc_dom_image memory accessors): page-granular RAM that can be populated and written.
/// </summary>
public interface IGuestPhysicalMemory
{
    /// <summary>Backs [gfn, gfn+count) with zeroed RAM frames (XENMEM_populate_physmap).</summary>
    void Populate(ulong gfn, ulong count);

    /// <summary>Makes [gfn, gfn+count) populate-on-demand RAM (XENMEM_populate_physmap with
    /// XENMEMF_populate_on_demand): backed from the PoD cache when first touched.</summary>
    void PopulateOnDemand(ulong gfn, ulong count);

    /// <summary>XENMEM_set_pod_target: the domain's memory target in pages, which its PoD cache backs until the
    /// guest's balloon driver has reached it.</summary>
    void SetPodTarget(ulong targetPages);

    /// <summary>The highest GFN the domain's p2m has mapped.</summary>
    ulong MaxGfn { get; }

    /// <summary>Copies frame <paramref name="gfn"/> when the p2m has RAM with a frame behind it there (not holes,
    /// mappings of other domains' pages, or populate-on-demand entries never touched, which stay untouched).</summary>
    bool TryReadFrame(ulong gfn, Span<byte> page);

    /// <summary>True when the frame is backed.</summary>
    bool IsPopulated(ulong gfn);

    /// <summary>Copies into guest-physical memory; every touched frame must be populated.</summary>
    void Write(ulong gpa, ReadOnlySpan<byte> data);

    void Read(ulong gpa, Span<byte> data);

    /// <summary>The 4 KiB page of a populated frame, for a backend that shares it with the guest
    /// (console and xenstore rings). Valid while the domain lives.</summary>
    Span<byte> Page(ulong gfn);
}

/// <summary>Memory accessors shared by every implementation.</summary>
public static class GuestPhysicalMemoryExtensions
{
    public static void WriteUInt32(this IGuestPhysicalMemory m, ulong gpa, uint v)
    {
        Span<byte> b = stackalloc byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(b, v);
        m.Write(gpa, b);
    }

    public static uint ReadUInt32(this IGuestPhysicalMemory m, ulong gpa)
    {
        Span<byte> b = stackalloc byte[4];
        m.Read(gpa, b);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    public static void Zero(this IGuestPhysicalMemory m, ulong gpa, ulong length)
    {
        var zeros = new byte[Math.Min(length, 65536UL)];
        while (length > 0)
        {
            int n = (int)Math.Min(length, (ulong)zeros.Length);
            m.Write(gpa, zeros.AsSpan(0, n));
            gpa += (ulong)n;
            length -= (ulong)n;
        }
    }
}
