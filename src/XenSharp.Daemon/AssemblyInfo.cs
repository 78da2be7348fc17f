// xensharpd hosts Linux-only services (Unix sockets with file modes, madvise, setsid).
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]
