using XenSharp.Hypervisor;
using XenSharp.Public;
using XenSharp.Store;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Tests.Lifecycle;

/// <summary>xl save's refusals in the daemon: a guest with PV drivers that does not answer the suspend request within
/// the timeout (the request is withdrawn and the guest keeps running), relative paths, missing files.</summary>
[Collection(nameof(SaveRestoreTests))] // Host.SuspendTimeout is shared
public sealed class SaveRestoreTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("xensharp-save-").FullName;
    private readonly XenStored _xs = new();
    private readonly XenHypervisor _xen = new(new HypervisorOptions { MachineMemoryBytes = 128UL << 20, Pcpus = 1 });
    private readonly XenHypervisorPlatform _hv;
    private readonly Host _host;

    public SaveRestoreTests()
    {
        _hv = new XenHypervisorPlatform(_xen);
        _host = new Host(_hv, _xs, new RunPaths(Path.Combine(_dir, "run")));
    }

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
        // An event callback, as a guest with PV drivers sets: it is asked through xenstore, not suspended from outside.
        _xen.SetHvmParam((ushort)domId, XenSharp.Public.Hvm.Params.HVM_PARAM_CALLBACK_IRQ, (2UL << 56) | 0xF3);
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
    public void RelativePathsAndMissingFilesAreRefused()
    {
        CreatePaused();
        var relative = _host.Handle(new SaveRequest("q", "q.save", false, null));
        Assert.Equal(Errno.EINVAL, relative.Errno);
        var missing = _host.Handle(new RestoreRequest(Path.Combine(_dir, "none.save"), null, null, null, false));
        Assert.Equal(Errno.ENOENT, missing.Errno);
        Assert.Single(_host.DomainIds);
    }
}
