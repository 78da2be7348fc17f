using XenSharp.Backends.Xenbus;
using XenSharp.Public.Io;
using XenSharp.Store;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;
using XenSharp.Toolstack.Tests.Builder;
using XenSharp.Toolstack.Tests.Lifecycle;

namespace XenSharp.Toolstack.Tests.Backends;

/// <summary>The toolstack's side of PV devices: it writes a served kind's directories, the backend takes
/// them up, and they go with the domain.</summary>
public sealed class DeviceWiringTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("xs-devices").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void ServedDevicesAreAddedAndGoWithTheirDomain()
    {
        File.WriteAllBytes(Path.Combine(_dir, "k.elf"), TestImages.Elf(TestImages.HaltLoop, 0x100000));
        using var xs = new XenStored();
        using var hv = new HeldHypervisor();
        using var host = new Host(hv, xs, new RunPaths(Path.Combine(_dir, "run")));
        var r = host.Handle(new CreateRequest("name=\"g\"\ntype=\"pvh\"\nkernel=\"k.elf\"\nmemory=16\n", Path.Combine(_dir, "g.cfg"), _dir, [], Paused: true));
        Assert.True(r.Ok, r.Error);
        uint domId = System.Text.Json.JsonSerializer.Deserialize<CreateResult>(r.Result!.Value, ControlJson.Options)!.DomId;

        var a = host.AddDevice(domId, DeviceKinds.Console, 1, new Dictionary<string, string> { ["name"] = "serial1" });
        Wait.Until(() => xs.Read($"{a.BackendPath}/state") == "2");
        Assert.Equal(((int)XenbusState.InitWait).ToString(), xs.Read($"{a.BackendPath}/state"));
        Assert.NotNull(host.Backends.Find(a));
        // Kinds without a backend are names only.
        Assert.Equal("no backend serves vkbd devices",
            Assert.Throws<ControlException>(() => host.AddDevice(domId, DeviceKinds.Vkbd, 0)).Message);

        Assert.True(host.Handle(new DestroyRequest(domId.ToString(), false)).Ok);
        Assert.False(xs.Exists(a.BackendPath));
        Assert.False(xs.Exists(a.FrontendPath));
        Assert.Null(host.Backends.Find(a));
    }
}
