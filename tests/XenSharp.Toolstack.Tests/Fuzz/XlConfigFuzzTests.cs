using System.Text;
using System.Text.RegularExpressions;
using XenSharp.Toolstack.Config;

namespace XenSharp.Toolstack.Tests.Fuzz;

/// <summary>
/// Mutated xl.cfg files (the repository's examples and test guests, and a seed that uses every key the
/// reader acts on) through the parser and the domain configuration reader: each gives a configuration
/// or an <see cref="XlConfigException"/> naming the file, and the line when it names one exists.
/// </summary>
public partial class XlConfigFuzzTests
{
    private const string File = "/etc/xen/fuzz.cfg";

    /// <summary>Every key DomainConfigReader acts on, with list, string, number and device values.</summary>
    private const string KitchenSink = """
        name = "sink"; type = "pvh"
        builder = "hvm"
        kernel = "k.elf"
        ramdisk = '~/initrd.img'
        firmware_override = "fw.elf"
        firmware = "ovmf"
        cmdline = "console=hvc0 earlyprintk=xen"
        root = "/dev/xvda1 ro"
        extra += " quiet\t\x41\101"
        uuid = "e8a3bd4a-31f4-4aa3-9a1d-8f2b1c2d3e4f"
        memory = 0x40
        maxmem = 0200
        vcpus = 2
        maxvcpus = 4
        cpus = [ "0-1", "all,^1", "node:0", "nodes:0-1" ]
        cpus_soft = "0,2-3"
        on_poweroff = "destroy"
        on_reboot = "restart"
        on_crash = "coredump-restart"
        on_watchdog = "preserve"
        on_soft_reset = "soft-reset"
        cpu_weight = 512
        cap = 50
        pool = "Pool-0"
        tsc_mode = "native"
        disk = [ 'phy:/dev/vg/root,xvda,w', '/srv/data.img,raw,xvdb,ro',
                 'format=qcow2, vdev=xvdc, access=ro, target=/images/a,b.qcow2', ',,hdc,devtype=cdrom',
                 'file:/isos/debian.iso,hdd:cdrom,r', 'vdev=xvde,backendtype=phy,backend=0,script=block,discard,direct-io-safe,target=/dev/sdb' ]
        vif = [ 'mac=00:16:3E:01:02:03,bridge=xenbr0', 'bridge=xenbr1,model=e1000,type=ioemu,mtu=9000,devid=7',
                'ip=10.0.0.2,vifname=v0,script=vif-route,rate=10Mb/s,gatewaydev=eth0,backend=0,accel=x' ]
        vnuma = [ [ "pnode=0", "size=64", "vcpus=0-1" ], [ "pnode=1" ], ]
        bogus_key = 1
        """;

    private static readonly string[] Tokens =
    [
        "=", "+=", "[", "]", ",", ";", "\n", "\"", "'", "\\", "\\x", "\\x4", "\\0", "\\777", "#", " ", "-", "^", ":",
        "0x", "0", "-1", "0x7fffffffffffffff", "9223372036854775808", "-9223372036854775808", "99999999999999999999",
        "2147483648", "4294967296", "0777777777777777777777777", "all", "node:", "nodes:", "0-", "-0", "\u00e9", "\u0001",
        ":cdrom", "target=", "vdev=", "format=", "access=", "devtype=", "backendtype=", "devid=", "mtu=", "mac=",
        "name", "type", "memory", "maxmem", "vcpus", "maxvcpus", "cpus", "disk", "vif", "tsc_mode", "cap", "cpu_weight", "uuid",
        "kernel", "cmdline", "on_crash", "phy:", "qcow2:", "xvd", "d0p1", "[ [ ] ]", "[ ]", "''", "\"\"",
    ];

    private static readonly Mutator Cfgs = new(
        [
            .. Directory.GetFiles(Repo.PathOf("examples"), "*.cfg")
                .Concat(Directory.GetFiles(Repo.PathOf("tests", "guests"), "*.cfg"))
                .Order()
                .Select(f => (Path.GetRelativePath(Repo.Root, f), System.IO.File.ReadAllBytes(f))),
            ("kitchen-sink", Encoding.UTF8.GetBytes(KitchenSink)),
        ],
        [.. Tokens.Select(Encoding.UTF8.GetBytes)]);

    [GeneratedRegex(@"^/etc/xen/fuzz\.cfg:(\d+): ")]
    private static partial Regex FileLine();

