using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using XenSharp.Daemon;
using XenSharp.Store;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;
using XenSharp.Toolstack.Tests.Builder;
using XenSharp.Toolstack.Tests.Lifecycle;

namespace XenSharp.Toolstack.Tests.Fuzz;

/// <summary>
/// Mutated control requests (one of every operation, as xl writes them) through the daemon's JSON decoding
/// and, over its real socket, through the control server and the host: the decoder gives a request or a
/// <see cref="JsonException"/>; the daemon answers each line with a response (and drops a client whose line
/// it cannot read), and goes on serving everyone else.
/// </summary>
public sealed class ControlProtocolFuzzTests : IDisposable
{
    private static readonly ControlRequest[] Requests =
    [
        new PingRequest(),
        new CreateRequest("name=\"f\"\ntype=\"pvh\"\nkernel=\"k.elf\"\nmemory=4\n", "/tmp/f.cfg", "/tmp", ["vcpus=1"], true),
        new ListRequest(["f", "1"], true), new DestroyRequest("f", false), new ShutdownRequest("f", ShutdownKind.Reboot, true),
        new PauseRequest("f"), new UnpauseRequest("1"), new RenameRequest("f", "g"), new VcpuListRequest([]),
        new VcpuPinRequest("f", -1, "0-1", "-"), new VcpuSetRequest("f", 1, false), new MemSetRequest("f", 4096),
        new MemMaxRequest("f", 8192), new InfoRequest(), new DmesgRequest(false), new DebugKeysRequest("h"),
        new SysrqRequest("f", 'b'), new TriggerRequest("f", "nmi", 0), new DumpCoreRequest("f", "/nonexistent/core"),
        new SaveRequest("f", "/nonexistent/f.save", false, null), new RestoreRequest("/nonexistent/f.save", null, null, null, true),
        new ConsoleAttachRequest("nonexistent"), new CpupoolListRequest(null),
        new CpupoolCreateRequest("p", "credit", "", null), new CpupoolDestroyRequest("p"), new CpupoolRenameRequest("p", "q"),
        new CpupoolCpuRequest("p", "node:0", false), new CpupoolMigrateRequest("f", "Pool-0"),
        new SchedCreditRequest("credit", "f", 256, 0, null, false, null, null),
        new SchedRtdsRequest("f", null, [0], [10000], [4000], [true], false),
    ];

    private static readonly string[] Tokens =
    [
        "{", "}", "[", "]", ",", ":", "\"", "\\", "\\u0000", "\\ud800", "null", "true", "false", "0", "-1", "1e999",
        "2147483648", "9223372036854775808", "\"op\":", "\"op\":\"create\"", "\"op\":\"ping\"", "\"op\":null", "\"op\":1",
        "\"domain\":", "\"configText\":", "\"key\":\"bb\"", "\"kind\":\"halt\"", "{\"$ref\":\"1\"}", "\n", "\u00ff",
    ];

    private static readonly Mutator Lines = new(
        [.. Requests.Select(r => (r.GetType().Name, JsonSerializer.SerializeToUtf8Bytes(r, ControlJson.Options)))],
        [.. Tokens.Select(Encoding.UTF8.GetBytes)]);

    private readonly string _dir = Directory.CreateTempSubdirectory("xs-ctl-fuzz").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void MutatedRequestsDecodeOrFailAsJson()
    {
        Fuzz.Run(Lines.Cases(), 3000, m =>
        {
            string line = Encoding.UTF8.GetString(Lines.Apply(m));
            Fuzz.Expect<JsonException>(() => ControlJson.ReadRequest(line), 64L * line.Length + (1 << 20));
        }, m => $"{Lines.Print(m)}: {Fuzz.Quote(Encoding.UTF8.GetString(Lines.Apply(m)))}");
    }

