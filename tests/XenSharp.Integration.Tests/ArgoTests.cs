namespace XenSharp.Integration.Tests;

/// <summary>
/// Argo between two test guests on a daemon started with Xen's argo option (XENSHARP_ARGO, here with mac-permissive
/// so that the hub's ring may accept any domain): the spoke sends eight messages to the hub, which checks sender,
/// type and contents and echoes each back. On a daemon without the option argo_op is refused, as Xen's default is.
/// </summary>
public sealed class ArgoTests : IDisposable
{
    private readonly XlHost _xl = new();

    public ArgoTests() => _xl.Environment["XENSHARP_ARGO"] = "1,mac-permissive=1";

    public void Dispose() => _xl.Dispose();

    private string ConsoleLog(string name)
    {
        var path = Path.Combine(_xl.RunDir, "console", name + ".log");
        try { return File.Exists(path) ? File.ReadAllText(path) : ""; }
        catch (IOException) { return ""; }
    }

    [Fact, Trait("Feature", "Argo: Inter-domain message delivery by hypercall")]
    public void TwoGuestsExchangeMessages()
    {
        string cfg = Repository.PathOf("tests", "guests", "argo.cfg");
        var r = _xl.Run("create", cfg, "name=\"hub\"", "cmdline=\"role=hub\"");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.True(XlHost.WaitUntil(() => ConsoleLog("hub").Contains("# ready hub"), TimeSpan.FromMinutes(2)), ConsoleLog("hub"));
        string hub = _xl.Run("domid", "hub").Stdout.Trim();
        r = _xl.Run("create", cfg, "name=\"spoke\"", $"cmdline=\"role=spoke hub={hub}\"");
        Assert.True(r.ExitCode == 0, r.ToString());
        string spoke = _xl.Run("domid", "spoke").Stdout.Trim();
        Assert.True(XlHost.WaitUntil(() => ConsoleLog("hub").Contains("DONE") && ConsoleLog("spoke").Contains("DONE"), TimeSpan.FromMinutes(3)),
            ConsoleLog("hub") + ConsoleLog("spoke"));
        string h = ConsoleLog("hub"), s = ConsoleLog("spoke");
        Assert.Contains("failed=0", h);
        Assert.Contains("failed=0", s);
        // The hub saw each message from the spoke's domain, in order, and VIRQ_ARGO told it so.
        for (int i = 0; i < 8; i++)
            Assert.Contains($"# hub got \"argo message {i}\" type=0x{0x100 + i:x} from={spoke}", h);
        Assert.Contains("PASS argo.virq_raised", h);
        Assert.Contains($"# spoke exchanged 8 messages with d{hub}", s);
        Assert.Contains("PASS argo.spoke_echoes", s);
        Assert.Contains("PASS argo.no_ring", s);
    }
}
