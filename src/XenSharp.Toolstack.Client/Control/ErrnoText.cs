namespace XenSharp.Toolstack.Control;

/// <summary>strerror for the errnos a control request can fail with (Linux's texts, which Xen's errno
/// values share), so that a failure reads as libxl and xl would print it.</summary>
public static class ErrnoText
{
    public static string Describe(int errno) => errno switch
    {
        1 => "Operation not permitted",
        2 => "No such file or directory",
        3 => "No such process",
        5 => "Input/output error",
        7 => "Argument list too long",
        11 => "Resource temporarily unavailable",
        12 => "Cannot allocate memory",
        13 => "Permission denied",
        16 => "Device or resource busy",
        17 => "File exists",
        22 => "Invalid argument",
        28 => "No space left on device",
        36 => "File name too long",
        38 => "Function not implemented",
        90 => "Message too long",
        95 => "Operation not supported",
        _ => $"errno {errno}",
    };
}
