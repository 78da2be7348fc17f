using XenSharp.Backends.Xenbus;
using XenSharp.Store;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;
using XenSharp.Toolstack.Tests.Builder;
using XenSharp.Toolstack.Tests.Lifecycle;

namespace XenSharp.Toolstack.Tests.Backends;

/// <summary>xl.cfg's disk= at domain creation: vdev names become Xen's device numbers, each disk's vbd
/// directories are written as libxl writes them, and an image that cannot be opened fails the create
/// before any domain exists.</summary>
public sealed class DiskDeviceTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("xs-disks").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    [Theory]
    [InlineData("xvda", 51712)]     // (202 << 8) | (0 << 4) | 0
    [InlineData("xvdb", 51728)]
    [InlineData("xvda1", 51713)]
    [InlineData("xvdp15", 51967)]
    [InlineData("xvdq", (1 << 28) | (16 << 8))]
    [InlineData("xvdaa", (1 << 28) | (26 << 8))]
    [InlineData("xvda16", (1 << 28) | 16)]
    [InlineData("hda", 768)]
    [InlineData("hdb", 832)]
    [InlineData("hdc1", 5633)]
    [InlineData("hdd", 5696)]
    [InlineData("sda", 2048)]
    [InlineData("sdb2", 2066)]
    [InlineData("d0", 1 << 28)]
    [InlineData("d3p2", (1 << 28) | (3 << 8) | 2)]
    public void VdevNamesAreXensDeviceNumbers(string vdev, int number) => Assert.Equal(number, VbdNumber.Parse(vdev));

    [Theory]
    [InlineData("xvd")]
    [InlineData("hde")]
    [InlineData("sdq")]
    [InlineData("xvda01")]
    [InlineData("xvda256")]
    [InlineData("vda")]
    public void VdevNamesOutsideTheSchemeAreRefused(string vdev) => Assert.False(VbdNumber.TryParse(vdev, out _));

    [Fact]
    public void DisksAreWrittenAsLibxlWritesVbdsAndAMissingImageLeavesNoDomain()
    {
        File.WriteAllBytes(Path.Combine(_dir, "k.elf"), TestImages.Elf(TestImages.HaltLoop, 0x100000));
        File.WriteAllBytes(Path.Combine(_dir, "a.img"), new byte[1 << 20]);
        using var xs = new XenStored();
        using var hv = new HeldHypervisor();
        using var host = new Host(hv, xs, new RunPaths(Path.Combine(_dir, "run")));
        string cfg = "name=\"g\"\ntype=\"pvh\"\nkernel=\"k.elf\"\nmemory=16\n";

        var bad = host.Handle(new CreateRequest(cfg + "disk=[ 'a.img,raw,xvda,rw', 'format=qcow2,vdev=xvdb,target=missing.qcow2' ]\n",
            Path.Combine(_dir, "g.cfg"), _dir, [], Paused: true));
        Assert.False(bad.Ok);
        Assert.Contains($"disk xvdb: {Path.Combine(_dir, "missing.qcow2")}", bad.Error);
        Assert.DoesNotContain((IEnumerable<string>?)xs.Directory("/local/domain") ?? [], d => d != "0");

        var r = host.Handle(new CreateRequest(cfg + "disk=[ 'a.img,raw,xvda,rw', 'format=raw,vdev=xvdb,access=ro,devtype=cdrom,target=a.img' ]\n",
            Path.Combine(_dir, "g.cfg"), _dir, [], Paused: true));
        Assert.True(r.Ok, r.Error);
        uint domId = System.Text.Json.JsonSerializer.Deserialize<CreateResult>(r.Result!.Value, ControlJson.Options)!.DomId;
        var a = new DeviceAddress(DeviceKinds.Vbd, domId, 51712);
        Assert.Equal(a.BackendPath, xs.Read($"{a.FrontendPath}/backend"));
        Assert.Equal("51712", xs.Read($"{a.FrontendPath}/virtual-device"));
        Assert.Equal("disk", xs.Read($"{a.FrontendPath}/device-type"));
        Assert.Equal(Path.Combine(_dir, "a.img"), xs.Read($"{a.BackendPath}/params"));
        Assert.Equal("w", xs.Read($"{a.BackendPath}/mode"));
        Assert.Equal("xvda", xs.Read($"{a.BackendPath}/dev"));
        Assert.Equal(domId.ToString(), xs.Read($"{a.BackendPath}/frontend-id"));
        var cd = new DeviceAddress(DeviceKinds.Vbd, domId, 51728);
        Assert.Equal("cdrom", xs.Read($"{cd.FrontendPath}/device-type"));
        Assert.Equal("r", xs.Read($"{cd.BackendPath}/mode"));
        // The backend took both up and described them.
        Wait.Until(() => xs.Read($"{cd.BackendPath}/state") == "2");
        Assert.Equal("2048", xs.Read($"{a.BackendPath}/sectors"));
        Assert.Equal("7", xs.Read($"{cd.BackendPath}/info")); // VDISK_CDROM | VDISK_REMOVABLE | VDISK_READONLY

        Assert.True(host.Handle(new DestroyRequest(domId.ToString(), false)).Ok);
        Assert.False(xs.Exists(a.BackendPath));
        Assert.Null(host.Backends.Find(a));
    }

    [Fact]
    public void ACorruptQcow2IsRefusedAtCreateNamingTheFileAndLeavesNoDomain()
    {
        File.WriteAllBytes(Path.Combine(_dir, "k.elf"), TestImages.Elf(TestImages.HaltLoop, 0x100000));
        string image = Path.Combine(_dir, "bad.qcow2");
        var psi = new System.Diagnostics.ProcessStartInfo("qemu-img") { RedirectStandardError = true };
        foreach (string a in new[] { "create", "-q", "-f", "qcow2", image, "1M" }) psi.ArgumentList.Add(a);
        using (var p = System.Diagnostics.Process.Start(psi)!) { p.WaitForExit(); Assert.Equal(0, p.ExitCode); }
        byte[] b = File.ReadAllBytes(image);
        b[40] = 0x7F; // the L1 table's offset, far past the end of the file
        File.WriteAllBytes(image, b);
        using var xs = new XenStored();
        using var hv = new HeldHypervisor();
        using var host = new Host(hv, xs, new RunPaths(Path.Combine(_dir, "run")));

        var r = host.Handle(new CreateRequest("name=\"g\"\ntype=\"pvh\"\nkernel=\"k.elf\"\nmemory=16\ndisk=[ 'bad.qcow2,qcow2,xvda,rw' ]\n",
            Path.Combine(_dir, "g.cfg"), _dir, [], Paused: true));
        Assert.False(r.Ok);
        Assert.Contains($"disk xvda: {image}: L1 table at offset", r.Error);
        Assert.Equal(0, hv.Created);
        Assert.DoesNotContain((IEnumerable<string>?)xs.Directory("/local/domain") ?? [], d => d != "0");
    }
}
