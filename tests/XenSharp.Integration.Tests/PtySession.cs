using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Runs xl on a fresh pseudo-terminal, as its controlling terminal, and plays the person and the
/// terminal emulator on the other side: keys go in as typed, the screen is what comes out, and cursor
/// position queries (ESC[6n) are answered as a terminal answers them.
/// </summary>
public sealed partial class PtySession : IDisposable
{
    private const int O_RDWR = 2, O_NOCTTY = 0x100;
    private const uint ECHO = 0x8, ICANON = 0x2, ISIG = 0x1;
    private const string CursorQuery = "\u001b[6n";

    private readonly SafeFileHandle _master;
    private readonly FileStream _in, _out;
    private readonly Process _p;
    private readonly OutputLog _screen = new();
    private int _queriesSeen;

    /// <summary>The answer to ESC[6n, as a terminal with its cursor at row 24, column 1 gives it.</summary>
    public string CursorReport { get; set; } = "\u001b[24;1R";

    /// <summary>How many cursor position queries came out of xl so far.</summary>
    public int CursorQueries => Volatile.Read(ref _queriesSeen);

    public PtySession(string runDir, params string[] xlArgs) : this(runDir, ["dotnet", XlHost.XlDll, .. xlArgs], true) { }

    /// <summary>Runs <paramref name="command"/> (a program and its arguments) on the pty instead of xl.</summary>
    public static PtySession Command(string runDir, params string[] command) => new(runDir, command, true);

    private PtySession(string runDir, IReadOnlyList<string> command, bool _)
    {
        int fd = posix_openpt(O_RDWR | O_NOCTTY);
        if (fd < 0 || grantpt(fd) != 0 || unlockpt(fd) != 0)
            throw new IOException($"cannot open a pseudo-terminal (errno {Marshal.GetLastPInvokeError()})");
        _master = new SafeFileHandle(fd, ownsHandle: true);
        var name = new byte[128];
        if (ptsname_r(fd, name, name.Length) != 0) throw new IOException("ptsname_r failed");
        string slave = Encoding.ASCII.GetString(name, 0, Array.IndexOf(name, (byte)0));
        _in = new FileStream(_master, FileAccess.Read, 1);
        _out = new FileStream(_master, FileAccess.Write, 1);

        // A new session whose controlling terminal is the pty (setsid --ctty on fd 0), with the pty's
        // default settings: echo, line editing and Ctrl-C as SIGINT, as a login terminal has them.
        var psi = new ProcessStartInfo("/bin/sh") { WorkingDirectory = Repository.Root, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("exec setsid --ctty \"$@\" <>\"$PTY\" >&0 2>&0");
        psi.ArgumentList.Add("sh");
        foreach (var a in command) psi.ArgumentList.Add(a);
        psi.Environment["PTY"] = slave;
        psi.Environment["XENSHARP_RUNDIR"] = runDir;
        psi.Environment["TERM"] = "xterm";
        _p = Process.Start(psi)!;
        new Thread(Pump) { IsBackground = true, Name = "pty" }.Start();
    }

    public bool HasExited => _p.HasExited;
    public int ExitCode => _p.ExitCode;

    private void Pump()
    {
        var buf = new byte[4096];
        try
        {
            string carry = "";
            int n;
            while ((n = _in.Read(buf)) > 0)
            {
                string chunk = Encoding.Latin1.GetString(buf, 0, n);
                // Every query is answered, as a terminal emulator does (one split across reads too),
                // before anyone waiting on the screen sees it.
                string scan = carry + chunk;
                lock (_screen.Sync)
                {
                    for (int i = scan.IndexOf(CursorQuery, StringComparison.Ordinal); i >= 0;
                         i = scan.IndexOf(CursorQuery, i + 1, StringComparison.Ordinal))
                    {
                        Interlocked.Increment(ref _queriesSeen);
                        Type(CursorReport);
                    }
                    _screen.Append(chunk);
                }
                carry = scan.Length < CursorQuery.Length ? scan : scan[^(CursorQuery.Length - 1)..];
            }
        }
        catch (IOException) { /* EIO: the slave side closed */ }
        catch (ObjectDisposedException) { /* disposed before the EIO came: the session is over */ }
        _screen.Pulse();
    }

    /// <summary>Keys as a person types them, one write each.</summary>
    public void Type(string keys)
    {
        foreach (char c in keys)
        {
            _out.WriteByte((byte)c);
            _out.Flush();
        }
    }

    /// <summary>Waits for <paramref name="text"/> after what earlier waits consumed; returns the screen
    /// up to and including it, or null when it did not come within <paramref name="limit"/>.</summary>
    public string? TryWaitFor(string text, TimeSpan limit) => _screen.TryWaitFor(text, limit);

    public string WaitFor(string text, TimeSpan limit) =>
        TryWaitFor(text, limit) ?? throw new Xunit.Sdk.XunitException(
            $"\"{Printable(text)}\" did not appear within {limit} (xl {(_p.HasExited ? $"exited {_p.ExitCode}" : "running")}); screen:\n{Printable(Tail())}");

    public string Tail() => _screen.Tail(3000);

    public static string Printable(string s)
    {
        var b = new StringBuilder();
        foreach (char c in s)
        {
            if (c == '\n' || c >= ' ' && c < 0x7f) b.Append(c);
            else if (c != '\r') b.Append($"<{(int)c:x2}>");
        }
        return b.ToString();
    }

    /// <summary>The terminal's line discipline now: echo, canonical input, signals from keys.</summary>
    public (bool Echo, bool Canonical, bool Signals) Mode()
    {
        var t = new byte[64];
        if (tcgetattr((int)_master.DangerousGetHandle(), t) != 0) throw new IOException("tcgetattr failed");
        uint lflag = BitConverter.ToUInt32(t, 12);
        return ((lflag & ECHO) != 0, (lflag & ICANON) != 0, (lflag & ISIG) != 0);
    }

    public bool WaitForExit(TimeSpan limit) => _p.WaitForExit(limit);

    public void Dispose()
    {
        if (!_p.HasExited) _p.Kill(entireProcessTree: true);
        _p.WaitForExit();
        _p.Dispose();
        _in.Dispose();
        _out.Dispose();
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int posix_openpt(int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int grantpt(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int unlockpt(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ptsname_r(int fd, [Out] byte[] buf, nint len);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int tcgetattr(int fd, [Out] byte[] termios);
}
