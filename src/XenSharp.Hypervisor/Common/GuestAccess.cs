using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// copy_from_guest / copy_to_guest: hypercall arguments are guest-linear addresses, translated through the
/// vCPU's page tables and then the domain's p2m, page by page. A bad address is a false return (the handler
/// answers -EFAULT), never an exception.
/// </summary>
internal static unsafe class GuestAccess
{
    private const int PageSize = FrameTable.PageSize;

    /// <summary>Host address of the byte at guest-linear <paramref name="linear"/>, or null.</summary>
    public static byte* Translate(Vcpu v, ulong linear, bool write)
    {
        if (v.Caller is { } caller)
            return caller.Translate(linear);
        ulong phys;
        if (v.Engine is null)
            phys = linear; // no engine: a paging-off view, used before the vCPU ever ran
        else if (!v.Engine.TryTranslateLinear(linear, write, out phys))
            return null;
        byte* page = v.Domain.GuestMemory.GetPage(phys >> FrameTable.PageShift, write);
        if (page is null && v.Domain.PagingEverEnabled)
            v.Domain.P2m.GetPage(phys >> FrameTable.PageShift, write); // a paged-out page is asked for: -EFAULT this time
        return page is null ? null : page + (phys & (PageSize - 1));
    }

    public static bool CopyFrom(Vcpu v, ulong linear, Span<byte> dst)
    {
        int done = 0;
        while (done < dst.Length)
        {
            ulong addr = linear + (ulong)done;
            int chunk = Math.Min(dst.Length - done, PageSize - (int)(addr & (PageSize - 1)));
            byte* p = Translate(v, addr, write: false);
            if (p is null)
                return false;
            new ReadOnlySpan<byte>(p, chunk).CopyTo(dst.Slice(done));
            done += chunk;
        }
        return true;
    }

    public static bool CopyTo(Vcpu v, ulong linear, ReadOnlySpan<byte> src)
    {
        int done = 0;
        while (done < src.Length)
        {
            ulong addr = linear + (ulong)done;
            int chunk = Math.Min(src.Length - done, PageSize - (int)(addr & (PageSize - 1)));
            byte* p = Translate(v, addr, write: true);
            if (p is null)
                return false;
            src.Slice(done, chunk).CopyTo(new Span<byte>(p, chunk));
            done += chunk;
        }
        return true;
    }

    public static bool Read<T>(Vcpu v, ulong linear, out T value) where T : unmanaged
    {
        value = default;
        return CopyFrom(v, linear, MemoryMarshal.AsBytes(new Span<T>(ref value)));
    }

    public static bool Write<T>(Vcpu v, ulong linear, in T value) where T : unmanaged =>
        CopyTo(v, linear, MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)));

    /// <summary>Reads element <paramref name="index"/> of a guest array of T.</summary>
    public static bool ReadElement<T>(Vcpu v, ulong array, ulong index, out T value) where T : unmanaged =>
        Read(v, array + index * (ulong)sizeof(T), out value);

    public static bool WriteElement<T>(Vcpu v, ulong array, ulong index, in T value) where T : unmanaged =>
        Write(v, array + index * (ulong)sizeof(T), value);

    /// <summary>Host pointer to a guest-physical byte range that lies inside one page, or null.</summary>
    public static byte* PhysPointer(Domain d, ulong gpa, int length, bool write)
    {
        if ((gpa & (PageSize - 1)) + (ulong)length > PageSize)
            return null;
        byte* page = d.P2m.GetPage(gpa >> FrameTable.PageShift, write);
        return page is null ? null : page + (gpa & (PageSize - 1));
    }

    public static bool CopyFromPhys(Domain d, ulong gpa, Span<byte> dst)
    {
        int done = 0;
        while (done < dst.Length)
        {
            ulong addr = gpa + (ulong)done;
            int chunk = Math.Min(dst.Length - done, PageSize - (int)(addr & (PageSize - 1)));
            byte* p = d.P2m.GetPage(addr >> FrameTable.PageShift, false);
            if (p is null)
                return false;
            new ReadOnlySpan<byte>(p + (addr & (PageSize - 1)), chunk).CopyTo(dst.Slice(done));
            done += chunk;
        }
        return true;
    }

    public static bool CopyToPhys(Domain d, ulong gpa, ReadOnlySpan<byte> src)
    {
        int done = 0;
        while (done < src.Length)
        {
            ulong addr = gpa + (ulong)done;
            int chunk = Math.Min(src.Length - done, PageSize - (int)(addr & (PageSize - 1)));
            byte* p = d.P2m.GetPage(addr >> FrameTable.PageShift, true);
            if (p is null)
                return false;
            src.Slice(done, chunk).CopyTo(new Span<byte>(p + (addr & (PageSize - 1)), chunk));
            done += chunk;
        }
        return true;
    }
}
