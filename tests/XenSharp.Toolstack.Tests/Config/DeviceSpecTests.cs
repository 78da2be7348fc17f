using XenSharp.Public;
using XenSharp.Toolstack.Config;

namespace XenSharp.Toolstack.Tests.Config;

/// <summary>disk= and vif= in xl's specification syntax, and tsc_mode.</summary>
[Trait("Feature", "xl")]
public class DeviceSpecTests
{
    private static DomainConfigReader.Result Read(string extra) =>
        DomainConfigReader.Read(XlConfigParser.Parse($"name = \"g\"\ntype = \"pvh\"\nkernel = \"/boot/vmlinuz\"\n{extra}\n", "/etc/xen/g.cfg"), hostCpus: 4);

    [Theory]
    [InlineData("/dev/vg/guest-volume,,hda", "/dev/vg/guest-volume", DiskFormat.Raw, "hda", true)]
    [InlineData("/dev/vg/guest-volume,raw,xvda,rw", "/dev/vg/guest-volume", DiskFormat.Raw, "xvda", true)]
    [InlineData("format=qcow2, vdev=xvdb, access=ro, target=/images/a,b.qcow2", "/images/a,b.qcow2", DiskFormat.Qcow2, "xvdb", false)]
    [InlineData("phy:/dev/vg/lv,xvda,w", "/dev/vg/lv", DiskFormat.Raw, "xvda", true)]
    [InlineData("qcow2:/images/disk.qcow2,xvda1,r", "/images/disk.qcow2", DiskFormat.Qcow2, "xvda1", false)]
    [InlineData("/images/d.vhd,vhd,sdc", "/images/d.vhd", DiskFormat.Vhd, "sdc", true)]
    // The man page's four spellings of one disk.
    [InlineData("/dev/vg/guest-volume,raw,hda,rw", "/dev/vg/guest-volume", DiskFormat.Raw, "hda", true)]
    [InlineData("format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume", "/dev/vg/guest-volume", DiskFormat.Raw, "hda", true)]
    [InlineData("raw:/dev/vg/guest-volume,hda,w", "/dev/vg/guest-volume", DiskFormat.Raw, "hda", true)]
    // target= takes the rest, '=' and a trailing blank included; an empty positional target may be given again by name.
    [InlineData("vdev=xvdb,target=/i/a=b, c.img ", "/i/a=b, c.img ", DiskFormat.Raw, "xvdb", true)]
    [InlineData(",qcow2,xvdb,r,target=/i/x.qcow2", "/i/x.qcow2", DiskFormat.Qcow2, "xvdb", false)]
    // Empty values are defaults; ro/r/rw/w; a dropped prefix chain; vdev names of every scheme.
    [InlineData("/i/a,,xvdaa,", "/i/a", DiskFormat.Raw, "xvdaa", true)]
    [InlineData("/i/a,qcow,d0p1,ro", "/i/a", DiskFormat.Qcow, "d0p1", false)]
    [InlineData("tap:aio:qcow2:/i/a,sdb,r", "/i/a", DiskFormat.Qcow2, "sdb", false)]
    [InlineData("format=,access=,vdev=xvdc,target=/i/a", "/i/a", DiskFormat.Raw, "xvdc", true)]
    [InlineData("/i/a,qed,xvda,w", "/i/a", DiskFormat.Qed, "xvda", true)]
    public void DiskSpecificationsAsXlReadsThem(string spec, string target, DiskFormat format, string vdev, bool rw)
    {
        var d = DiskSpec.Parse(spec);
        Assert.Equal(target, d.Target);
        Assert.Equal(format, d.Format);
        Assert.Equal(vdev, d.Vdev);
        Assert.Equal(rw, d.ReadWrite);
    }

    [Fact]
    public void CdromsMayBeEmptyAndAreReadOnly()
    {
        var d = DiskSpec.Parse("file:/isos/debian.iso,hdc:cdrom,r");
        Assert.True(d.IsCdrom);
        Assert.Equal("hdc", d.Vdev);
        Assert.False(d.ReadWrite);
        var empty = DiskSpec.Parse(",,hdc,devtype=cdrom");
        Assert.True(empty.IsCdrom);
        Assert.Null(empty.Target);
        Assert.Equal(DiskFormat.Empty, empty.Format);
        Assert.Equal(DiskBackend.Phy, DiskSpec.Parse("vdev=xvdc,backendtype=phy,target=/dev/sdb").Backend);
        // The man page's spellings of one cdrom.
        foreach (string spec in new[] { "/root/image.iso,,hdc,cdrom", "/root/image.iso,,hdc,,cdrom", "/root/image.iso,raw,hdc,devtype=cdrom",
                     "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso", "raw:/root/image.iso,hdc:cdrom,ro" })
        {
            var cd = DiskSpec.Parse(spec);
            Assert.True(cd.IsCdrom, spec);
            Assert.Equal(("/root/image.iso", "hdc", false, DiskFormat.Raw), (cd.Target, cd.Vdev, cd.ReadWrite, cd.Format));
        }
        // xend's empty drive, and a cdrom asked for read-write is read-only still.
        var xend = DiskSpec.Parse(",hdc:cdrom,r");
        Assert.Equal((null, "hdc", true, DiskFormat.Empty), (xend.Target, xend.Vdev, xend.IsCdrom, xend.Format));
        Assert.False(DiskSpec.Parse("/i/a.iso,raw,xvdc,rw,cdrom").ReadWrite);
        Assert.False(DiskSpec.Parse("/i/a,raw,xvdc,devtype=cdrom,devtype=disk").IsCdrom);
    }

