namespace XenSharp.Backends;

/// <summary>A guest page a backend shares with its frontend (a ring page), mapped while the device lives.</summary>
public interface ISharedPage
{
    Span<byte> Page { get; }
}
