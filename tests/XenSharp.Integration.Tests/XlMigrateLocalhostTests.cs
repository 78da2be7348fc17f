using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

/// <summary>
/// xl migrate to the host the guest is on (<c>xl migrate DOM localhost</c>, which Xen allows): one daemon is sender
/// and receiver, <c>-s</c> a script that plays <c>ssh localhost</c> by running xl migrate-receive here. The incoming
/// domain is NAME--incoming while the guest's domain still holds NAME, as xl's receiver makes it; the sender renames
/// its domain NAME--migratedaway before the receiver may start its copy, which takes NAME and a new domid. The
/// freestanding guest tests/guests/dirty.c keeps counting and checking what it wrote across the move.
/// </summary>
[Trait("Feature", "xl migrate")]
public sealed partial class XlMigrateLocalhostTests : IDisposable
{
    private readonly XlHost _xl = new();
    private readonly string _dir = Directory.CreateTempSubdirectory("xensharp-migrate-local-").FullName;

    public void Dispose()
    {
        _xl.Dispose();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    /// <summary>"SCRIPT localhost xl migrate-receive": runs the receiver against this host's daemon; with
    /// <paramref name="cutAfter"/> it gets only that many bytes of the stream.</summary>
    private string SshScript(long? cutAfter = null)
    {
        string bin = XlHost.XlCommandDirectory(_dir);
        string script = Path.Combine(_dir, cutAfter is null ? "ssh-local" : "ssh-local-cut");
        string run = $"env XENSHARP_RUNDIR={_xl.RunDir} PATH={bin}:$PATH \"$@\"";
        File.WriteAllText(script, $"#!/bin/bash\nshift\n{(cutAfter is long n ? $"head -c {n} | {run}" : $"exec {run}")}\n");
        File.SetUnixFileMode(script, (UnixFileMode)0b111_101_101);
        return script;
    }

    [GeneratedRegex(@"# tick (\d+) n=(\d+)")]
    private static partial Regex Tick();

    private string ConsoleLog(string name)
    {
        var path = Path.Combine(_xl.RunDir, "console", name + ".log");
        try { return File.Exists(path) ? File.ReadAllText(path) : ""; }
        catch (IOException) { return ""; }
    }

    private long LastTick(string name) =>
        Tick().Matches(ConsoleLog(name)).Select(m => long.Parse(m.Groups[1].Value)).DefaultIfEmpty(0).Max();

    /// <summary>The domains xl list shows: name and domid.</summary>
    private List<(string Name, uint DomId)> Domains()
    {
        var r = _xl.Run("list");
        r.Check();
        var list = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Skip(1);
        return [.. list.Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(f => f.Length > 1 && f[0] != "Domain-0").Select(f => (f[0], uint.Parse(f[1])))];
    }

    private uint CreateDirtyGuest(string name)
    {
        Assert.True(File.Exists(Repository.PathOf("tests", "guests", "build", "dirty.elf")), "dirty.elf is not built (make -C tests/guests)");
        _xl.Run("create", Repository.PathOf("tests", "guests", "dirty.cfg"), $"name=\"{name}\"").Check();
        Assert.True(XlHost.WaitUntil(() => LastTick(name) >= 1, TimeSpan.FromMinutes(2)), "the guest never ticked\n" + ConsoleLog(name));
        return Assert.Single(Domains(), x => x.Name == name).DomId;
    }

    [Fact]
    public void GuestMigratedToThisHostTakesANewDomidKeepsItsNameAndCountsOn()
    {
        uint before = CreateDirtyGuest("homebody");
        var r = _xl.Run(TimeSpan.FromMinutes(5), "migrate", "-s", SshScript(), "homebody", "localhost");
        Assert.True(r.ExitCode == 0, r + "\n--- console\n" + ConsoleLog("homebody") + "\n--- dmesg\n" + _xl.Run("dmesg").Stdout);
        Assert.Contains("homebody--incoming), requesting permission to start domain.", r.Stderr);
        Assert.Contains("Migration successful.", r.Stderr);

        var after = Assert.Single(Domains());
        Assert.Equal("homebody", after.Name);
        Assert.NotEqual(before, after.DomId);

        // The new domain's console log goes on in the guest's: its next ticks come from the new domain, and the
        // guest's own check of every value it wrote keeps passing.
        long at = LastTick("homebody");
        Assert.True(XlHost.WaitUntil(() => LastTick("homebody") > at + 1, TimeSpan.FromMinutes(2)),
            $"no tick after {at} in the migrated guest\n" + ConsoleLog("homebody"));
        Assert.DoesNotContain("FAIL", ConsoleLog("homebody"));
        Assert.False(File.Exists(Path.Combine(_xl.RunDir, "console", "homebody--incoming.log")), "the incoming domain logged under its temporary name");

        // And it moves again, as any domain does.
        r = _xl.Run(TimeSpan.FromMinutes(5), "migrate", "-s", SshScript(), "homebody", "localhost");
        Assert.True(r.ExitCode == 0, r.ToString());
        var again = Assert.Single(Domains());
        Assert.Equal("homebody", again.Name);
        Assert.NotEqual(after.DomId, again.DomId);
        _xl.Run("destroy", "homebody").Check();
    }

    [Fact]
    public void StreamCutOnTheWayToThisHostLeavesTheGuestRunningUnderItsNameAndNoIncomingDomain()
    {
        uint before = CreateDirtyGuest("stayhome");
        var r = _xl.Run(TimeSpan.FromMinutes(5), "migrate", "-s", SshScript(cutAfter: 4 << 20), "stayhome", "localhost");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("runs on here", r.Stderr);
        Assert.True(XlHost.WaitUntil(() => Domains().Count == 1, TimeSpan.FromSeconds(30)), "a second domain stayed\n" + _xl.Run("list"));
        Assert.Equal(("stayhome", before), Assert.Single(Domains()));
        long at = LastTick("stayhome");
        Assert.True(XlHost.WaitUntil(() => LastTick("stayhome") > at, TimeSpan.FromMinutes(2)), "the guest stopped counting\n" + ConsoleLog("stayhome"));
        Assert.DoesNotContain("FAIL", ConsoleLog("stayhome"));
        _xl.Run("destroy", "stayhome").Check();
    }

    /// <summary>xl renames the sender's domain NAME--migratedaway before the target may start; when that name is
    /// taken the migration stops there: the guest runs on under its name, the incoming domain goes.</summary>
    [Fact]
    public void SenderThatCannotRenameItsDomainAwayKeepsTheGuest()
    {
        uint before = CreateDirtyGuest("blocked");
        uint squatter = CreateDirtyGuest("blocked--migratedaway");
        var r = _xl.Run(TimeSpan.FromMinutes(5), "migrate", "-s", SshScript(), "blocked", "localhost");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("already exists", r.Stderr);
        Assert.Contains("runs on here", r.Stderr);
        Assert.True(XlHost.WaitUntil(() => Domains().Count == 2, TimeSpan.FromSeconds(30)), "the incoming domain stayed\n" + _xl.Run("list"));
        Assert.Equal([("blocked", before), ("blocked--migratedaway", squatter)], Domains().OrderBy(x => x.DomId).ToList());
        long at = LastTick("blocked");
        Assert.True(XlHost.WaitUntil(() => LastTick("blocked") > at, TimeSpan.FromMinutes(2)), "the guest stopped counting\n" + ConsoleLog("blocked"));
        Assert.DoesNotContain("FAIL", ConsoleLog("blocked"));
    }
}
