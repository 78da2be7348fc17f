using System.Buffers.Binary;

namespace XenSharp.Backends.Net;

/// <summary>
/// The TCP or UDP checksum of a frame a frontend sent with NETTXF_csum_blank (its checksum left for the host to
/// fill, as with CHECKSUM_PARTIAL in Linux): completed for a host end that takes only complete frames, or set up
/// as a partial checksum for one that finishes it. Ethernet (with at most one 802.1Q tag) carrying IPv4 or IPv6
/// (hop-by-hop, routing and destination-options headers skipped).
/// </summary>
public static class Checksum
{
    private const int EthHeader = 14;
    private const ushort EtherTypeIpv4 = 0x0800, EtherTypeIpv6 = 0x86DD, EtherTypeVlan = 0x8100;
    private const byte Tcp = Transport.Tcp, Udp = Transport.Udp;

    /// <summary>Where a frame's TCP or UDP segment lies; false when the frame is none of those (or is malformed
    /// or an IP fragment).</summary>
    public static bool TryLocate(ReadOnlySpan<byte> frame, out Transport transport)
    {
        transport = default;
        if (frame.Length < EthHeader) return false;
        int l3 = EthHeader;
        ushort type = BinaryPrimitives.ReadUInt16BigEndian(frame[12..]);
        if (type == EtherTypeVlan)
        {
            if (frame.Length < EthHeader + 4) return false;
            type = BinaryPrimitives.ReadUInt16BigEndian(frame[16..]);
            l3 += 4;
        }
        int l4, l4Length;
        byte protocol;
        ulong sum;
        var ip = frame[l3..];
        if (type == EtherTypeIpv4)
        {
            if (ip.Length < 20 || ip[0] >> 4 != 4) return false;
            int ihl = (ip[0] & 0xF) * 4;
            int total = BinaryPrimitives.ReadUInt16BigEndian(ip[2..]);
            // Fragments (more-fragments set or an offset) carry no whole transport header and payload.
            if ((BinaryPrimitives.ReadUInt16BigEndian(ip[6..]) & 0x3FFF) != 0) return false;
            if (ihl < 20 || total < ihl || total > ip.Length) return false;
            protocol = ip[9];
            l4 = l3 + ihl;
            l4Length = total - ihl;
            sum = Sum(ip.Slice(12, 8));
        }
        else if (type == EtherTypeIpv6)
        {
            if (ip.Length < 40 || ip[0] >> 4 != 6) return false;
            int payload = BinaryPrimitives.ReadUInt16BigEndian(ip[4..]);
            if (40 + payload > ip.Length) return false;
            protocol = ip[6];
            int at = 40;
            while (protocol is 0 or 43 or 60)
            {
                if (at + 8 > 40 + payload) return false;
                protocol = ip[at];
                at += (ip[at + 1] + 1) * 8;
            }
            if (at > 40 + payload) return false;
            l4 = l3 + at;
            l4Length = 40 + payload - at;
            sum = Sum(ip.Slice(8, 32));
        }
        else return false;

        int header;
        if (protocol == Tcp)
        {
            if (l4Length < 20) return false;
            header = (frame[l4 + 12] >> 4) * 4;
            if (header < 20 || header > l4Length) return false;
        }
        else if (protocol == Udp)
        {
            if (l4Length < 8) return false;
            header = 8;
        }
        else return false;
        transport = new Transport(l4, l4Length, protocol, header, sum + protocol + (ulong)l4Length);
        return true;
    }

    /// <summary>Fills in the TCP/UDP checksum; false when the frame has none (it is then left as it is).
    /// Whatever the field held is replaced by the checksum computed from scratch.</summary>
    public static bool Complete(Span<byte> frame)
    {
        if (!TryLocate(frame, out var t)) return false;
        var segment = frame.Slice(t.Offset, t.Length);
        segment[t.Field] = 0;
        segment[t.Field + 1] = 0;
        ushort result = (ushort)~Fold(t.PseudoHeaderSum + Sum(segment));
        // UDP sends a computed zero as all ones: zero there means "no checksum".
        if (t.Protocol == Udp && result == 0) result = 0xFFFF;
        BinaryPrimitives.WriteUInt16BigEndian(segment[t.Field..], result);
        return true;
    }

    /// <summary>Leaves the checksum partial, as a host that finishes it expects (Linux's CHECKSUM_PARTIAL): the
    /// field holds the folded pseudo-header sum, and the host adds the segment from <see cref="Transport.Offset"/>.</summary>
    public static bool MakePartial(Span<byte> frame, out Transport transport)
    {
        if (!TryLocate(frame, out transport)) return false;
        BinaryPrimitives.WriteUInt16BigEndian(frame[(transport.Offset + transport.Field)..], Fold(transport.PseudoHeaderSum));
        return true;
    }

    /// <summary>The 16-bit big-endian words of <paramref name="data"/> added up (an odd last byte padded with zero).</summary>
    public static ulong Sum(ReadOnlySpan<byte> data)
    {
        ulong sum = 0;
        int i = 0;
        for (; i + 4 <= data.Length; i += 4) sum += BinaryPrimitives.ReadUInt32BigEndian(data[i..]);
        for (; i + 2 <= data.Length; i += 2) sum += BinaryPrimitives.ReadUInt16BigEndian(data[i..]);
        if (i < data.Length) sum += (ulong)data[i] << 8;
        return sum;
    }

    /// <summary>Folds a sum of 16- and 32-bit words into the 16-bit ones' complement sum.</summary>
    public static ushort Fold(ulong sum)
    {
        while (sum >> 16 != 0) sum = (sum & 0xFFFF) + (sum >> 16);
        return (ushort)sum;
    }
}

/// <summary>A frame's TCP or UDP segment: where it starts in the frame, its length, its protocol, its header's
/// length and the sum of its IP pseudo-header.</summary>
public readonly record struct Transport(int Offset, int Length, byte Protocol, int HeaderLength, ulong PseudoHeaderSum)
{
    public const byte Tcp = 6, Udp = 17;
    /// <summary>The checksum field's offset in the segment.</summary>
    public int Field => Protocol == Tcp ? 16 : 6;
}
