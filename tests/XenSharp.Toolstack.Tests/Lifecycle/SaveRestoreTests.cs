using XenSharp.Hypervisor;
using XenSharp.Public;
using XenSharp.Store;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Tests.Lifecycle;

/// <summary>xl save's refusals in the daemon: a guest that does not answer the suspend request within the timeout
/// (the request is withdrawn and the guest keeps running), relative paths, -c, and the files are left alone.</summary>
[Collection(nameof(SaveRestoreTests))] // Host.SuspendTimeout is shared
public sealed class SaveRestoreTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("xensharp-save-").FullName;
    private readonly XenStored _xs = new();
    private readonly XenHypervisorPlatform _hv = new(new XenHypervisor(new HypervisorOptions { MachineMemoryBytes = 128UL << 20, Pcpus = 1 }));
    private readonly Host _host;

    public SaveRestoreTests() => _host = new Host(_hv, _xs, new RunPaths(Path.Combine(_dir, "run")));

    public void Dispose()
    {
        _host.Dispose();
        _hv.Dispose();
        _xs.Dispose();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private uint CreatePaused()
    {
        string elf = XenSharp.Toolstack.Tests.Fuzz.Repo.PathOf("tests", "guests", "build", "suspend.elf");
        Assert.True(File.Exists(elf), "the test kernels are not built (make -C tests/guests)");
        var r = _host.Handle(new CreateRequest($"name=\"q\"\ntype=\"pvh\"\nkernel=\"{elf}\"\nmemory=8\n", Path.Combine(_dir, "q.cfg"), _dir, [], Paused: true));
        Assert.True(r.Ok, r.Error);
        return Assert.Single(_host.DomainIds);
    }

    [Fact]
    public void AGuestThatDoesNotSuspendInTimeKeepsRunningAndTheRequestIsWithdrawn()
    {
        uint domId = CreatePaused(); // paused: it never sees the request
        var was = Host.SuspendTimeout;
        Host.SuspendTimeout = TimeSpan.FromMilliseconds(300);
        try
        {
            string file = Path.Combine(_dir, "q.save");
            var r = _host.Handle(new SaveRequest("q", file, false, null));
            Assert.False(r.Ok);
            Assert.Equal(Errno.ETIMEDOUT, r.Errno);
            Assert.Contains("did not suspend", r.Error);
            Assert.Equal("", _xs.Read($"/local/domain/{domId}/control/shutdown"));
            Assert.Equal([domId], _host.DomainIds);
            Assert.False(File.Exists(file));
        }
        finally { Host.SuspendTimeout = was; }
    }

    [Fact]
    public void RelativePathsAndCheckpointsAreRefused()
    {
        CreatePaused();
        var relative = _host.Handle(new SaveRequest("q", "q.save", false, null));
        Assert.Equal(Errno.EINVAL, relative.Errno);
        var checkpoint = _host.Handle(new SaveRequest("q", Path.Combine(_dir, "c.save"), true, null));
        Assert.Equal(Errno.EOPNOTSUPP, checkpoint.Errno);
        var missing = _host.Handle(new RestoreRequest(Path.Combine(_dir, "none.save"), null, null, null, false));
        Assert.Equal(Errno.ENOENT, missing.Errno);
        Assert.Single(_host.DomainIds);
    }
}
