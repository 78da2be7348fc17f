namespace XenSharp.Xl.Commands;

/// <summary>
/// How xl shows the daemon's progress lines while it saves, migrates or checkpoints: each pre-copy round and the
/// suspended guest's last pages as a line of their own; Remus's checkpoints, which come several times a second for
/// as long as it runs, as one status line rewritten in place on a terminal, and as plain lines for the first few and
/// then every 50th when stderr is a file or pipe.
/// </summary>
internal sealed class MigrationProgress(TextWriter err, string prefix, bool? terminal = null)
{
    private readonly bool _terminal = terminal ?? (!Console.IsErrorRedirected && ReferenceEquals(err, Console.Error));
    private bool _statusShown;
    private long _checkpoints;

    public void Report(string line)
    {
        if (line.StartsWith("Checkpoint ", StringComparison.Ordinal))
        {
            _checkpoints++;
            if (_terminal)
            {
                err.Write($"\r{prefix}: {line}\x1b[K");
                err.Flush();
                _statusShown = true;
                return;
            }
            if (_checkpoints > 5 && _checkpoints % 50 != 0) return;
        }
        Done();
        err.WriteLine($"{prefix}: {line}");
    }

    /// <summary>Ends a status line left on the terminal, so what follows starts on a line of its own.</summary>
    public void Done()
    {
        if (!_statusShown) return;
        err.WriteLine();
        _statusShown = false;
    }
}
