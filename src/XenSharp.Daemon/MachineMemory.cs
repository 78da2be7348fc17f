namespace XenSharp.Daemon;

/// <summary>
/// How much machine memory the hypervisor manages (what `xl info` reports as total_memory, and all that guests
/// can be given): `--machine-memory SIZE` or $XENSHARP_MACHINE_MEMORY, by default the host's RAM less a share
/// kept for the host itself (Domain-0: the host's processes, this daemon's own heap and code caches).
/// </summary>
internal static class MachineMemory
{
    public const string EnvironmentVariable = "XENSHARP_MACHINE_MEMORY";
    private const ulong MiB = 1UL << 20, Minimum = 64 * MiB;

    /// <summary>The size asked for, or the default for this host.</summary>
    public static ulong Choose(string? option)
    {
        string? asked = option ?? Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(asked))
            return Parse(asked);
        return DefaultFor(HostTotalBytes());
    }

    /// <summary>The host keeps an eighth of its RAM, at least 512 MiB and at most 4 GiB; the rest is machine memory.</summary>
    public static ulong DefaultFor(ulong hostBytes)
    {
        if (hostBytes == 0)
            return 16UL << 30; // no /proc/meminfo: the hypervisor's own default
        ulong keep = Math.Clamp(hostBytes / 8, 512 * MiB, 4096 * MiB);
        return Math.Max(Minimum, hostBytes > keep ? (hostBytes - keep) & ~(MiB - 1) : Minimum);
    }

    /// <summary>A size as xl.cfg writes memory: MiB, or a number with a K, M, G or T suffix.</summary>
    public static ulong Parse(string s)
    {
        if (!Options.TryParseSize(s, 20, out long size) || size <= 0 || size > 1L << 46)
            throw new FormatException($"invalid machine memory size \"{s}\"");
        ulong bytes = (ulong)size & ~(ulong)(4096 - 1);
        if (bytes < Minimum)
            throw new FormatException($"machine memory must be at least {Minimum / MiB} MiB");
        return bytes;
    }

    private static ulong HostTotalBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("MemTotal:", StringComparison.Ordinal)
                    && ulong.TryParse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], out ulong kb))
                    return kb << 10;
        }
        catch (IOException) { }
        return 0;
    }
}