    [Fact]
    public void FlagsBackendsAndScriptsAreKept()
    {
        var d = DiskSpec.Parse(" backendtype=qdisk, script=block-iscsi, direct-io-safe, no-discard, untrusted, specification=xen, backend=0, /i/a,raw,xvdb");
        Assert.Equal((DiskBackend.Qdisk, "block-iscsi", true, (bool?)false, false, "xen", "0"),
            (d.Backend, d.Script, d.DirectIoSafe, d.Discard, d.Trusted, d.Specification, d.BackendDomain));
        Assert.True(DiskSpec.Parse("/i/a,raw,xvdb,discard").Discard);
        Assert.Null(DiskSpec.Parse("/i/a,raw,xvdb").Discard);
        Assert.Equal(DiskBackend.Tap, DiskSpec.Parse("/i/a,raw,xvdb,backendtype=tap").Backend);
        Assert.Equal(DiskBackend.Standalone, DiskSpec.Parse("/i/a,raw,xvdb,backendtype=standalone,specification=virtio").Backend);
        // xm's script prefixes: what follows is the script's argument, colons and all.
        var nbd = DiskSpec.Parse("nbd:host:1234,xvdb,w");
        Assert.Equal(("block-nbd", "host:1234", "xvdb", true), (nbd.Script, nbd.Target, nbd.Vdev, nbd.ReadWrite));
        Assert.True(DiskSpec.Parse("/i/a,raw,xvdb,colo,colo-host=h,colo-port=9000,colo-export=e,active-disk=/a,hidden-disk=/h").Colo);

        // libxl's JSON (xl create -n) carries them as libxl_device_disk does.
        var json = LibxlJson.DomainConfig(Read("disk = [ '/i/a,raw,xvdb,untrusted,direct-io-safe,no-discard,backendtype=qdisk' ]").Config);
        var disk = json["disks"]![0]!;
        Assert.Equal(("False", true, "False", "qdisk"),
            ((string?)disk["trusted"], (bool?)disk["direct_io_safe"], (string?)disk["discard_enable"], (string?)disk["backend"]));
    }

    [Theory]
    [InlineData("/dev/sdb", "no vdev specified")]
    [InlineData("/dev/sdb,raw,xvdb,rx", "unknown value for access")]
    [InlineData("/dev/sdb,vmdk,xvdb,w", "unknown value for format")]
    [InlineData("/dev/sdb,raw,floppy", "invalid or unsupported virtual disk identifier: near `floppy'")]
    [InlineData("/dev/sdb,raw,hde", "invalid or unsupported virtual disk identifier: near `hde'")]
    [InlineData("/dev/sdb,xvdb,w", "unknown value for format: near `xvdb'")]
    [InlineData("/dev/sdb,raw,xvdb,devtype=floppy", "unknown value for type")]
    [InlineData("/dev/sdb,raw,xvdb,backendtype=lvm", "unknown value for backendtype: near `lvm'")]
    [InlineData("/dev/sdb,raw,xvdb,specification=scsi", "unknown value for specification")]
    [InlineData("/dev/sdb,raw,xvdb,vdev=xvdc", "vdev respecified: near `xvdc'")]
    [InlineData("/dev/sdb,raw,xvdb,format=qcow2", "format respecified: near `qcow2'")]
    [InlineData("foo:/dev/sdb,xvdb,w", "unknown deprecated disk prefix: near `foo:'")]
    [InlineData(",hdc:floppy,r", "unknown deprecated type: near `floppy'")]
    [InlineData("/dev/sdb,raw,xvdb,w,extra", "too many positional parameters")]
    [InlineData("colour=blue,/dev/sdb,xvdb", "unknown parameter: near `colour=blue'")]
    public void BadDiskSpecificationsNameTheLine(string spec, string why)
    {
        var e = Assert.Throws<XlConfigException>(() => Read($"memory = 64\ndisk = [ '/dev/sda,raw,xvda,w',\n   '{spec}' ]"));
        Assert.StartsWith("/etc/xen/g.cfg:6: config parsing error in disk specification: " + why, e.Message);
        Assert.Contains($"in `{spec}'", e.Message);
    }

