namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// One guest as xl's create loop follows it: the domains that succeed one another when on_reboot,
/// on_crash (…) restart it. xl destroy aimed at any of them ends the guest, so a destroy that races
/// a restart still wins. Changed under both of the host's locks (lifecycle, then state), read
/// under either.
/// </summary>
internal sealed class Lineage
{
    /// <summary>The running incarnation; null while a restart is pending (the pause and the build).</summary>
    public Domain? Current { get; set; }

    /// <summary>While a restart is pending: the name the next incarnation takes, reserved for it.</summary>
    public string? PendingName { get; set; }

    /// <summary>While a rename-restart is pending: the old incarnation, kept under its new name.</summary>
    public Domain? Preserved { get; set; }

    /// <summary>Cancels the pause of a pending restart.</summary>
    public CancellationTokenSource? Pause { get; set; }

    /// <summary>Destroyed, or a restart failed: no incarnation follows.</summary>
    public bool Ended { get; set; }

    /// <summary>Domids of incarnations destroyed to restart the guest, with when that happened.</summary>
    public List<(uint DomId, DateTimeOffset At)> Retired { get; } = [];

    public bool Pending => !Ended && Current is null && PendingName is not null;

    /// <summary>Whether <paramref name="domId"/> still names this guest: a domid retired less than
    /// <paramref name="keep"/> ago (older ones are forgotten here).</summary>
    public bool Retains(uint domId, DateTimeOffset now, TimeSpan keep)
    {
        Retired.RemoveAll(r => now - r.At >= keep);
        return !Ended && Retired.Exists(r => r.DomId == domId);
    }
}
