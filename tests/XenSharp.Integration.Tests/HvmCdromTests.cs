using System.Text.Json.Nodes;

namespace XenSharp.Integration.Tests;

/// <summary>
/// <c>xl cd-insert</c> and <c>xl cd-eject</c> on an HVM guest's emulated CD-ROM, as libxl does them: QMP <c>eject</c> and
/// <c>blockdev-change-medium</c> on QEMU's ide-cd device named ide-DEVID, and the vbd's backend <c>params</c>. The
/// <c>cdrom</c> test kernel (<c>type="hvm"</c>, <c>firmware_override</c>, QEMU started by the toolstack) polls the
/// secondary IDE channel's master through ATAPI and prints each medium it finds (the label in its first sector and its
/// size) and each time there is none. Both our xl, on a guest it created, and Debian's xl under ./dom0, on a guest
/// Debian's xl created with its own QEMU, change the medium the guest reads.
/// </summary>
public sealed class HvmCdromTests : IDisposable
{
    private static readonly TimeSpan SeenLimit = TimeSpan.FromMinutes(2);
    private readonly XlHost _xl = new();
    private readonly string _one;
    private readonly string _two;

    public HvmCdromTests()
    {
        Assert.True(File.Exists(Kernel), "cdrom.elf is not built (make -C tests/guests)");
        _one = Disc("one.iso", "XENSHARP-DISC-ONE", 64);
        _two = Disc("two.iso", "XENSHARP-DISC-TWO", 96);
    }

    public void Dispose()
    {
        _xl.Run("destroy", "cdrom");
        _xl.RunDom0(TimeSpan.FromMinutes(1), "xl", "destroy", "cdrom-debian");
        _xl.Dispose();
    }

    private static string Kernel => Repository.PathOf("tests", "guests", "build", "cdrom.elf");

    /// <summary>A disc image of <paramref name="sectors"/> 2 KiB sectors whose first sector begins with <paramref name="label"/>.</summary>
    private string Disc(string name, string label, int sectors)
    {
        var bytes = new byte[sectors * 2048];
        System.Text.Encoding.ASCII.GetBytes(label).CopyTo(bytes, 0);
        string path = Path.Combine(_xl.RunDir, name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    /// <summary>Waits until the guest's console (xl dmesg) shows <paramref name="line"/> after the <paramref name="after"/>th
    /// line of the domain; returns the number of the domain's lines then.</summary>
    private int WaitForLine(string domid, string line, int after)
    {
        string prefix = $"({domid}) ".Insert(1, "d");
        List<string> lines = [];
        bool seen = XlHost.WaitUntil(() =>
        {
            lines = [.. _xl.Run("dmesg").Stdout.Split('\n').Where(l => l.StartsWith(prefix, StringComparison.Ordinal)).Select(l => l[prefix.Length..])];
            return lines.Skip(after).Contains(line);
        }, SeenLimit);
        Assert.True(seen, $"the guest did not print \"{line}\":\n{string.Join('\n', lines)}");
        Assert.DoesNotContain(lines, l => l.StartsWith("FAIL", StringComparison.Ordinal));
        return lines.IndexOf(line, after) + 1;
    }

    private JsonNode? QueryBlock(string domid)
    {
        using var qmp = new QmpClient(Path.Combine(_xl.RunDir, $"qmp-libxl-{domid}"));
        return qmp.Execute("query-block")!.AsArray().Single(b => (string?)b!["device"] == "ide-5632");
    }

    private string XenstoreRead(string path) => _xl.RunDom0("xenstore-read", path).Stdout.Trim();

    [Fact]
    [Trait("Feature", "CD-ROM media change"), Trait("Feature", "x86/HVM")]
    public void XlCdInsertAndEjectChangeTheMediumTheGuestReadsThroughQemu()
    {
        // The drive starts empty: QEMU still has the ide-cd device, with no medium.
        var created = _xl.Run(TimeSpan.FromMinutes(2), "create", Repository.PathOf("tests", "guests", "cdrom.cfg"),
            "disk=[\"vdev=hdc,devtype=cdrom,target=\"]", "extra=\"stay=1\"");
        Assert.True(created.ExitCode == 0, created.ToString());
        string domid = _xl.Run("domid", "cdrom").Stdout.Trim();
        int at = WaitForLine(domid, "PASS cdrom.atapi_signature", 0);
        at = WaitForLine(domid, "# no medium", at);
        Assert.Null(QueryBlock(domid)!["inserted"]);

        Assert.Equal(0, _xl.Run("cd-insert", "cdrom", "hdc", _one).ExitCode);
        at = WaitForLine(domid, "# medium XENSHARP-DISC-ONE sectors=64", at);
        var r = _xl.Run("cd-insert", "cdrom", "hdc", _two);
        Assert.True(r.ExitCode == 0, r.ToString());
        at = WaitForLine(domid, "# medium XENSHARP-DISC-TWO sectors=96", at);
        Assert.Equal(_two, (string?)QueryBlock(domid)!["inserted"]!["file"]);
        Assert.Equal(_two, XenstoreRead($"/local/domain/0/backend/vbd/{domid}/5632/params"));

        // A medium that is not there is refused before QEMU is asked: the guest keeps the one it has.
        Assert.NotEqual(0, _xl.Run("cd-insert", "cdrom", "hdc", _two + ".none").ExitCode);
        Assert.Equal(_two, (string?)QueryBlock(domid)!["inserted"]!["file"]);

        r = _xl.Run("cd-eject", "cdrom", "hdc");
        Assert.True(r.ExitCode == 0, r.ToString());
        WaitForLine(domid, "PASS cdrom.media_changes", at);
        Assert.Null(QueryBlock(domid)!["inserted"]);
        Assert.Equal("", XenstoreRead($"/local/domain/0/backend/vbd/{domid}/5632/params"));
    }

    [Fact]
    [Trait("Feature", "CD-ROM media change"), Trait("Feature", "x86/HVM"), Trait("Feature", "Dom0 stable libraries")]
    public void DebiansXlCdInsertAndEjectReachTheGuestThroughItsQemu()
    {
        // Debian's xl builds the domain and starts QEMU itself (libxl's own command line and QMP socket).
        string cfg = Path.Combine(_xl.RunDir, "cdrom-debian.cfg");
        File.WriteAllText(cfg, $"""
            name = "cdrom-debian"
            type = "hvm"
            firmware_override = "{Kernel}"
            device_model_version = "qemu-xen"
            device_model_override = "/usr/libexec/xen-qemu-system-i386"
            memory = 32
            vcpus = 1
            disk = [ "{_one},raw,hdc,cdrom" ]
            on_poweroff = "destroy"
            on_crash = "preserve"
            """);
        var r = _xl.RunDom0(TimeSpan.FromMinutes(3), "xl", "create", cfg);
        Assert.True(r.ExitCode == 0, r.ToString());
        string domid = _xl.RunDom0("xl", "domid", "cdrom-debian").Stdout.Trim();
        int at = WaitForLine(domid, "# medium XENSHARP-DISC-ONE sectors=64", 0);

        r = _xl.RunDom0(TimeSpan.FromMinutes(1), "xl", "cd-insert", "cdrom-debian", "hdc", _two);
        Assert.True(r.ExitCode == 0, r.ToString());
        at = WaitForLine(domid, "# medium XENSHARP-DISC-TWO sectors=96", at);
        r = _xl.RunDom0(TimeSpan.FromMinutes(1), "xl", "cd-eject", "cdrom-debian", "hdc");
        Assert.True(r.ExitCode == 0, r.ToString());
        WaitForLine(domid, "PASS cdrom.media_changes", at);
    }
}
