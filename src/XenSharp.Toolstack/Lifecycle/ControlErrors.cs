using XenSharp.Hypervisor;
using XenSharp.Public;
using XenSharp.Store;
using XenSharp.Toolstack.Builder;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// The one exception → errno map of the control boundary, as libxl turns a failed hypercall or
/// xenstore operation into an error code and a logged reason. Every failure of a request becomes
/// an answer with the reason's text and its errno, which xl prints as Xen's xl prints libxl's error.
/// A failure nobody anticipated (a bug, or a host resource the daemon could not get) is answered
/// too, with EIO, and logged, so that the client learns why instead of losing the connection.
/// </summary>
internal static class ControlErrors
{
    /// <param name="Unexpected">Not a failure the daemon reports by design: worth logging.</param>
    public readonly record struct Failure(string Message, int Errno, bool Unexpected = false);

    /// <summary>The answer for <paramref name="e"/>; null for what must not be caught (the host is
    /// past saving: stack overflow and the like never reach here, but a thread abort would).</summary>
    public static Failure? Map(Exception e) => e switch
    {
        // Already worded for the user, with its errno (0 when xl's message needs none).
        ControlException c => new(c.Message, c.Errno),
        HypervisorException h => new(h.Message, h.Errno),
        XlConfigException x => new(x.Message, 0),
        DomainBuildException b => new(b.Message, 0),
        Save.SaveFileException s => new(s.Message, Errno.EINVAL),
        XenStoreException s => new(s.Message, (int)s.Error),
        NotSupportedException n => new(n.Message, 0),
        ArgumentException a => new(a.Message, 0),
        FormatException f => new(f.Message, 0),
        // Machine memory ran out building a domain or filling a PoD cache: ENOMEM, the daemon goes on.
        OutOfMemoryException m => new(WithReason(m.Message, Errno.ENOMEM), Errno.ENOMEM),
        PathTooLongException p => new(WithReason(p.Message, Errno.ENAMETOOLONG), Errno.ENAMETOOLONG),
        UnauthorizedAccessException u => new(WithReason(u.Message, Errno.EACCES), Errno.EACCES),
        IOException io => new(WithReason(io.Message, Errno.EIO), Errno.EIO, Unexpected: true),
        OperationCanceledException => null, // the daemon is stopping: the connection goes with it
        _ => new(WithReason($"xensharpd: internal error: {e.Message}", Errno.EIO), Errno.EIO, Unexpected: true),
    };

    /// <summary>The message as libxl logs a failed call: what failed, then strerror of its errno.</summary>
    private static string WithReason(string message, int errno) => $"{message.TrimEnd('.', ' ')}: {ErrnoText.Describe(errno)}";
}
