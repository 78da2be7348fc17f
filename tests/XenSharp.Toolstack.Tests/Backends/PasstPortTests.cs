using System.Buffers.Binary;
using XenSharp.Backends.Net;

namespace XenSharp.Toolstack.Tests.Backends;

/// <summary>
/// The user-mode port against Debian's passt itself: ARP requests framed in QEMU's stream protocol are answered by
/// passt (which answers ARP for every address but the guest's own), each reply taken whole from the stream, however
/// the stream was cut; and a port disposed ends its passt.
/// </summary>
public sealed class PasstPortTests
{
    private static readonly byte[] GuestMac = [0x00, 0x16, 0x3e, 0x5a, 0x09, 0x09];

    private static byte[] ArpRequest(int target)
    {
        var f = new byte[60];
        f.AsSpan(0, 6).Fill(0xff);
        GuestMac.CopyTo(f, 6);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), 0x0806);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(14), 1);      // Ethernet
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(16), 0x0800); // IPv4
        f[18] = 6;
        f[19] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(20), 1);      // request
        GuestMac.CopyTo(f, 22);
        BinaryPrimitives.WriteUInt32BigEndian(f.AsSpan(38), (uint)target);
        return f;
    }

    [Fact]
    [Trait("Feature", "Netback")]
    public void PasstAnswersEachArpRequestWithAWholeFrame()
    {
        Assert.True(File.Exists("/usr/bin/passt"), "passt is not installed (scripts/install-deps.sh)");
        const int Requests = 40;
        const int Base = unchecked((int)0xcb007100); // 203.0.113.0/24, documentation addresses
        using var waiting = new SemaphoreSlim(0);
        using var port = PasstPort.Open(new UserNetwork("vif9.0", []));
        Assert.False(port.Offloads);
        port.Start(() => waiting.Release());
        for (int i = 0; i < Requests; i++)
            Assert.Equal(0, port.Send(ArpRequest(Base + i), VifOffload.None));
        var answered = new HashSet<int>();
        var frame = new byte[2048];
        while (answered.Count < Requests)
        {
            Assert.True(waiting.Wait(TimeSpan.FromSeconds(30)), $"passt answered {answered.Count} of {Requests}");
            int n;
            while ((n = port.Receive(frame)) > 0)
            {
                Assert.Equal(42, n); // an ARP reply without padding
                Assert.Equal(0x0806, BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(12)));
                Assert.Equal(2, BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(20)));
                Assert.Equal(GuestMac, frame[0..6]);
                Assert.Equal(GuestMac, frame[32..38]);
                int sender = BinaryPrimitives.ReadInt32BigEndian(frame.AsSpan(28));
                Assert.InRange(sender - Base, 0, Requests - 1);
                Assert.True(answered.Add(sender), "a request answered twice");
            }
            Assert.Equal(0, n);
        }
    }

    [Fact]
    [Trait("Feature", "Netback")]
    public void AMissingProgramFailsOpenWithAReason()
    {
        string saved = PasstPort.Program;
        try
        {
            PasstPort.Program = "/nonexistent/passt";
            var e = Assert.Throws<IOException>(() => PasstPort.Open(new UserNetwork("vif9.1", [])));
            Assert.Contains("passt", e.Message);
        }
        finally { PasstPort.Program = saved; }
    }
}
