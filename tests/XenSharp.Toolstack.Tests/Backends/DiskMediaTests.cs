using System.Diagnostics;
using XenSharp.Backends.Xenbus;
using XenSharp.Store;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;
using XenSharp.Toolstack.Tests.Builder;
using XenSharp.Toolstack.Tests.Lifecycle;

namespace XenSharp.Toolstack.Tests.Backends;

/// <summary>What the toolstack and the block backend do to a disk after it exists: libxl's vbd layout per
/// backend type, a writable image refused to a second domain, media changes of a cdrom (cd-insert and
/// cd-eject rewrite params; the backend reopens and publishes sectors) and images that grow on the host
/// (raw and qcow2: the backend publishes the new sectors by itself).</summary>
public sealed class DiskMediaTests : IDisposable
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(30);
    private readonly string _dir = Directory.CreateTempSubdirectory("xs-media").FullName;
    private readonly XenStored _xs = new();
    private readonly HeldHypervisor _hv = new();
    private readonly Host _host;

    public DiskMediaTests()
    {
        File.WriteAllBytes(Path.Combine(_dir, "k.elf"), TestImages.Elf(TestImages.HaltLoop, 0x100000));
        _host = new Host(_hv, _xs, new RunPaths(Path.Combine(_dir, "run")));
    }

    public void Dispose()
    {
        _host.Dispose();
        _hv.Dispose();
        _xs.Dispose();
        Directory.Delete(_dir, true);
    }

    private string Image(string name, int bytes)
    {
        string p = Path.Combine(_dir, name);
        File.WriteAllBytes(p, new byte[bytes]);
        return p;
    }

    private ControlResponse Create(string name, params string[] disks) =>
        _host.Handle(new CreateRequest(
            $"name=\"{name}\"\ntype=\"pvh\"\nkernel=\"k.elf\"\nmemory=16\ndisk=[ {string.Join(", ", disks.Select(d => $"'{d}'"))} ]\n",
            Path.Combine(_dir, name + ".cfg"), _dir, [], Paused: true));

    private static uint DomId(ControlResponse r)
    {
        Assert.True(r.Ok, r.Error);
        return System.Text.Json.JsonSerializer.Deserialize<CreateResult>(r.Result!.Value, ControlJson.Options)!.DomId;
    }

    /// <summary>Polls a node until it holds <paramref name="value"/> (the backend works on its own thread).</summary>
    private string? WaitFor(string path, string value)
    {
        var clock = Stopwatch.StartNew();
        string? v;
        while ((v = _xs.Read(path)) != value && clock.Elapsed < Limit) Thread.Sleep(20);
        return v;
    }

    [Fact]
    [Trait("Feature", "Blkback")]
    public void VbdsCarryLibxlsKeysForEachBackendType()
    {
        Image("a.img", 1 << 20);
        QemuImg("create", "-q", "-f", "qcow2", Path.Combine(_dir, "b.qcow2"), "1M");
        uint domId = DomId(Create("g", "a.img,raw,xvda,rw,untrusted,direct-io-safe", "format=qcow2,vdev=xvdb,no-discard,target=b.qcow2",
            "vdev=xvdc,devtype=cdrom", "a.img,raw,xvdd,r,backendtype=tap"));
        var a = new DeviceAddress(DeviceKinds.Vbd, domId, 51712);
        var b = new DeviceAddress(DeviceKinds.Vbd, domId, 51728);
        var c = new DeviceAddress(DeviceKinds.Vbd, domId, 51744);
        var d = new DeviceAddress(DeviceKinds.Vbd, domId, 51760);
        Assert.Equal(("phy", "/etc/xen/scripts/block", "raw", "1", "xen", "1"),
            (_xs.Read($"{a.BackendPath}/type"), _xs.Read($"{a.BackendPath}/script"), _xs.Read($"{a.BackendPath}/format"),
             _xs.Read($"{a.BackendPath}/direct-io-safe"), _xs.Read($"{a.BackendPath}/specification"), _xs.Read($"{a.BackendPath}/discard-enable")));
        Assert.Equal("0", _xs.Read($"{a.FrontendPath}/trusted"));
        Assert.Equal(("qdisk", null, "qcow2", "0", "1"), (_xs.Read($"{b.BackendPath}/type"), _xs.Read($"{b.BackendPath}/script"),
            _xs.Read($"{b.BackendPath}/format"), _xs.Read($"{b.BackendPath}/discard-enable"), _xs.Read($"{b.FrontendPath}/trusted")));
        Assert.Equal(("qdisk", "", "empty", "1", "r"), (_xs.Read($"{c.BackendPath}/type"), _xs.Read($"{c.BackendPath}/params"),
            _xs.Read($"{c.BackendPath}/format"), _xs.Read($"{c.BackendPath}/removable"), _xs.Read($"{c.BackendPath}/mode")));
        Assert.Equal(("tap", "/etc/xen/scripts/block-tap"), (_xs.Read($"{d.BackendPath}/type"), _xs.Read($"{d.BackendPath}/script")));
        Assert.Equal("0", WaitFor($"{c.BackendPath}/sectors", "0"));
        Assert.Equal("2048", WaitFor($"{b.BackendPath}/sectors", "2048"));

        // What no backend here can serve is refused by name before a domain exists.
        Assert.Contains("backend phy unsuitable due to format qcow2", Create("h", "format=qcow2,vdev=xvda,backendtype=phy,target=b.qcow2").Error);
        Assert.Contains("only Xen's blkif is served", Create("h", "a.img,raw,xvda,specification=virtio,backendtype=standalone").Error);
        Assert.Contains("script=block-nbd: hotplug scripts are not run", Create("h", "nbd:host:1234,xvda,w").Error);
        Assert.Contains("COLO", Create("h", "a.img,raw,xvda,colo").Error);
        Assert.Single((IEnumerable<string>?)_xs.Directory("/local/domain") ?? [], x => x != "0");
    }

    [Fact]
    [Trait("Feature", "Blkback"), Trait("Feature", "QEMU backend hotplugging for xl")]
    public void AWritableImageBelongsToOneDomain()
    {
        string img = Image("shared.img", 1 << 20);
        Image("other.img", 1 << 20);
        File.CreateSymbolicLink(Path.Combine(_dir, "link.img"), img);
        uint first = DomId(Create("one", "shared.img,raw,xvda,rw", "shared.img,raw,xvdb,ro"));

        var twice = Create("two", "other.img,raw,xvda,rw", "link.img,raw,xvdb,rw");
        Assert.False(twice.Ok);
        Assert.Contains($"disk xvdb: File {Path.Combine(_dir, "link.img")} is mounted in a guest domain (domain {first}, xvda), and so cannot be mounted now.", twice.Error);
        var reader = Create("two", "other.img,raw,xvda,rw", "shared.img,raw,xvdb,ro");
        Assert.Contains("is mounted read-write in a guest domain", reader.Error);
        // Only the first domain exists: the refused creates left nothing behind.
        Assert.Single((IEnumerable<string>?)_xs.Directory("/local/domain") ?? [], x => x != "0");

        uint second = DomId(Create("two", "other.img,raw,xvda,rw"));
        var attach = _host.Handle(new BlockAttachRequest("two", "format=raw,vdev=xvdb,access=rw,target=shared.img", _dir));
        Assert.False(attach.Ok);
        Assert.Contains("is mounted in a guest domain", attach.Error);
        Assert.False(_xs.Exists(new DeviceAddress(DeviceKinds.Vbd, second, 51728).BackendPath));

        Assert.True(_host.Handle(new DestroyRequest("one", false)).Ok);
        var after = _host.Handle(new BlockAttachRequest("two", "format=raw,vdev=xvdb,access=rw,target=shared.img", _dir));
        Assert.True(after.Ok, after.Error);
    }

    [Fact]
    [Trait("Feature", "CD-ROM media change")]
    public void CdInsertAndEjectChangeTheMediumTheBackendServes()
    {
        string iso = Image("disc.iso", 3 << 20);
        Image("a.img", 1 << 20);
        uint domId = DomId(Create("g", "a.img,raw,xvda,rw", ",,xvdc,devtype=cdrom"));
        var cd = new DeviceAddress(DeviceKinds.Vbd, domId, 51744);
        Assert.Equal("2", WaitFor($"{cd.BackendPath}/state", "2"));
        Assert.Equal("0", _xs.Read($"{cd.BackendPath}/sectors"));

        var insert = _host.Handle(new CdInsertRequest("g", "xvdc", "disc.iso", "raw", _dir));
        Assert.True(insert.Ok, insert.Error);
        Assert.Equal(iso, _xs.Read($"{cd.BackendPath}/params"));
        Assert.Equal("6144", WaitFor($"{cd.BackendPath}/sectors", "6144"));
        Assert.Equal(iso, Assert.IsAssignableFrom<XenSharp.Backends.Block.BlkifBackend>(_host.Backends.Find(cd)).Image?.Name);

        Assert.True(_host.Handle(new CdInsertRequest("g", "xvdc", null, null, _dir)).Ok);
        Assert.Equal("", _xs.Read($"{cd.BackendPath}/params"));
        Assert.Equal("0", WaitFor($"{cd.BackendPath}/sectors", "0"));

        // Only a cdrom takes media, and a missing image leaves the drive as it was.
        Assert.Contains("Virtual device not found", _host.Handle(new CdInsertRequest("g", "xvda", "disc.iso", "raw", _dir)).Error);
        Assert.Contains("Virtual device not found", _host.Handle(new CdInsertRequest("g", "xvdd", "disc.iso", "raw", _dir)).Error);
        var missing = _host.Handle(new CdInsertRequest("g", "xvdc", "nothing.iso", "raw", _dir));
        Assert.False(missing.Ok);
        Assert.Contains("nothing.iso", missing.Error);
        Assert.Equal("", _xs.Read($"{cd.BackendPath}/params"));
    }

    [Theory]
    [InlineData("raw")]
    [InlineData("qcow2")]
    [Trait("Feature", "Online resize of virtual disks")]
    public void AnImageThatGrowsOnTheHostIsPublishedWithItsNewSize(string format)
    {
        string path = Path.Combine(_dir, "grow." + format);
        QemuImg("create", "-q", "-f", format, path, "1M");
        uint domId = DomId(Create("g", $"format={format},vdev=xvdb,target={path}"));
        var dev = new DeviceAddress(DeviceKinds.Vbd, domId, 51728);
        Assert.Equal("2048", WaitFor($"{dev.BackendPath}/sectors", "2048"));
        QemuImg("resize", "-q", "-f", format, path, "5M");
        Assert.Equal("10240", WaitFor($"{dev.BackendPath}/sectors", "10240"));
        // The qcow2 image reopened after the resize still serves its whole new size.
        var image = Assert.IsAssignableFrom<XenSharp.Backends.Block.BlkifBackend>(_host.Backends.Find(dev)).Image!;
        Assert.Equal(5L << 20, image.Size);
        var buf = new byte[512];
        Assert.Equal(0, image.Read((5L << 20) - 512, buf));
    }

    private static void QemuImg(params string[] args)
    {
        var psi = new ProcessStartInfo("qemu-img") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"qemu-img {string.Join(' ', args)}: {err}");
    }
}
