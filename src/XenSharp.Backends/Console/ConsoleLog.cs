namespace XenSharp.Backends.Console;

/// <summary>
/// How large a domain's console log may grow: at <see cref="MaxBytes"/> the log is rotated
/// (NAME.log becomes NAME.log.1, .1 becomes .2, ...) and <see cref="Files"/> rotated files are kept,
/// so a domain's logs never take more than (Files + 1) × MaxBytes and the newest output is always
/// in NAME.log. xenconsoled itself only reopens its logs on SIGHUP and leaves rotation to
/// logrotate; a daemon that also holds the guests needs a bound of its own.
/// </summary>
public sealed record ConsoleLogLimits(long MaxBytes, int Files)
{
    /// <summary>4 MiB per log and 3 rotated files: at most 16 MiB per domain, several boots' worth of a chatty kernel.</summary>
    public static readonly ConsoleLogLimits Default = new(4 << 20, 3);

    /// <summary>No bound: the log only grows (an external logrotate and SIGHUP, as with xenconsoled).</summary>
    public static readonly ConsoleLogLimits Unbounded = new(long.MaxValue, 0);
}

/// <summary>
/// A domain's console log file, bounded by <see cref="ConsoleLogLimits"/>. Every open log is
/// known to <see cref="ReopenAll"/>, which the daemon calls on SIGHUP as xenconsoled does, so an
/// external logrotate that moved the file gets a fresh one.
/// </summary>
public sealed class ConsoleLog : IDisposable
{
    private static readonly Lock OpenLock = new();
    private static readonly HashSet<ConsoleLog> Open = [];

    private readonly Lock _lock = new();
    private readonly ConsoleLogLimits _limits;
    private FileStream? _file;
    private long _size;

    public string Path { get; }

    public ConsoleLog(string path, ConsoleLogLimits limits)
    {
        if (limits.MaxBytes <= 0 || limits.Files < 0) throw new ArgumentOutOfRangeException(nameof(limits));
        Path = path;
        _limits = limits;
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(path)!);
        OpenFile();
        lock (OpenLock) Open.Add(this);
    }

    private void OpenFile()
    {
        _file = new FileStream(Path, FileMode.Append, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete);
        _size = _file.Length;
    }

    /// <summary>Appends the guest's output, rotating first when it would pass the bound. A full disk
    /// loses log lines, never the guest's console.</summary>
    public void Write(ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            if (_file is null) return;
            try
            {
                // More than a whole log in one go keeps its newest part.
                if (data.Length > _limits.MaxBytes) data = data[^(int)_limits.MaxBytes..];
                if (_size + data.Length > _limits.MaxBytes && _size > 0) Rotate();
                _file.Write(data);
                _file.Flush();
                _size += data.Length;
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>NAME.log.(Files-1) → NAME.log.Files, ..., NAME.log → NAME.log.1, then a new NAME.log
    /// (with no rotated files, the log starts over).</summary>
    private void Rotate()
    {
        _file!.Dispose();
        _file = null;
        try
        {
            if (_limits.Files == 0) File.Delete(Path);
            else
            {
                for (int i = _limits.Files - 1; i >= 1; i--)
                {
                    string from = $"{Path}.{i}";
                    if (File.Exists(from)) File.Move(from, $"{Path}.{i + 1}", overwrite: true);
                }
                File.Move(Path, Path + ".1", overwrite: true);
            }
        }
        finally { OpenFile(); } // a rename that failed still leaves a log to write to
    }

    /// <summary>Closes and reopens the file by name (after logrotate moved it).</summary>
    public void Reopen()
    {
        lock (_lock)
        {
            if (_file is null) return;
            _file.Dispose();
            try { OpenFile(); }
            catch (IOException) { _file = null; }
        }
    }

    /// <summary>SIGHUP: every open console log is reopened, as xenconsoled does.</summary>
    public static void ReopenAll()
    {
        ConsoleLog[] all;
        lock (OpenLock) all = [.. Open];
        foreach (ConsoleLog log in all) log.Reopen();
    }

    public void Dispose()
    {
        lock (OpenLock) Open.Remove(this);
        lock (_lock)
        {
            _file?.Dispose();
            _file = null;
        }
    }
}
