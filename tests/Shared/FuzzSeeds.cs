namespace XenSharp.Tests;

/// <summary>How the seeded random tests of the unit-test projects run.</summary>
internal static class FuzzSeeds
{
    /// <summary>
    /// Runs <paramref name="fuzz"/> with <paramref name="seed"/>, then, when <c>XENSHARP_FUZZ_SECONDS=S</c> asks for a
    /// longer run, with random seeds for S seconds; a failure names its seed, to be added as a case of its own.
    /// </summary>
    public static void WithSeeds(int seed, Action<int> fuzz)
    {
        int seconds = int.TryParse(Environment.GetEnvironmentVariable("XENSHARP_FUZZ_SECONDS"), out int s) ? s : 0;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        for (int next = seed; ; next = Random.Shared.Next())
        {
            try { fuzz(next); }
            catch (Exception e) when (next != seed) { throw new Exception($"seed {next} failed: {e.Message}", e); }
            if (clock.Elapsed.TotalSeconds >= seconds)
                break;
        }
    }
}
