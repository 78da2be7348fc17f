using XenSharp.Backends.Xenbus;

namespace XenSharp.Backends.Net;

/// <summary>How vifs' host ends are named.</summary>
public static class VifPorts
{
    /// <summary>The interface name a vif's host end gets: vifD.N, as netback names its net devices (the hotplug
    /// script renames it to the configuration's vifname=).</summary>
    public static string InterfaceName(DeviceAddress a) => $"vif{a.FrontendId}.{a.DevId}";
}

/// <summary>
/// The host end of a vif: where the guest's Ethernet frames go and where the frames for the guest come from
/// (Linux netback's vifD.N net device). A TAP device is one (<see cref="TapPort"/>); a user-mode network
/// such as passt can be another. Frames are whole Ethernet frames without a preamble or FCS, and with
/// complete checksums both ways unless offloads were agreed. <see cref="Receive(Span{byte})"/> and <see cref="Send"/>
/// are called on the backend's I/O thread only and never block. A port with <see cref="Offloads"/> also takes frames
/// whose checksum the host finishes and TCP segments larger than the link's MTU, which the host cuts
/// (<see cref="VifOffload"/>); one that agrees to <see cref="SetReceiveOffloads"/> hands such frames the other way.
/// </summary>
public interface IVifPort : IDisposable
{
    /// <summary>The host's name for this end (the interface name).</summary>
    string Name { get; }

    /// <summary>Starts telling <paramref name="framesWaiting"/> (on a thread of the port's own) when frames
    /// wait to be received. After each call it stays quiet until <see cref="Receive"/> has found none.</summary>
    void Start(Action framesWaiting);

    /// <summary>Takes one waiting frame into <paramref name="frame"/>: its length, 0 when none waits (the
    /// port then watches for the next), or -errno. A frame longer than the span is cut short.</summary>
    int Receive(Span<byte> frame);

    /// <summary>As <see cref="Receive(Span{byte})"/>, and what the host left for the guest to do to the frame: a
    /// partial checksum, a TCP segment larger than the MTU (only after <see cref="SetReceiveOffloads"/> said yes;
    /// otherwise <see cref="VifOffload.None"/>).</summary>
    int Receive(Span<byte> frame, out VifOffload offload)
    {
        offload = VifOffload.None;
        return Receive(frame);
    }

    /// <summary>Asks the port to hand over frames with partial checksums (<paramref name="checksum"/>) and TCP
    /// segments of up to 64 KiB (<paramref name="tcpv4"/>, <paramref name="tcpv6"/>, which need the checksum),
    /// as the guest's frontend can take them; false when the port cannot, its frames then staying complete.
    /// All false turns it off again.</summary>
    bool SetReceiveOffloads(bool checksum, bool tcpv4, bool tcpv6) => false;

    /// <summary>Hands one frame to the host: 0 or -errno (the frame is then dropped). Unless the port
    /// <see cref="Offloads"/>, <paramref name="offload"/> is always <see cref="VifOffload.None"/>.</summary>
    int Send(ReadOnlySpan<byte> frame, in VifOffload offload);

    /// <summary>Whether <see cref="Send"/> takes partial checksums and TCP segmentation.</summary>
    bool Offloads { get; }
}

/// <summary>What the host still has to do to a frame sent with offloads (virtio_net_hdr's terms): finish the
/// checksum from <see cref="ChecksumStart"/>, storing it at <see cref="ChecksumOffset"/> beyond that; cut a TCP
/// segment into <see cref="GsoSize"/>-byte pieces behind <see cref="HeaderLength"/> bytes of headers.</summary>
public readonly record struct VifOffload(bool NeedsChecksum, ushort ChecksumStart, ushort ChecksumOffset,
    VifGso Gso, ushort GsoSize, ushort HeaderLength)
{
    public static VifOffload None => default;
}

public enum VifGso : byte { None, TcpV4, TcpV6 }
