namespace XenSharp.Store;

/// <summary>
/// An open transaction: private copies of the nodes it changed (null = removed), copies of the nodes
/// it read as they were when first read, and the generation of every node it touched when first seen
/// (-1 = absent). Commit succeeds only if none of those
/// generations moved meanwhile (optimistic concurrency); otherwise the client gets EAGAIN.
/// </summary>
internal sealed class Transaction
{
    public readonly uint Id;
    public readonly Dictionary<string, Node?> Overlay = new(StringComparer.Ordinal);
    public readonly Dictionary<string, Node?> Snapshot = new(StringComparer.Ordinal);
    public readonly Dictionary<string, long> Seen = new(StringComparer.Ordinal);
    public readonly Dictionary<uint, int> NodeDelta = new();
    /// <summary>Changes to announce to watchers on commit: path and whether the subtree went away.</summary>
    public readonly List<(string Path, bool Removed)> Changes = new();

    public Transaction(uint id) => Id = id;

    public int Delta(uint dom) => NodeDelta.TryGetValue(dom, out int d) ? d : 0;
}
