using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>xl dump-core and the coredump-* actions: the domain's core, written by <see cref="DumpCore"/>.</summary>
public sealed partial class Host
{
    /// <summary>The coredump-* actions: the domain's core, in Xen's dump-core format, to $RUNDIR/dump/NAME.core.</summary>
    private void CoreDump(Domain d)
    {
        string dir = Path.Combine(_paths.RunDir, "dump");
        Directory.CreateDirectory(dir);
        WriteCore(d, Path.Combine(dir, d.Config.Name + ".core"));
    }

    /// <summary>xl dump-core: the domain is paused while its core is written, as one moment's state.</summary>
    private void DumpCoreTo(Domain d, string file)
    {
        if (!Path.IsPathFullyQualified(file)) throw new ControlException($"core file {file}: the path must be absolute", 22);
        d.Hv.Pause();
        try { WriteCore(d, file); }
        finally { if (!d.Destroyed) d.Hv.Unpause(); }
    }

    private void WriteCore(Domain d, string file)
    {
        Stream f;
        try { f = File.Create(file); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ControlException($"cannot write core file {file}: {e.Message}", 5);
        }
        using (f)
        lock (d.MemoryUse)
        {
            // xl destroy does not wait for the dump: it is cut short.
            if (d.Destroyed || !DumpCore.Write(f, d.Hv, d.Config.MaxVcpus, _hv.VersionInfo, () => d.Destroyed))
            {
                _hv.ConsoleWrite($"d{d.DomId}: core dump cut short: the domain was destroyed");
                return;
            }
        }
        _hv.ConsoleWrite($"d{d.DomId}: core dumped to {file}");
    }
}