    [Fact]
    public void DisksAndVifsAreKept()
    {
        var r = Read("disk = [ 'phy:/dev/vg/root,xvda,w', '/srv/data.img,raw,xvdb,ro' ]\nvif = [ 'mac=00:16:3E:01:02:03,bridge=xenbr0', 'bridge=xenbr1,model=e1000' ]");
        var c = r.Config;
        Assert.Equal(["xvda", "xvdb"], c.Disks.Select(d => d.Vdev));
        Assert.Equal(DiskBackend.Unknown, c.Disks[0].Backend); // libxlu drops the phy: prefix; the backend is chosen at create
        Assert.False(c.Disks[1].ReadWrite);
        Assert.Equal("00:16:3e:01:02:03", c.Nics[0].Mac);
        Assert.Equal("xenbr0", c.Nics[0].Bridge);
        Assert.Equal(1, c.Nics[1].Devid);
        Assert.Matches("^00:16:3e:[0-7][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}$", c.Nics[1].Mac);
        Assert.Equal("e1000", c.Nics[1].Model);
        Assert.DoesNotContain(r.Warnings, w => w.Contains("warning: disk"));
        Assert.DoesNotContain(r.Warnings, w => w.Contains("vif"));
        Assert.DoesNotContain(r.Warnings, w => w.Contains("unknown key"));

        var json = LibxlJson.DomainConfig(c);
        Assert.Equal("/dev/vg/root", (string?)json["disks"]![0]!["pdev_path"]);
        Assert.Equal(0, (int?)json["disks"]![1]!["readwrite"]);
        Assert.Equal("xenbr1", (string?)json["nics"]![1]!["bridge"]);
    }

    [Theory]
    [InlineData("mac=00:16:3e:zz:00:01", "invalid mac address")]
    [InlineData("bridge=xenbr0,flavour=mint", "unrecognized argument `flavour=mint'")]
    [InlineData("type=tap", "Invalid parameter `type=tap'")]
    public void BadVifSpecificationsNameTheLine(string spec, string why)
    {
        var e = Assert.Throws<XlConfigException>(() => Read($"vif = [ '{spec}' ]"));
        Assert.StartsWith("/etc/xen/g.cfg:4: " + why, e.Message);
    }

    [Theory]
    [InlineData("10Mb/s", 62500UL, 50000U)]
    [InlineData("1MB/s@20ms", 20000UL, 20000U)]
    [InlineData("100KB/s@1s", 100000UL, 1000000U)]
    [InlineData("8b/s@250us", 0UL, 250U)]
    [InlineData("2GB/s@2", 4000000000UL, 2000000U)]
    public void RatesAreReadAsLibxlutilReadsThem(string rate, ulong bytesPerInterval, uint intervalUsecs)
    {
        Assert.Equal((bytesPerInterval, intervalUsecs), NicSpec.ParseRate(rate));
        Assert.Equal(rate, Read($"vif = [ 'bridge=xenbr0,rate={rate}' ]").Config.Nics[0].Rate);
    }

    [Theory]
    [InlineData("10Mbit/s", "config parsing error in vif: invalid rate in `10Mbit/s'")]
    [InlineData("@20ms", "config parsing error in vif: no rate specified in `@20ms'")]
    [InlineData("0MB/s", "config parsing error in vif: rate overflow in `0MB/s'")]
    [InlineData("1MB/s@20min", "config parsing error in vif: invalid replenishment interval in `20min'")]
    [InlineData("1MB/s@5000000s", "config parsing error in vif: replenishment interval overflow in `5000000s'")]
    public void BadRatesAreRefusedWithLibxlutilsWords(string rate, string why)
    {
        var e = Assert.Throws<XlConfigException>(() => Read($"vif = [ 'rate={rate}' ]"));
        Assert.StartsWith("/etc/xen/g.cfg:4: " + why, e.Message);
    }

    [Fact]
    public void DuplicateVdevsAreRefused()
    {
        var e = Assert.Throws<XlConfigException>(() => Read("disk = [ '/a,raw,xvda', '/b,raw,xvda' ]"));
        Assert.Contains("xvda", e.Message);
    }

    [Theory]
    [InlineData("\"default\"", TscMode.Default)]
    [InlineData("\"always_emulate\"", TscMode.AlwaysEmulate)]
    [InlineData("\"native\"", TscMode.Native)]
    [InlineData("\"native_paravirt\"", TscMode.NativeParavirt)]
    public void TscModesByName(string value, TscMode mode)
    {
        var r = Read($"tsc_mode = {value}");
        Assert.Equal(mode, r.Config.TscMode);
        Assert.Empty(r.Warnings);
        if (mode != TscMode.Default)
            Assert.Equal(DomainConfig.TscModeName(mode), (string?)LibxlJson.DomainConfig(r.Config)["b_info"]!["tsc_mode"]);
    }

    [Fact]
    public void TscModeAsANumberIsDeprecatedAndBadNamesAreErrors()
    {
        var r = Read("tsc_mode = 1");
        Assert.Equal(TscMode.AlwaysEmulate, r.Config.TscMode);
        Assert.Contains(r.Warnings, w => w.Contains("specifying \"tsc_mode\" as an integer is deprecated"));
        var e = Assert.Throws<XlConfigException>(() => Read("tsc_mode = \"sometimes\""));
        Assert.Equal("/etc/xen/g.cfg:4: invalid value \"sometimes\" for \"tsc_mode\"", e.Message);
        Assert.Throws<XlConfigException>(() => Read("tsc_mode = 7"));
    }
}
