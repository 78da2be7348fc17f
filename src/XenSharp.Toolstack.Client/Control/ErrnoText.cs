using XenSharp.Public;

namespace XenSharp.Toolstack.Control;

/// <summary>strerror for the errnos a control request can fail with (Linux's texts, which Xen's errno
/// values share), so that a failure reads as libxl and xl would print it.</summary>
public static class ErrnoText
{
    public static string Describe(int errno) => errno switch
    {
        Errno.EPERM => "Operation not permitted",
        Errno.ENOENT => "No such file or directory",
        Errno.ESRCH => "No such process",
        Errno.EIO => "Input/output error",
        Errno.E2BIG => "Argument list too long",
        Errno.EAGAIN => "Resource temporarily unavailable",
        Errno.ENOMEM => "Cannot allocate memory",
        Errno.EACCES => "Permission denied",
        Errno.EBUSY => "Device or resource busy",
        Errno.EEXIST => "File exists",
        Errno.EINVAL => "Invalid argument",
        Errno.ENOSPC => "No space left on device",
        Errno.ENAMETOOLONG => "File name too long",
        Errno.ENOSYS => "Function not implemented",
        Errno.EMSGSIZE => "Message too long",
        Errno.EOPNOTSUPP => "Operation not supported",
        _ => $"errno {errno}",
    };
}
