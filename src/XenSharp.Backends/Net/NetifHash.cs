using XenSharp.Dom0;
using XenSharp.Public;
using XenSharp.Public.Io;
using static XenSharp.Public.Io.Netif;

namespace XenSharp.Backends.Net;

/// <summary>
/// A vif's receive-side steering as the frontend sets it over the control ring (netif.h's XEN_NETIF_CTRL_TYPE_*):
/// the hash algorithm (Toeplitz, or none), the hash types, the key and the table mapping a hash to a queue. Each
/// request is answered with netif.h's status; a bad one (an unknown algorithm or type, a key or table beyond what is
/// kept, a queue the vif does not have, a grant that cannot be read) changes nothing. The limits are Linux netback's.
/// </summary>
internal sealed class NetifHash
{
    /// <summary>The largest key kept (netback's XEN_NETBK_MAX_HASH_KEY_SIZE): enough for the 36 bytes hashed of an
    /// IPv6 TCP packet.</summary>
    public const int MaxKeySize = 40;
    /// <summary>The largest mapping table (netback's XEN_NETBK_MAX_HASH_MAPPING_SIZE).</summary>
    public const int MaxMappingSize = 128;
    private const uint AllTypes = XEN_NETIF_CTRL_HASH_TYPE_IPV4 | XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP
        | XEN_NETIF_CTRL_HASH_TYPE_IPV6 | XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP;

    private readonly byte[] _key = new byte[MaxKeySize];
    private readonly uint[] _mapping = new uint[MaxMappingSize];
    /// <summary>A table being read from the guest, checked before it replaces entries of the one in use.</summary>
    private readonly byte[] _incoming = new byte[MaxMappingSize * 4];
    private readonly byte[] _buffer = new byte[36];

    public uint Algorithm { get; private set; } = XEN_NETIF_CTRL_HASH_ALGORITHM_NONE;
    public uint Types { get; private set; }
    public int MappingSize { get; private set; }

    /// <summary>Whether the frontend steers: an algorithm and at least one hash type chosen.</summary>
    public bool Active => Algorithm == XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ && Types != 0;

    /// <summary>Back to netback's defaults (at each connect).</summary>
    public void Reset()
    {
        Algorithm = XEN_NETIF_CTRL_HASH_ALGORITHM_NONE;
        Types = 0;
        MappingSize = 0;
        Array.Clear(_key);
        Array.Clear(_mapping);
    }

    /// <summary>One control request, answered in <paramref name="response"/>; <paramref name="queues"/> bounds the
    /// queue numbers a mapping may name.</summary>
    public NetifCtrlResponse Handle(in NetifCtrlRequest r, IDom0Services dom0, ushort frontend, int queues)
    {
        uint data = 0;
        uint status = r.Type switch
        {
            XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM => SetAlgorithm(r.Data0),
            XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS => GetTypes(out data),
            XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS => SetTypes(r.Data0),
            XEN_NETIF_CTRL_TYPE_SET_HASH_KEY => SetKey(r.Data0, r.Data1, dom0, frontend),
            XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE => Value(MaxMappingSize, out data),
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE => SetMappingSize(r.Data0),
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING => SetMapping(r.Data0, r.Data1, r.Data2, dom0, frontend, queues),
            _ => XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED, // the grant mapping requests among them
        };
        return new NetifCtrlResponse { Id = r.Id, Type = r.Type, Status = status, Data = data };
    }

    private static uint Value(uint value, out uint data)
    {
        data = value;
        return XEN_NETIF_CTRL_STATUS_SUCCESS;
    }

    private uint SetAlgorithm(uint algorithm)
    {
        if (algorithm is not (XEN_NETIF_CTRL_HASH_ALGORITHM_NONE or XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ))
            return XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
        Algorithm = algorithm;
        return XEN_NETIF_CTRL_STATUS_SUCCESS;
    }

    /// <summary>The types this backend hashes; netif.h: only once an algorithm is chosen.</summary>
    private uint GetTypes(out uint data)
    {
        data = 0;
        if (Algorithm == XEN_NETIF_CTRL_HASH_ALGORITHM_NONE) return XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED;
        data = AllTypes;
        return XEN_NETIF_CTRL_STATUS_SUCCESS;
    }

    private uint SetTypes(uint types)
    {
        if ((types & ~AllTypes) != 0 || Algorithm == XEN_NETIF_CTRL_HASH_ALGORITHM_NONE)
            return XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
        Types = types;
        return XEN_NETIF_CTRL_STATUS_SUCCESS;
    }

    /// <summary>A new key replaces the old entirely; octets beyond its size are zero (netif.h).</summary>
    private uint SetKey(uint gref, uint size, IDom0Services dom0, ushort frontend)
    {
        if (size > MaxKeySize) return XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW;
        Span<byte> key = stackalloc byte[MaxKeySize];
        key.Clear();
        if (size > 0 && dom0.GrantCopyFrom(frontend, gref, 0, key[..(int)size]) != GrantTable.GNTST_okay)
            return XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
        key.CopyTo(_key);
        return XEN_NETIF_CTRL_STATUS_SUCCESS;
    }

