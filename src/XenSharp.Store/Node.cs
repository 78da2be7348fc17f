namespace XenSharp.Store;

/// <summary>
/// One xenstore node. Value and Perms arrays are never changed in place (they are replaced), so a
/// transaction's copy can share them with the committed node; Children is copied on clone.
/// </summary>
internal sealed class Node
{
    public readonly string Path;
    public byte[] Value;
    public XsPermission[] Perms;
    public List<string> Children;
    /// <summary>Bumped on every committed change; transactions compare it to detect conflicts.</summary>
    public long Generation;

    public Node(string path, byte[] value, XsPermission[] perms, List<string> children)
    {
        Path = path;
        Value = value;
        Perms = perms;
        Children = children;
    }

    public uint Owner => Perms[0].DomId;

    public Node Clone() => new(Path, Value, Perms, new List<string>(Children)) { Generation = Generation };
}