    [Fact]
    public void TheDaemonAnswersEachMutatedRequestAndKeepsServing()
    {
        File.WriteAllBytes(Path.Combine(_dir, "k.elf"), TestImages.Elf(TestImages.HaltLoop, 0x100000));
        using var xs = new XenStored();
        using var hv = new HeldHypervisor();
        using var host = new Host(hv, xs, new RunPaths(Path.Combine(_dir, "run")));
        string socket = Path.Combine(_dir, "xl.sock");
        using var server = new ControlServer(socket, host);

        Fuzz.Run(Lines.Cases(), 1000, m =>
        {
            byte[] line = Lines.Apply(m);
            using (var s = Connect(socket))
            {
                s.Send([.. line.Where(b => b != '\n'), (byte)'\n']);
                s.ReceiveTimeout = (int)Fuzz.HangGuard.TotalMilliseconds;
                string? reply = ReadLine(s);
                // Answered, whether the daemon then drops the client (for a malformed line) or not.
                Assert.NotNull(reply);
                var r = JsonSerializer.Deserialize<ControlResponse>(reply, ControlJson.Options);
                Assert.NotNull(r);
                Assert.True(r.Ok || !string.IsNullOrWhiteSpace(r.Error), reply);
            }
            using var c = ControlClient.TryConnect(socket) ?? throw new FuzzFailure("the control socket is gone");
            Assert.Equal(Environment.ProcessId, c.Send(new PingRequest()).Pid);
        }, m => $"{Lines.Print(m)}: {Fuzz.Quote(Encoding.UTF8.GetString(Lines.Apply(m)))}");
    }

    [Theory]
    [InlineData("{\"o\":\"ping\"}", "the request has no \"op\"")]
    [InlineData("{}", "the request has no \"op\"")]
    [InlineData("{\"op\":\"create\"}", "the request lacks \"configText\"")]
    [InlineData("{\"op\":\"pause\",\"domain\":null}", "the request lacks \"domain\"")]
    [InlineData("{\"op\":\"create\",\"configText\":\"\",\"configFile\":\"f\",\"overrides\":[null],\"paused\":false}", "the request's \"overrides\" holds a null")]
    public void RequestsWithoutAnOpOrAMemberAreMalformed(string line, string why)
    {
        Assert.Equal(why, Assert.Throws<JsonException>(() => ControlJson.ReadRequest(line)).Message);

        // The daemon says so instead of dropping the client without a word.
        using var xs = new XenStored();
        using var hv = new HeldHypervisor();
        using var host = new Host(hv, xs, new RunPaths(Path.Combine(_dir, "run")));
        string socket = Path.Combine(_dir, "xl.sock");
        using var server = new ControlServer(socket, host);
        using var s = Connect(socket);
        s.Send(Encoding.UTF8.GetBytes(line + "\n"));
        var r = JsonSerializer.Deserialize<ControlResponse>(ReadLine(s) ?? "null", ControlJson.Options);
        Assert.Equal($"xensharpd: malformed request: {why}", r?.Error);
    }

    [Fact]
    public void RequestsAsXlWritesThemStillDecode()
    {
        foreach (var request in Requests)
            Assert.Equal(request.GetType(), ControlJson.ReadRequest(JsonSerializer.Serialize<ControlRequest>(request, ControlJson.Options))?.GetType());
        // Nullable members may be left out, as xl's writer leaves out nulls.
        Assert.IsType<CpupoolListRequest>(ControlJson.ReadRequest("{\"op\":\"cpupool-list\"}"));
    }

    private static Socket Connect(string path)
    {
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        s.Connect(new UnixDomainSocketEndPoint(path));
        return s;
    }

    /// <summary>One line, or null when the daemon closed the connection first.</summary>
    private static string? ReadLine(Socket s)
    {
        var line = new List<byte>();
        var one = new byte[1];
        while (s.Receive(one) == 1)
        {
            if (one[0] == '\n') return Encoding.UTF8.GetString([.. line]);
            line.Add(one[0]);
        }
        return null;
    }
}
