using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using XenSharp.Toolstack.Tests.Builder;

namespace XenSharp.Toolstack.Tests.Xl;

/// <summary>
/// Failures at the control boundary reach xl as an answer with the reason and its errno, which xl
/// prints, instead of a connection the daemon dropped; the daemon goes on serving. Each test runs
/// its own daemon with 64 MiB of machine memory.
/// </summary>
public sealed class ControlErrorTests : IDisposable
{
    private readonly XlSession _s = new();

    public ControlErrorTests() => _s.Environment["XENSHARP_MACHINE_MEMORY"] = "64";

    public void Dispose() => _s.Dispose();

    private string Guest(string name, int memoryMb)
    {
        File.WriteAllBytes(Path.Combine(_s.Work, "guest.elf"), TestImages.Elf(TestImages.HaltLoop, 0x100000));
        string cfg = Path.Combine(_s.Work, "guest.cfg");
        File.WriteAllText(cfg, $"name = \"{name}\"\ntype = \"pvh\"\nkernel = \"guest.elf\"\nmemory = {memoryMb}\nvcpus = 1\n");
        return cfg;
    }

    private void AssertDaemonServesOn(int pid)
    {
        var (code, o, e) = _s.Xl("list");
        Assert.True(code == 0, e);
        Assert.Equal(["Domain-0"], o.Split('\n', StringSplitOptions.RemoveEmptyEntries).Skip(1).Select(l => l.Split(' ')[0]));
        Assert.Equal(pid, _s.DaemonPid);
    }

    [Fact]
    public void MemoryAboveTheMachineMemoryIsRefusedWithEnomem()
    {
        Assert.Equal(0, _s.Xl("list").Code);
        int pid = _s.DaemonPid!.Value;

        var (code, _, err) = _s.Xl("create", Guest("big", 128));

        Assert.Equal(1, code);
        Assert.DoesNotContain("closed the connection", err);
        Assert.Contains("machine memory exhausted", err);
        Assert.Contains("Cannot allocate memory", err);
        AssertDaemonServesOn(pid);
        // The memory the failed build took is free again: a guest that fits is built.
        Assert.Equal(0, _s.Xl("create", "-p", Guest("small", 16)).Code);
    }

    [Fact]
    public void ANameTooLongForItsConsoleLogIsRefusedWithEnametoolong()
    {
        Assert.Equal(0, _s.Xl("list").Code);
        int pid = _s.DaemonPid!.Value;

        var (code, _, err) = _s.Xl("create", Guest(new string('n', 3000), 16));

        Assert.Equal(1, code);
        Assert.DoesNotContain("closed the connection", err);
        Assert.Contains("File name too long", err);
        Assert.Contains("domain name of 3000 characters is too long", err);
        Assert.True(err.Length < 400, $"the answer repeats the name: {err.Length} characters");
        AssertDaemonServesOn(pid);
    }

    [Fact]
    public void AnUnknownRequestIsAnsweredWithEnosysAndTheConnectionServesOn()
    {
        Assert.Equal(0, _s.Xl("list").Code);
        using var sock = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        sock.Connect(new UnixDomainSocketEndPoint(Path.Combine(_s.RunDir, "xl.sock")));
        using var stream = new NetworkStream(sock);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        stream.Write("{\"op\":\"frobnicate\",\"domain\":\"1\"}\n{\"op\":\"ping\"}\n"u8);

        using var refused = JsonDocument.Parse(reader.ReadLine()!);
        Assert.False(refused.RootElement.GetProperty("ok").GetBoolean());
        Assert.Equal(38, refused.RootElement.GetProperty("errno").GetInt32()); // ENOSYS
        Assert.Equal("xensharpd: unknown request \"frobnicate\"", refused.RootElement.GetProperty("error").GetString());

        using var ping = JsonDocument.Parse(reader.ReadLine()!);
        Assert.True(ping.RootElement.GetProperty("ok").GetBoolean());
    }
}
