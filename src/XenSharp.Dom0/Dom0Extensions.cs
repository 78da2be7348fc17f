using static XenSharp.Public.GrantTable;

namespace XenSharp.Dom0;

/// <summary>Single-operation forms of the batched grant calls, for connect-time and test use.</summary>
public static unsafe class Dom0Extensions
{
    /// <summary>Copies from a granted page into <paramref name="destination"/>; returns the GNTST_* status.</summary>
    public static short GrantCopyFrom(this IDom0Services s, ushort dom, uint gref, int offset, Span<byte> destination)
    {
        if (offset is < 0 or > ushort.MaxValue || destination.Length > ushort.MaxValue) return GNTST_bad_copy_arg;
        fixed (byte* p = destination)
        {
            Span<GrantCopyOp> op = [new GrantCopyOp { Dom = dom, Ref = gref, Offset = (ushort)offset, Length = (ushort)destination.Length, Local = p }];
            s.CopyGrants(op);
            return op[0].Status;
        }
    }

    /// <summary>Copies <paramref name="source"/> into a granted page; returns the GNTST_* status.</summary>
    public static short GrantCopyTo(this IDom0Services s, ushort dom, uint gref, int offset, ReadOnlySpan<byte> source)
    {
        if (offset is < 0 or > ushort.MaxValue || source.Length > ushort.MaxValue) return GNTST_bad_copy_arg;
        fixed (byte* p = source)
        {
            Span<GrantCopyOp> op = [new GrantCopyOp { Dom = dom, Ref = gref, Offset = (ushort)offset, Length = (ushort)source.Length, Local = p, ToGuest = true }];
            s.CopyGrants(op);
            return op[0].Status;
        }
    }

    /// <summary>Maps one grant; returns the GNTST_* status and, when okay, the op with its handle and address.</summary>
    public static short MapGrantRef(this IDom0Services s, ushort dom, uint gref, bool readOnly, out GrantMapOp result)
    {
        Span<GrantMapOp> op = [new GrantMapOp(dom, gref, readOnly)];
        s.MapGrantRefs(op);
        result = op[0];
        return result.Status;
    }

    /// <summary>Unmaps one grant mapping; returns the GNTST_* status.</summary>
    public static short UnmapGrantRef(this IDom0Services s, uint handle)
    {
        Span<GrantUnmapOp> op = [new GrantUnmapOp(handle)];
        s.UnmapGrantRefs(op);
        return op[0].Status;
    }
}
