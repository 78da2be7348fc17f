namespace XenSharp.Cpu;

/// <summary>
/// The block compiler's switch and tier-up threshold. A block is interpreted until it has run
/// <see cref="Threshold"/> times, then translated to IL and run compiled; 0 compiles every block
/// on first use. <see cref="Background"/> compiles on the engine's compiler thread while the vCPU
/// goes on interpreting the block; otherwise the vCPU compiles it before running it. The defaults
/// come from XENSHARP_JIT=0/1, XENSHARP_JIT_THRESHOLD=n and XENSHARP_JIT_BACKGROUND=0/1.
/// </summary>
public sealed record JitSettings(bool Enabled = true, int Threshold = JitSettings.DefaultThreshold, bool Background = true)
{
    /// <summary>Compiling a block costs about as much as interpreting it a few thousand times, and a
    /// boot runs much code only a few times: Linux booted in 27 s at 50 and 12 s at 3000 with
    /// compilation on the vCPU; compiling in the background, 9.5 s at 500 and 7.9 s at 3000.</summary>
    public const int DefaultThreshold = 3000;

    /// <summary>The interpreter only.</summary>
    public static JitSettings Off { get; } = new(false);

    /// <summary>Every block compiled before its first run (tests use it).</summary>
    public static JitSettings Eager { get; } = new(true, 0, Background: false);

    public static JitSettings FromEnvironment()
    {
        bool on = Environment.GetEnvironmentVariable("XENSHARP_JIT") is not ("0" or "false" or "off");
        int threshold = int.TryParse(Environment.GetEnvironmentVariable("XENSHARP_JIT_THRESHOLD"), out int t) && t >= 0 ? t : DefaultThreshold;
        bool background = Environment.GetEnvironmentVariable("XENSHARP_JIT_BACKGROUND") is not ("0" or "false" or "off");
        return new JitSettings(on, threshold, background);
    }
}
