using System.Runtime.InteropServices;

namespace XenSharp.Xl;

/// <summary>
/// Puts the terminal on standard input into raw mode for as long as a console is attached, as
/// xenconsole does: no local echo or line editing, no signals from Ctrl-C or Ctrl-Z, so every key
/// reaches the guest as typed. Disposing (or SIGTERM/SIGHUP/SIGQUIT) restores the saved settings.
/// </summary>
/// <remarks>termios is changed in-process: an stty child would let .NET's console code put the
/// terminal back the way it found it when the child exits.</remarks>
internal sealed partial class RawTerminal : IDisposable
{
    private const int StdIn = 0;
    private const int TCSANOW = 0;
    // struct termios on Linux is 60 bytes; the extra room costs nothing.
    private const int TermiosSize = 64;

    private readonly byte[] _saved = new byte[TermiosSize];
    private readonly PosixSignalRegistration[] _signals;
    private int _restored;

    private RawTerminal()
    {
        _signals =
        [
            PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal),
            PosixSignalRegistration.Create(PosixSignal.SIGHUP, OnSignal),
            PosixSignalRegistration.Create(PosixSignal.SIGQUIT, OnSignal),
        ];
    }

    /// <summary>Raw mode on standard input, or null when it is not a terminal (a pipe, a file).</summary>
    public static RawTerminal? Enter()
    {
        if (isatty(StdIn) != 1) return null;
        var t = new RawTerminal();
        if (tcgetattr(StdIn, t._saved) != 0)
        {
            t.DisposeSignals();
            return null;
        }
        var raw = (byte[])t._saved.Clone();
        cfmakeraw(raw);
        if (tcsetattr(StdIn, TCSANOW, raw) != 0)
        {
            t.DisposeSignals();
            return null;
        }
        return t;
    }

    private void OnSignal(PosixSignalContext ctx)
    {
        // Leave the terminal usable, then let the signal end xl as it would have.
        Restore();
    }

    private void Restore()
    {
        if (Interlocked.Exchange(ref _restored, 1) == 0) tcsetattr(StdIn, TCSANOW, _saved);
    }

    private void DisposeSignals()
    {
        foreach (var s in _signals) s.Dispose();
    }

    public void Dispose()
    {
        Restore();
        DisposeSignals();
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int isatty(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int tcgetattr(int fd, [Out] byte[] termios);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int tcsetattr(int fd, int optionalActions, byte[] termios);

    [LibraryImport("libc")]
    private static partial void cfmakeraw([In, Out] byte[] termios);
}
