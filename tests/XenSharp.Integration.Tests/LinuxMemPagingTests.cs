using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Debian's xenpaging under ./dom0 pages a running Debian PVH guest's memory out to a file and back: the guest keeps a
/// file in tmpfs, xenpaging is given a target well below the guest's memory (memory/target-tot_pages, which it
/// watches), and the guest reads the whole file back while most of it is paged out; its checksum does not change.
/// </summary>
public sealed class LinuxMemPagingTests
{
    private const int MemoryMb = 128, TargetMb = 64, FileMb = 48;
    private static readonly TimeSpan PagingLimit = TimeSpan.FromMinutes(15);

    /// <summary>A running xenpaging, its output collected.</summary>
    private sealed class Pager : IDisposable
    {
        private readonly Process _p;
        private readonly StringBuilder _out = new();

        public Pager(XlHost xl, int domid, string file)
        {
            _p = Process.Start(xl.Dom0StartInfo("xenpaging", "-v", "-d", domid.ToString(), "-f", file))!;
            _p.StandardInput.Close();
            _p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_out) _out.AppendLine(e.Data); };
            _p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_out) _out.AppendLine(e.Data); };
            _p.BeginOutputReadLine();
            _p.BeginErrorReadLine();
        }

        public string Output { get { lock (_out) return _out.ToString(); } }
        public Process Process => _p;
        public int Count(string what) => Regex.Matches(Output, Regex.Escape(what)).Count;

        /// <summary>The xenpaging process itself (./dom0 runs it as its child).</summary>
        public int[] Pids() => Directory.GetDirectories("/proc").Select(d => Path.GetFileName(d))
            .Where(n => int.TryParse(n, out _)).Select(int.Parse)
            .Where(pid => { try { return File.ReadAllText($"/proc/{pid}/comm").Trim() == "xenpaging" && IsDescendant(pid); } catch (IOException) { return false; } })
            .ToArray();

        private bool IsDescendant(int pid)
        {
            for (int i = 0; i < 8 && pid > 1; i++)
            {
                if (pid == _p.Id) return true;
                var stat = File.ReadAllText($"/proc/{pid}/stat");
                pid = int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[1]);
            }
            return false;
        }

        public void Signal(string sig)
        {
            foreach (int pid in Pids())
                using (var k = Process.Start("kill", [$"-{sig}", pid.ToString()])) k.WaitForExit();
        }

        public void Dispose()
        {
            if (!_p.HasExited) _p.Kill(entireProcessTree: true);
            _p.Dispose();
        }
    }

    private static long ListedMemMb(XlHost xl, string name)
    {
        var r = xl.Run("list", name);
        Assert.Equal(0, r.ExitCode);
        var row = r.Stdout.Split('\n').Single(l => l.StartsWith(name + " ", StringComparison.Ordinal));
        return long.Parse(row.Split(' ', StringSplitOptions.RemoveEmptyEntries)[2]);
    }

    /// <summary>What the hypervisor logged about paging (its audit, a crashed domain).</summary>
    private static string PagingLog(XlHost xl) =>
        string.Join('\n', xl.Run("dmesg").Stdout.Split('\n').Where(l => l.Contains("paging", StringComparison.Ordinal)).TakeLast(40));

    [Fact, Trait("Feature", "Memory Paging"), Trait("Feature", "x86/PVH"), Trait("Feature", "Dom0 stable libraries")]
    public void XenpagingPagesAGuestOutAndBackWhileItWorks()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        using var xl = new XlHost();
        string cfg = LinuxPvhTests.WriteConfig(xl, store, "paged", memory: MemoryMb);
        using var console = new LinuxPvhTests.ConsoleSession(xl.RunDir, "create", "-c", cfg);
        Pager? pager = null;
        try
        {
            console.WaitFor("~ # ", LinuxPvhTests.BootLimit);
            int domid = int.Parse(xl.Run("domid", "paged").Stdout.Trim());
            // A file in tmpfs, written before any paging, and its checksum. (The typed lines never hold the replies' markers:
            // the shell joins the quoted halves.)
            string made = console.Ask($"mkdir -p /t && mount -t tmpfs tmpfs /t && dd if=/dev/urandom of=/t/f bs=1M count={FileMb} 2>/dev/null; " +
                "echo $(md5sum /t/f | cut -c1-32)-s\"\"um", "-sum", PagingLimit);
            string sum = Regex.Match(made, @"([0-9a-f]{32})-sum").Groups[1].Value;
            Assert.NotEqual("", sum);

            // xenpaging, then its target: it evicts until the domain holds no more than that.
            string file = Path.Combine(xl.RunDir, "paged.pages");
            pager = new Pager(xl, domid, file);
            string target = $"/local/domain/{domid}/memory/target-tot_pages";
            Assert.True(XlHost.WaitUntil(() => pager.Output.Contains("watching") || pager.Process.HasExited, TimeSpan.FromMinutes(2)), pager.Output);
            Assert.False(pager.Process.HasExited, pager.Output);
            Assert.Equal(0, xl.RunDom0("xenstore-write", target, (TargetMb * 1024).ToString()).ExitCode);
            Assert.True(XlHost.WaitUntil(() => ListedMemMb(xl, "paged") <= TargetMb || pager.Process.HasExited, PagingLimit),
                $"the domain holds {ListedMemMb(xl, "paged")} MB\n{pager.Output}");
            Assert.False(pager.Process.HasExited, pager.Output);
            int evicted = pager.Count("evict_page >");
            Assert.True(evicted >= (MemoryMb - TargetMb - 8) * 256, $"{evicted} pages evicted\n{pager.Output}");

            // The guest reads its whole file: the pages it touches come back from the pager's file as it goes, with
            // the vCPU waiting on each, and the checksum is the one from before.
            string again = console.Ask("echo $(md5sum /t/f | cut -c1-32)-ag\"\"ain", "-again", PagingLimit);
            Assert.True(again.Contains(sum + "-again"), $"{LinuxPvhTests.Tail(again)}\n{PagingLog(xl)}");
            Assert.True(pager.Count("populate_page <") > 0, pager.Output);
            Assert.Contains("still-alive-42", console.Ask("echo still-alive-$((6*7))", "still-alive-42"));

            // SIGTERM: xenpaging pages everything back in, disables its ring and ends well.
            pager.Signal("TERM");
            Assert.True(pager.Process.WaitForExit(PagingLimit), pager.Output);
            pager.Process.WaitForExit();
            Assert.True(pager.Process.ExitCode == 0, $"xenpaging exited with {pager.Process.ExitCode}\n{pager.Output}");
            Assert.True(ListedMemMb(xl, "paged") >= MemoryMb - 1, $"the domain holds {ListedMemMb(xl, "paged")} MB");
            Assert.Contains(sum + "-after", console.Ask("echo $(md5sum /t/f | cut -c1-32)-af\"\"ter", "-after", PagingLimit));
            pager.Dispose();

            // Killed outright, the pager leaves pages out and perhaps vCPUs waiting for them, as on Xen; the domain can
            // still be destroyed and the host carries on.
            pager = new Pager(xl, domid, file + "2");
            Assert.True(XlHost.WaitUntil(() => pager.Output.Contains("watching") || pager.Process.HasExited, TimeSpan.FromMinutes(2)), pager.Output);
            Assert.Equal(0, xl.RunDom0("xenstore-write", target, (TargetMb * 1024).ToString()).ExitCode);
            Assert.True(XlHost.WaitUntil(() => pager.Count("evict_page >") > 1000 || pager.Process.HasExited, PagingLimit), pager.Output);
            console.Send("md5sum /t/f\n");
            pager.Signal("KILL");
            Assert.True(pager.Process.WaitForExit(TimeSpan.FromMinutes(1)));
        }
        finally
        {
            var destroyed = xl.Run("destroy", "paged");
            Assert.True(destroyed.ExitCode == 0, destroyed.ToString());
            pager?.Dispose();
        }
        Assert.DoesNotContain("paged ", xl.Run("list").Stdout);
        Assert.Equal(0, xl.Run("list").ExitCode);
    }
}