    private uint SetMappingSize(uint size)
    {
        if (size > MaxMappingSize) return XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
        MappingSize = (int)size;
        Array.Clear(_mapping);
        return XEN_NETIF_CTRL_STATUS_SUCCESS;
    }

    /// <summary>Entries [offset, offset+count) of the table from the granted page; every entry must name a queue of
    /// the vif, or none is taken.</summary>
    private uint SetMapping(uint gref, uint count, uint offset, IDom0Services dom0, ushort frontend, int queues)
    {
        if (count > MaxMappingSize) return XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW;
        if ((ulong)offset + count > (ulong)MappingSize) return XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
        if (count == 0) return XEN_NETIF_CTRL_STATUS_SUCCESS;
        var table = _incoming.AsSpan(0, (int)count * 4);
        if (dom0.GrantCopyFrom(frontend, gref, 0, table) != GrantTable.GNTST_okay)
            return XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
        for (int i = 0; i < count; i++)
            if (BitConverter.ToUInt32(table[(i * 4)..]) >= (uint)queues)
                return XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
        for (int i = 0; i < count; i++)
            _mapping[offset + i] = BitConverter.ToUInt32(table[(i * 4)..]);
        return XEN_NETIF_CTRL_STATUS_SUCCESS;
    }

    /// <summary>The queue of a frame for the guest under the frontend's settings (<see cref="Active"/>): the hash of
    /// the maximal type that applies (a frame none applies to hashes to zero), through the table or modulo the queues.</summary>
    public int QueueOf(ReadOnlySpan<byte> frame, int queues)
    {
        uint hash = Hash(frame);
        return MappingSize == 0 ? (int)(hash % (uint)queues) : (int)_mapping[hash % (uint)MappingSize];
    }

    /// <summary>netif.h's hash types over the frame's IP packet (after an 802.1Q tag, if any): addresses, and the
    /// TCP ports where a TCP type is chosen and the packet is no fragment.</summary>
    public uint Hash(ReadOnlySpan<byte> frame)
    {
        if (frame.Length < 14) return 0;
        int at = 12;
        int type = frame[at] << 8 | frame[at + 1];
        if (type == 0x8100 && frame.Length >= 18)
        {
            at += 4;
            type = frame[at] << 8 | frame[at + 1];
        }
        var ip = frame[(at + 2)..];
        int n;
        if (type == 0x0800 && ip.Length >= 20 && (ip[0] >> 4) == 4)
        {
            int ihl = (ip[0] & 15) * 4;
            bool fragment = (ip[6] & 0x3f) != 0 || ip[7] != 0;
            ip.Slice(12, 8).CopyTo(_buffer);
            n = 8;
            if ((Types & XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP) != 0 && ip[9] == 6 && !fragment && ihl >= 20 && ip.Length >= ihl + 4)
            {
                ip.Slice(ihl, 4).CopyTo(_buffer.AsSpan(8));
                n = 12;
            }
            else if ((Types & XEN_NETIF_CTRL_HASH_TYPE_IPV4) == 0) return 0;
        }
        else if (type == 0x86dd && ip.Length >= 40 && (ip[0] >> 4) == 6)
        {
            ip.Slice(8, 32).CopyTo(_buffer);
            n = 32;
            if ((Types & XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP) != 0 && ip[6] == 6 && ip.Length >= 44)
            {
                ip.Slice(40, 4).CopyTo(_buffer.AsSpan(32));
                n = 36;
            }
            else if ((Types & XEN_NETIF_CTRL_HASH_TYPE_IPV6) == 0) return 0;
        }
        else return 0;
        return Toeplitz(_key, _buffer.AsSpan(0, n));
    }

    /// <summary>The Toeplitz hash: for each set bit of the input, the 32 key bits starting at that bit's position
    /// are XORed into the result (key bits beyond the key are zero).</summary>
    public static uint Toeplitz(ReadOnlySpan<byte> key, ReadOnlySpan<byte> input)
    {
        uint result = 0;
        // The key's window: its first 32 bits, then shifted one bit left per input bit, the next key bit coming in.
        ulong window = 0;
        for (int i = 0; i < 8; i++)
            window = window << 8 | (i < key.Length ? key[i] : 0u);
        int next = 8;
        foreach (byte b in input)
        {
            for (int bit = 7; bit >= 0; bit--)
            {
                if ((b >> bit & 1) != 0) result ^= (uint)(window >> 32);
                window <<= 1;
            }
            window |= next < key.Length ? key[next] : 0u;
            next++;
        }
        return result;
    }
}
