using System.Diagnostics;

namespace XenSharp.Toolstack.Tests;

/// <summary>
/// Waits for what a backend or the toolstack does on threads of its own. The deadline only bounds a test that would
/// otherwise hang: it is generous, since CI shares a small machine whose load can hold a thread up for seconds.
/// </summary>
internal static class Wait
{
    public static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);

    /// <summary>Polls <paramref name="condition"/> until it holds (true) or the deadline passes (false).</summary>
    public static bool Until(Func<bool> condition, int pollMs = 5, TimeSpan? limit = null)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > (limit ?? Limit))
                return condition();
            Thread.Sleep(pollMs);
        }
        return true;
    }
}