    /// <summary>The seeds themselves are sound: the corpus is what its name says.</summary>
    [Fact]
    public void SeedsParse()
    {
        foreach (var (name, bytes) in Cfgs.Corpus)
            XlConfigParser.Parse(Encoding.UTF8.GetString(bytes), name);
        var sink = XlConfigParser.Parse(KitchenSink, File);
        sink.Directory = "/etc/xen";
        var read = DomainConfigReader.Read(sink, 4, [0, 0, 1, 1]);
        Assert.Equal(6, read.Config.Disks.Count);
        Assert.Equal(3, read.Config.Nics.Count);
    }

    [Fact]
    public void MutatedConfigsGiveAConfigurationOrAnErrorNamingTheLine()
    {
        Fuzz.Run(Cfgs.Cases(), 1500, m => Check(Encoding.UTF8.GetString(Cfgs.Apply(m))),
            m => $"{Cfgs.Print(m)}:\n{Fuzz.Quote(Encoding.UTF8.GetString(Cfgs.Apply(m)))}");
    }

    private static readonly Mutator DeviceSpecs = new(
        [.. new[]
        {
            "phy:/dev/vg/root,xvda,w", "/srv/data.img,raw,xvdb,ro", "format=qcow2, vdev=xvdc, access=ro, target=/images/a,b.qcow2",
            ",,hdc,devtype=cdrom", "file:/isos/debian.iso,hdd:cdrom,r", "qcow2:/images/disk.qcow2,xvda1,r", "/dev/vg/guest-volume,,hda",
            "vdev=xvde,backendtype=phy,backend=0,script=block,discard,no-discard,direct-io-safe,trusted,target=/dev/sdb", "/d,raw,d0p1,rw",
            "mac=00:16:3E:01:02:03,bridge=xenbr0", "bridge=xenbr1,model=e1000,type=ioemu,mtu=9000,devid=7",
            "ip=10.0.0.2,vifname=v0,script=vif-route,rate=10Mb/s,gatewaydev=eth0,backend=0,accel=x,netdev=br2,mac=0-1-2-3-4-5",
        }.Select(t => (t, Encoding.UTF8.GetBytes(t)))],
        [.. Tokens.Select(Encoding.UTF8.GetBytes)]);

    /// <summary>disk= and vif= specifications on their own: each parses or throws the <see cref="FormatException"/>
    /// the reader turns into an error naming the line.</summary>
    [Fact, Trait("Feature", "xl")]
    public void MutatedDeviceSpecsParseOrFailWithAFormatError()
    {
        Fuzz.Run(DeviceSpecs.Cases(4), 1500, m =>
        {
            string spec = Encoding.UTF8.GetString(DeviceSpecs.Apply(m));
            Fuzz.Expect<FormatException>(() => DiskSpec.Parse(spec), 64L * spec.Length + (1 << 20));
            Fuzz.Expect<FormatException>(() => NicSpec.Parse(spec, 0, new Random(1)), 64L * spec.Length + (1 << 20));
        }, m => $"{DeviceSpecs.Print(m)}: {Fuzz.Quote(Encoding.UTF8.GetString(DeviceSpecs.Apply(m)))}");
    }

    /// <summary>Parses and reads <paramref name="text"/> as xl create does (with a command-line override).</summary>
    internal static void Check(string text)
    {
        int lines = text.Count(c => c == '\n') + 1;
        XlConfig? cfg = null;
        var error = Fuzz.Expect<XlConfigException>(() => cfg = XlConfigParser.Parse(text, File), 64L * text.Length + (1 << 20));
        if (error is not null)
        {
            // The parser always knows the line.
            var m = FileLine().Match(error.Message);
            Assert.True(m.Success, $"the error does not name the line: {error.Message}");
            Assert.InRange(int.Parse(m.Groups[1].Value), 1, lines);
            return;
        }
        cfg!.Directory = "/etc/xen";
        error = Fuzz.Expect<XlConfigException>(() =>
        {
            XlConfigParser.ParseInto(cfg, "vcpus=2", "command line");
            var read = DomainConfigReader.Read(cfg, 4, [0, 0, 1, 1]);
            // What xl list -l prints of it.
            _ = LibxlJson.DomainConfig(read.Config).ToJsonString();
            _ = string.Join("\n", cfg.Settings.Select(s => s.Value.ToString()));
        }, 64L * text.Length + (4 << 20));
        if (error is not null)
            Assert.True(error.Message.StartsWith(File + ":") || error.Message.StartsWith("command line:"),
                $"the error does not name the file: {error.Message}");
    }
}
