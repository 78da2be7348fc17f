namespace XenSharp.Public.Io;

/// <summary>xen/include/public/io/ring.h: the shared ring header every DEFINE_RING_TYPES ring starts with.</summary>
public static class Ring
{
    public const int OffsetReqProd = 0, OffsetReqEvent = 4, OffsetRspProd = 8, OffsetRspEvent = 12,
        /// <summary>offsetof(struct X_sring, ring): the entries start after 48 bytes of header and padding.</summary>
        OffsetRing = 64;

    /// <summary>__CONST_RING_SIZE: entries that fit in a ring of <paramref name="bytes"/>, rounded down to a power of two.</summary>
    public static int Size(int bytes, int entrySize)
    {
        int n = (bytes - OffsetRing) / entrySize;
        return n <= 0 ? 0 : 1 << (31 - System.Numerics.BitOperations.LeadingZeroCount((uint)n));
    }

    /// <summary>RING_NEED_NOTIFY: whether the other end asked to be told about index <paramref name="newProd"/>.</summary>
    public static bool NeedNotify(uint oldProd, uint newProd, uint eventIdx) =>
        unchecked(newProd - eventIdx) < unchecked(newProd - oldProd);
}
