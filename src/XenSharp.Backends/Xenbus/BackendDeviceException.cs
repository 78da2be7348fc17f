namespace XenSharp.Backends.Xenbus;

/// <summary>A device cannot go on: what the frontend gave is unusable. <see cref="Errno"/> is the
/// positive errno (or -GNTST_* for a grant failure, as Linux's xenbus reports it) written to the error node.</summary>
public sealed class BackendDeviceException(int errno, string message) : Exception(message)
{
    public int Errno { get; } = errno;
}
