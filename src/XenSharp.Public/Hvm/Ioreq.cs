namespace XenSharp.Public.Hvm;

/// <summary>xen/include/public/hvm/ioreq.h: the kinds of access an IOREQ server is asked to emulate.</summary>
public static class Ioreq
{
    public const uint IOREQ_READ = 1, IOREQ_WRITE = 0;
    /// <summary>Port I/O, and MMIO (a "copy" to or from guest-physical space).</summary>
    public const uint IOREQ_TYPE_PIO = 0, IOREQ_TYPE_COPY = 1;
}
