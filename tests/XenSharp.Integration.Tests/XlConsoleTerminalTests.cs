using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// `xl console` and `xl create -c` on a real terminal (a pseudo-terminal in its default, cooked
/// settings), typed at as a person types: keys reach the guest one by one, Ctrl-C goes to the guest,
/// the terminal answers the guest's queries, and Ctrl-] detaches and gives the terminal back as it was.
/// One Debian guest serves the whole class.
/// </summary>
[Trait("Feature", "PV Console (xenconsoled)")]
public sealed class XlConsoleTerminalTests : IClassFixture<XlConsoleTerminalTests.ShellGuest>
{
    private const string DetachKey = "\u001d"; // Ctrl-]
    private static readonly TimeSpan Answer = TimeSpan.FromSeconds(60);
    private readonly ShellGuest _guest;

    public XlConsoleTerminalTests(ShellGuest guest) => _guest = guest;

    /// <summary>Debian's kernel with the busybox shell on hvc0, created without a console.</summary>
    public sealed class ShellGuest : IDisposable
    {
        public XlHost Xl { get; } = new();
        public const string Name = "tty";

        public ShellGuest()
        {
            var store = new GuestArtifacts();
            Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
            string cfg = LinuxPvhTests.WriteConfig(Xl, store, Name, memory: 256);
            var r = Xl.Run("create", cfg);
            Assert.True(r.ExitCode == 0, r.ToString());
        }

        public void Dispose()
        {
            Xl.Run("destroy", Name);
            Xl.Dispose();
        }
    }

    /// <summary>Attaches on a fresh terminal and waits for a shell prompt.</summary>
    private PtySession Attach()
    {
        var tty = new PtySession(_guest.Xl.RunDir, "console", ShellGuest.Name);
        // The console shows only what the guest writes from now on: ask for a prompt, as a person
        // presses Enter, until the shell (still booting, the first time) gives one.
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (tty.TryWaitFor("~ # ", TimeSpan.FromSeconds(5)) is null)
        {
            Assert.True(clock.Elapsed < TimeSpan.FromMinutes(10), $"no shell prompt; screen:\n{PtySession.Printable(tty.Tail())}");
            Assert.False(tty.HasExited, $"xl console exited {(tty.HasExited ? tty.ExitCode : 0)}:\n{PtySession.Printable(tty.Tail())}");
            tty.Type("\r");
        }
        // A quiet moment, so that what follows answers what the test types next.
        while (tty.TryWaitFor("~ # ", TimeSpan.FromSeconds(2)) is not null) { }
        return tty;
    }

    private static void Detach(PtySession tty)
    {
        tty.Type(DetachKey);
        Assert.True(tty.WaitForExit(TimeSpan.FromSeconds(30)), "Ctrl-] did not detach xl console");
        Assert.Equal(0, tty.ExitCode);
    }

    [Fact]
    public void TheTerminalIsRawWhileAttachedAndRestoredByCtrlRightBracket()
    {
        using var tty = Attach();
        Assert.Equal((false, false, false), tty.Mode());
        Detach(tty);
        // xl itself changed nothing else on the terminal (no application keypad or cursor keys).
        Assert.DoesNotContain("\u001b[?1h", tty.Tail());
        Assert.DoesNotContain("\u001b=", tty.Tail());
        Assert.Equal((true, true, true), tty.Mode());
    }

    [Fact]
    public void KeysReachTheGuestAsTyped()
    {
        using var tty = Attach();
        // Tab completion happens in the guest before Enter: "ech" + Tab becomes "echo ".
        tty.Type("ech\t");
        Assert.NotNull(tty.TryWaitFor("echo ", Answer) ?? FailWith(tty, "Tab did not reach the guest before Enter"));
        tty.Type("tab-$((6*7))\r");
        tty.WaitFor("tab-42", Answer);
        tty.WaitFor("~ # ", Answer);
        // Up arrow recalls the last command in the guest's line editor, again before Enter.
        tty.Type("\u001b[A");
        Assert.NotNull(tty.TryWaitFor("echo tab-$((6*7))", Answer) ?? FailWith(tty, "the up arrow did not reach the guest"));
        tty.Type("\r");
        tty.WaitFor("tab-42", Answer);
        Detach(tty);
    }

    [Fact]
    public void CtrlCInterruptsTheGuestsCommandNotXl()
    {
        using var tty = Attach();
        tty.Type("sleep 600\r");
        Thread.Sleep(2000); // let sleep start: Ctrl-C before it would only clear the line
        tty.Type("\u0003");
        tty.WaitFor("~ # ", Answer);
        Assert.False(tty.HasExited, "Ctrl-C ended xl console");
        tty.Type("echo alive-$((6*7))\r");
        tty.WaitFor("alive-42", Answer);
        Detach(tty);
    }

    [Fact]
    public void TheUsersTerminalAnswersTheGuestsCursorQuery()
    {
        using var tty = Attach();
        tty.CursorReport = "\u001b[17;33R";
        int before = tty.CursorQueries;
        // The guest asks its terminal where the cursor is and reads the answer from its input.
        tty.Type("printf '\\033[6n'; read -s -n 20 -d R pos; echo \"pos=${pos#??}=\"\r");
        tty.WaitFor("pos=17;33=", Answer);
        Assert.True(tty.CursorQueries > before);
        Detach(tty);
    }

    [Fact]
    public void CreateWithConsoleOnATerminalRunsTheGuestAndGivesTheTerminalBack()
    {
        string cfg = Path.Combine(_guest.Xl.RunDir, "hello-tty.cfg");
        File.WriteAllText(cfg, $"name = \"hello-tty\"\ntype = \"pvh\"\nkernel = \"{Repository.PathOf("tests", "guests", "build", "hello.elf")}\"\n" +
            "memory = 32\non_poweroff = \"destroy\"\non_crash = \"destroy\"\n");
        using var tty = new PtySession(_guest.Xl.RunDir, "create", "-c", cfg);
        tty.WaitFor("PASS", TimeSpan.FromMinutes(5));
        Assert.True(tty.WaitForExit(TimeSpan.FromMinutes(2)), $"xl create -c did not return when the guest ended:\n{PtySession.Printable(tty.Tail())}");
        Assert.Equal(0, tty.ExitCode);
        Assert.Equal((true, true, true), tty.Mode());
    }

    private static object? FailWith(PtySession tty, string what) =>
        throw new Xunit.Sdk.XunitException($"{what}; screen:\n{PtySession.Printable(tty.Tail())}");
}
