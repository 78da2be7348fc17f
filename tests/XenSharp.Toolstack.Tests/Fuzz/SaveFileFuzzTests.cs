using XenSharp.Hypervisor;
using XenSharp.Public;
using XenSharp.Store;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Tests.Fuzz;

/// <summary>
/// Mutated save files through xl restore's path in the daemon: each is restored or refused with a reason (never an
/// internal error), and a refused one leaves no domain behind.
/// </summary>
public sealed class SaveFileFuzzTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("xensharp-savefuzz-").FullName;
    private readonly XenStored _xs = new();
    private readonly XenHypervisorPlatform _hv = new(new XenHypervisor(new HypervisorOptions { MachineMemoryBytes = 256UL << 20, Pcpus = 1 }));
    private readonly Host _host;

    public SaveFileFuzzTests() => _host = new Host(_hv, _xs, new RunPaths(Path.Combine(_dir, "run")));

    public void Dispose()
    {
        _host.Dispose();
        _hv.Dispose();
        _xs.Dispose();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    /// <summary>A save file of a small domain that suspended before it ran.</summary>
    private byte[] SavedDomain()
    {
        string elf = Repo.PathOf("tests", "guests", "build", "suspend.elf");
        Assert.True(File.Exists(elf), "the test kernels are not built (make -C tests/guests)");
        var r = _host.Handle(new CreateRequest($"name=\"s\"\ntype=\"pvh\"\nkernel=\"{elf}\"\nmemory=8\n", Path.Combine(_dir, "s.cfg"), _dir, [], Paused: true));
        Assert.True(r.Ok, r.Error);
        uint domId = Assert.Single(_host.DomainIds);
        _host.ShutdownFromOutside(domId, ShutdownReason.Suspend);
        string file = Path.Combine(_dir, "seed.save");
        var s = _host.Handle(new SaveRequest("s", file, false, null));
        Assert.True(s.Ok, s.Error);
        Assert.Empty(_host.DomainIds);
        return File.ReadAllBytes(file);
    }

    private void Restore(byte[] content)
    {
        string file = Path.Combine(_dir, "case.save");
        File.WriteAllBytes(file, content);
        var r = _host.Handle(new RestoreRequest(file, null, null, null, Paused: true));
        if (r.Ok)
        {
            foreach (uint id in _host.DomainIds)
                Assert.True(_host.Handle(new DestroyRequest(id.ToString(), false)).Ok);
            return;
        }
        Assert.DoesNotContain("internal error", r.Error);
        Assert.True(r.Errno != Errno.EIO, r.Error);
        Assert.Empty(_host.DomainIds);
    }

    [Fact]
    public void MutatedSaveFilesRestoreOrFailClearly()
    {
        byte[] seed = SavedDomain();
        Restore(seed);
        // The pages are most of the file; the mutations aim at its first and last 64 KiB, where the headers and the
        // records that are not pages are, and keep the pages in between (a file smaller than twice that, as all-zero
        // pages carry no data, is split in halves).
        int head = Math.Min(64 << 10, seed.Length / 2);
        var m = new Mutator([("head", seed[..head]), ("tail", seed[^head..])]);
        Fuzz.Run(m.Cases(), 150, c =>
        {
            byte[] part = m.Apply(c);
            byte[] whole = c.Seed == 0 ? [.. part, .. seed[head..]] : [.. seed[..^head], .. part];
            Restore(whole);
        }, m.Print);
    }

    [Fact]
    public void TruncatedSaveFilesAreRefused()
    {
        byte[] seed = SavedDomain();
        foreach (int length in new[] { 0, 10, 32, 48, 60, 100, 200, 4096, seed.Length / 2, seed.Length - 8, seed.Length - 1 })
        {
            string file = Path.Combine(_dir, "cut.save");
            File.WriteAllBytes(file, seed[..length]);
            var r = _host.Handle(new RestoreRequest(file, null, null, null, Paused: true));
            Assert.False(r.Ok, $"{length} bytes restored");
            Assert.True(r.Error!.Contains("truncated") || r.Error.Contains("not an xl save file"), $"{length}: {r.Error}");
            Assert.Empty(_host.DomainIds);
        }
    }
}
