using System.Text.RegularExpressions;
using Spectre.Console;

namespace XenSharp.Xl.Commands;

/// <summary>
/// How xl shows the daemon's progress while it migrates or checkpoints. On a terminal (stderr a tty, where xl's own
/// logger rewrites its progress lines in place) a Spectre.Console progress display: a bar per pre-copy round with
/// the pages sent, their rate and what is left, each round's summary line above it, and Remus's checkpoints as one
/// line rewritten in place. Otherwise plain lines: each round's summary and the suspended guest's last pages, and
/// of Remus's checkpoints, which come several times a second for as long as it runs, the first five and then every
/// 50th. Lines starting with '~' are progress within a round, for the bar only.
/// </summary>
internal sealed partial class MigrationProgress
{
    private readonly TextWriter _err;
    private readonly string _prefix;
    private readonly ProgressContext? _bars;
    private readonly IAnsiConsole? _console;
    private readonly Dictionary<int, ProgressTask> _rounds = [];
    private ProgressTask? _checkpoints;
    private long _checkpointCount;

    private MigrationProgress(TextWriter err, string prefix, IAnsiConsole? console, ProgressContext? bars)
    {
        _err = err;
        _prefix = prefix;
        _console = console;
        _bars = bars;
    }

    /// <summary>Runs <paramref name="body"/> with a progress display fit for where stderr goes.</summary>
    public static T Run<T>(TextWriter err, string prefix, Func<MigrationProgress, T> body)
    {
        if (Console.IsErrorRedirected)
            return body(new MigrationProgress(err, prefix, null, null));
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(err) });
        return console.Progress()
            .AutoClear(true)
            .HideCompleted(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(),
                new TransferSpeedColumn(), new RemainingTimeColumn())
            .Start(bars => body(new MigrationProgress(err, prefix, console, bars)));
    }

    /// <summary>
    /// Runs <paramref name="work"/> (one request the daemon answers when it is done, as xl save or xl restore) with,
    /// on a terminal, a progress bar that follows <paramref name="position"/> (bytes done so far, or null when it
    /// cannot be known) towards <paramref name="total"/> bytes; elsewhere it just runs it.
    /// </summary>
    public static T Track<T>(TextWriter err, string description, double total, Func<long?> position, Func<T> work)
    {
        if (Console.IsErrorRedirected || total <= 0)
            return work();
        var job = Task.Run(work);
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(err) });
        console.Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(),
                new TransferSpeedColumn(), new RemainingTimeColumn())
            .Start(bars =>
            {
                var task = bars.AddTask(Markup.Escape(description), maxValue: total);
                while (!((IAsyncResult)job).AsyncWaitHandle.WaitOne(100))
                    if (position() is long done)
                        task.Value = Math.Min(done, total);
            });
        return job.GetAwaiter().GetResult();
    }

    /// <summary>About how far the daemon has read a file since this was called: what it has read in all
    /// (/proc/PID/io's rchar), less what it had read before; its other reads (consoles, xenstore) are small beside a
    /// save file. Its descriptor's offset would not do: .NET reads files at explicit offsets. Null when it cannot be
    /// seen.</summary>
    public static Func<long?> DaemonReadSince(string pidFile)
    {
        string? io = null;
        long? start = null;
        try { io = $"/proc/{File.ReadAllText(pidFile).Trim()}/io"; start = ReadChars(io); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return () => io is not null && start is long s && ReadChars(io) is long now ? now - s : null;
    }

    private static long? ReadChars(string io)
    {
        try
        {
            foreach (var line in File.ReadLines(io))
                if (line.StartsWith("rchar:", StringComparison.Ordinal) && long.TryParse(line.AsSpan(6).Trim(), out long n))
                    return n;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return null;
    }

    [GeneratedRegex(@"^~Iteration (\d+): (\d+) of (\d+) pages")]
    private static partial Regex Partial();

    [GeneratedRegex(@"^Checkpoint (\d+): (\d+) pages, (\d+) in all, .*stopped ([\d.]+) ms")]
    private static partial Regex CheckpointLine();

    public void Report(string line)
    {
        if (line.StartsWith('~'))
        {
            if (_bars is null || Partial().Match(line) is not { Success: true } m) return;
            int round = int.Parse(m.Groups[1].Value);
            if (!_rounds.TryGetValue(round, out var task))
                _rounds[round] = task = _bars.AddTask($"{_prefix}: iteration {round}");
            task.MaxValue = Math.Max(1, long.Parse(m.Groups[3].Value) * 4096.0);
            task.Value = Math.Min(task.MaxValue, long.Parse(m.Groups[2].Value) * 4096.0);
            return;
        }
        if (line.StartsWith("Iteration ", StringComparison.Ordinal) && _bars is not null)
            foreach (var t in _rounds.Values) t.StopTask();
        if (line.StartsWith("Checkpoint ", StringComparison.Ordinal))
        {
            _checkpointCount++;
            if (_bars is not null)
            {
                var c = CheckpointLine().Match(line);
                // The bar is (all but) full: its figures are what has been sent in all and the rate of the checkpoints.
                _checkpoints ??= _bars.AddTask("checkpoints");
                if (c.Success)
                {
                    // A byte short of full: a finished task would be hidden.
                    _checkpoints.MaxValue = long.Parse(c.Groups[3].Value) * 4096.0 + 1;
                    _checkpoints.Value = _checkpoints.MaxValue - 1;
                }
                _checkpoints.Description = c.Success
                    ? $"{_prefix}: checkpoint {c.Groups[1].Value}, {c.Groups[2].Value} pages, {c.Groups[4].Value} ms"
                    : $"{_prefix}: {Markup.Escape(line)}";
                return;
            }
            if (_checkpointCount > 5 && _checkpointCount % 50 != 0) return;
        }
        WriteLine($"{_prefix}: {line}");
    }

    /// <summary>A line of its own, above the progress display while it runs.</summary>
    public void WriteLine(string text)
    {
        if (_console is not null) _console.WriteLine(text);
        else _err.WriteLine(text);
    }

    /// <summary>Ends the display's tasks, so that what follows is not drawn under a bar.</summary>
    public void Done()
    {
        if (_bars is null) return;
        foreach (var t in _rounds.Values) t.StopTask();
        _checkpoints?.StopTask();
    }
}
