namespace XenSharp.Toolstack.Control;

/// <summary>
/// XENSHARP_MIGRATE_TRACE=1: each step of a migration's downtime (the source's stop, its last pages and state, the
/// target's restore, device connection, and every turn of xl's handshake) as a line on the standard error of the
/// process that took it, <c>migrate-trace MICROS WHO: STEP</c>, MICROS on the clock every process of this host shares,
/// so the lines of both daemons and both xl processes can be put in one order. Off by default.
/// </summary>
public static class MigrationTrace
{
    public static readonly bool On = Environment.GetEnvironmentVariable("XENSHARP_MIGRATE_TRACE") is "1";

    /// <summary>Microseconds since 1970.</summary>
    public static long Now() => (DateTime.UtcNow - DateTime.UnixEpoch).Ticks / 10;

    public static void Mark(string who, string step, long at = 0)
    {
        if (!On) return;
        Console.Error.WriteLine($"migrate-trace {(at == 0 ? Now() : at)} {who}: {step}");
    }
}
