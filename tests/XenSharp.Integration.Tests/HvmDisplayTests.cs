using System.Globalization;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using XenSharp.Toolstack.Lifecycle;

namespace XenSharp.Integration.Tests;

/// <summary>
/// An HVM domain's emulated graphics card and VNC server, as libxl gives them to QEMU: SeaBIOS runs the card's VGA
/// BIOS (an option ROM in the card's PCI ROM BAR, which hvmloader placed) and prints its banner in text mode, which is
/// then in the card's memory (read through QEMU's monitor) and on the screen QEMU renders (QMP <c>screendump</c>: the
/// text rows with characters are the rows with lit pixels). The card's memory is populated by QEMU and relocated into
/// its BAR (XENMEM_populate_physmap, XEN_DMOP_relocate_memory). The VNC server listens where xenstore's
/// <c>console/vnc-port</c> says and speaks RFB, asking for the password <c>vncpasswd</c> sets.
/// </summary>
public sealed class HvmDisplayTests : IDisposable
{
    private readonly XlHost _xl = new();

    public void Dispose() => _xl.Dispose();

    [Fact]
    [Trait("Feature", "x86/HVM"), Trait("Feature", "x86/Emulated graphics (QEMU):")]
    public void CirrusIsTheDefaultCardAndShowsSeabiosTextOnAnOpenVncServer()
    {
        var (domid, qemuArgs) = Boot("cirrus", "");
        Assert.Contains("-device\0cirrus-vga,vgamem_mb=8\0", qemuArgs);
        Assert.Contains("-vnc\0127.0.0.1:0,to=99\0", qemuArgs);
        // The guest's RAM is its memory less the card's 8 MiB, which QEMU populates itself (libxl's video_memkb).
        Assert.Contains("-m\056\0", qemuArgs);
        using var qmp = Qmp.Connect(Path.Combine(_xl.RunDir, $"qmp-libxl-{domid}"), TimeSpan.FromSeconds(30));
        AssertCard(qmp, vendor: 0x1013, device: 0x00B8);
        AssertScreenShowsSeabios(qmp, domid);
        Assert.Equal(1, VncSecurityType(domid, 5900)); // None: no vncpasswd
        AssertVramRelocatedCleanly("cirrus");

        // xl vncviewer runs $VNCVIEWER on LISTEN:DISPLAY, as libxl_vncviewer_exec does.
        string viewer = Path.Combine(_xl.RunDir, "vncviewer.sh");
        string viewerArgs = Path.Combine(_xl.RunDir, "vncviewer-args");
        File.WriteAllText(viewer, $"#!/bin/sh\necho \"$@\" > {viewerArgs}\n");
        File.SetUnixFileMode(viewer, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        _xl.Environment["VNCVIEWER"] = viewer;
        var run = _xl.Run("vncviewer", "cirrus");
        Assert.True(run.ExitCode == 0, run.ToString());
        int port = int.Parse(_xl.RunDom0("xenstore-read", $"/local/domain/{domid}/console/vnc-port").Stdout.Trim(), CultureInfo.InvariantCulture);
        Assert.Equal($"127.0.0.1:{port - 5900}", File.ReadAllText(viewerArgs).Trim());
    }

    [Fact]
    [Trait("Feature", "x86/HVM"), Trait("Feature", "x86/Emulated graphics (QEMU):"), Trait("Feature", "x86/Emulated input (QEMU):")]
    public void StdvgaOnAChosenVncDisplayWithAUsbTablet()
    {
        var (domid, qemuArgs) = Boot("std", """
            vga = "stdvga"
            videoram = 16
            vncdisplay = 7
            usbdevice = "tablet"
            """);
        Assert.Contains("-device\0VGA,vgamem_mb=16\0", qemuArgs);
        Assert.Contains("-vnc\0127.0.0.1:7,to=99\0", qemuArgs);
        Assert.Contains("-usb\0-usbdevice\0tablet\0", qemuArgs);
        Assert.Contains("-m\048\0", qemuArgs);
        using var qmp = Qmp.Connect(Path.Combine(_xl.RunDir, $"qmp-libxl-{domid}"), TimeSpan.FromSeconds(30));
        AssertCard(qmp, vendor: 0x1234, device: 0x1111);
        AssertScreenShowsSeabios(qmp, domid);
        Assert.Equal(1, VncSecurityType(domid, 5907)); // None: no vncpasswd
        // The tablet is QEMU's absolute pointer on its USB controller.
        var mice = qmp.Execute("query-mice")!.AsArray();
        Assert.Contains(mice, m => m!["name"]!.GetValue<string>().Contains("Tablet", StringComparison.Ordinal) && m["absolute"]!.GetValue<bool>());
        AssertVramRelocatedCleanly("std");
    }

    [Fact]
    [Trait("Feature", "x86/HVM"), Trait("Feature", "x86/Emulated graphics (QEMU):")]
    public void AVncPasswordThatDebiansQemuCannotServeFailsTheCreationCleanly()
    {
        // libxl asks QEMU for "-vnc ...,password=on"; Debian's qemu-system-xen has no DES cipher for VNC
        // authentication and exits, so the domain is not created, and nothing of it is left.
        string cfg = Path.Combine(_xl.RunDir, "pw.cfg");
        File.WriteAllText(cfg, "name = \"pw\"\ntype = \"hvm\"\nmemory = 64\nvncpasswd = \"xensharp\"\n");
        var created = _xl.Run(TimeSpan.FromMinutes(2), "create", cfg);
        Assert.NotEqual(0, created.ExitCode);
        Assert.Contains("password=on", File.ReadAllText(Path.Combine(_xl.RunDir, "qemu-dm-pw.log")));
        Assert.Contains("Cipher backend does not support DES", created.Stderr);
        Assert.DoesNotContain("pw", _xl.Run("list").Stdout);
    }

    /// <summary>Creates a 64 MiB SeaBIOS guest with no disks and waits for SeaBIOS's banner; its domid and QEMU's
    /// command line (NUL-separated, as /proc shows it).</summary>
    private (string Domid, string QemuArgs) Boot(string name, string extra)
    {
        string cfg = Path.Combine(_xl.RunDir, $"{name}.cfg");
        File.WriteAllText(cfg, $"name = \"{name}\"\ntype = \"hvm\"\nmemory = 64\nvcpus = 1\non_crash = \"destroy\"\n{extra}\n");
        var created = _xl.Run(TimeSpan.FromMinutes(2), "create", cfg);
        Assert.True(created.ExitCode == 0, created.ToString());
        string domid = _xl.Run("domid", name).Stdout.Trim();
        Assert.True(XlHost.WaitUntil(() => _xl.Run("dmesg").Stdout.Contains($"(d{domid}) Press ESC for boot menu"), TimeSpan.FromMinutes(3)),
            "SeaBIOS did not get to its boot menu:\n" + _xl.Run("dmesg").Stdout);
        string log = _xl.Run("dmesg").Stdout;
        foreach (var line in new[] { "Scan for VGA option rom", "Running option rom at c000:0003", "Turning on vga text mode console" })
            Assert.Contains($"(d{domid}) {line}", log);
        int pid = int.Parse(_xl.RunDom0("xenstore-read", $"/local/domain/0/libxl/{domid}/dm-pid").Stdout.Trim(), CultureInfo.InvariantCulture);
        return (domid, File.ReadAllText($"/proc/{pid}/cmdline"));
    }

    /// <summary>The card is on QEMU's PCI bus as a VGA controller, its framebuffer BAR where hvmloader put it (the top
    /// of the 32-bit MMIO hole).</summary>
    private static void AssertCard(Qmp qmp, int vendor, int device)
    {
        var devices = qmp.Execute("query-pci")![0]!["devices"]!.AsArray();
        var card = devices.SingleOrDefault(d => d!["class_info"]!["class"]!.GetValue<int>() == 0x0300);
        Assert.NotNull(card);
        Assert.Equal(vendor, card["id"]!["vendor"]!.GetValue<int>());
        Assert.Equal(device, card["id"]!["device"]!.GetValue<int>());
        var bar0 = card["regions"]!.AsArray().Single(r => r!["bar"]!.GetValue<int>() == 0);
        Assert.InRange(bar0["address"]!.GetValue<ulong>(), 0xF000_0000UL, 0xFBFF_FFFFUL);
    }

    /// <summary>SeaBIOS's banner is in the text buffer at 0xB8000, and the rendered 720x400 text screen has lit pixels
    /// in exactly the character rows that hold text.</summary>
    private void AssertScreenShowsSeabios(Qmp qmp, string domid)
    {
        string[] rows = [];
        Assert.True(XlHost.WaitUntil(() =>
        {
            rows = TextRows(qmp);
            return rows.Any(r => r.StartsWith("Press ESC for boot menu", StringComparison.Ordinal));
        }, TimeSpan.FromSeconds(30)), "the text screen:\n" + string.Join('\n', rows));
        Assert.StartsWith("SeaBIOS (version 1.16", rows[0], StringComparison.Ordinal);

        string file = Path.Combine(_xl.RunDir, $"screen-{domid}.ppm");
        qmp.Execute("screendump", new JsonObject { ["filename"] = file });
        var (width, height, pixels) = ReadPpm(file);
        Assert.Equal((720, 400), (width, height));
        rows = TextRows(qmp); // the same moment, near enough: SeaBIOS waits at its menu
        for (int row = 0; row < 25; row++)
        {
            bool lit = false;
            for (int y = row * 16; y < row * 16 + 16 && !lit; y++)
                for (int x = 0; x < width * 3 && !lit; x++)
                    lit = pixels[(y * width * 3) + x] != 0;
            // The cursor lights the row it sits on, which may be empty.
            if (rows[row].Trim().Length > 0)
                Assert.True(lit, $"text row {row} ('{rows[row]}') is blank on the screen");
        }
        Assert.True(rows.Count(r => r.Trim().Length == 0) >= 10);
        int blankRowsLit = 0;
        for (int row = 0; row < 25; row++)
        {
            if (rows[row].Trim().Length > 0) continue;
            bool lit = false;
            for (int y = row * 16; y < row * 16 + 16 && !lit; y++)
                for (int x = 0; x < width * 3 && !lit; x++)
                    lit = pixels[(y * width * 3) + x] != 0;
            if (lit) blankRowsLit++;
        }
        Assert.True(blankRowsLit <= 1, $"{blankRowsLit} empty text rows have lit pixels");
    }

    /// <summary>The 80x25 text buffer's characters, read through QEMU's monitor (the card's memory, not the guest's RAM).</summary>
    private static string[] TextRows(Qmp qmp)
    {
        string dump = qmp.Execute("human-monitor-command", new JsonObject { ["command-line"] = "xp /2000xh 0xb8000" })!.GetValue<string>();
        var chars = new StringBuilder();
        foreach (string line in dump.Split('\n', StringSplitOptions.RemoveEmptyEntries))
            foreach (string word in line[(line.IndexOf(':') + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                byte c = (byte)Convert.ToUInt16(word.Trim(), 16);
                chars.Append(c is >= 0x20 and < 0x7F ? (char)c : ' ');
            }
        string all = chars.ToString().PadRight(2000);
        return Enumerable.Range(0, 25).Select(r => all.Substring(r * 80, 80).TrimEnd()).ToArray();
    }

    private static (int Width, int Height, byte[] Pixels) ReadPpm(string file)
    {
        byte[] data = File.ReadAllBytes(file);
        // "P6\n<width> <height>\n255\n" then RGB bytes.
        int at = 0;
        string Token()
        {
            while (char.IsWhiteSpace((char)data[at])) at++;
            int start = at;
            while (!char.IsWhiteSpace((char)data[at])) at++;
            return Encoding.ASCII.GetString(data, start, at - start);
        }
        Assert.Equal("P6", Token());
        int w = int.Parse(Token(), CultureInfo.InvariantCulture), h = int.Parse(Token(), CultureInfo.InvariantCulture);
        Assert.Equal("255", Token());
        at++;
        Assert.Equal(w * h * 3, data.Length - at);
        return (w, h, data[at..]);
    }

    /// <summary>Connects to the VNC server xenstore names, as a viewer does, and returns the one security type the RFB
    /// 3.8 server offers.</summary>
    private int VncSecurityType(string domid, int firstPort)
    {
        string host = _xl.RunDom0("xenstore-read", $"/local/domain/{domid}/console/vnc-listen").Stdout.Trim();
        int port = int.Parse(_xl.RunDom0("xenstore-read", $"/local/domain/{domid}/console/vnc-port").Stdout.Trim(), CultureInfo.InvariantCulture);
        Assert.Equal("127.0.0.1", host);
        Assert.InRange(port, firstPort, firstPort + 99);
        using var client = new TcpClient();
        client.ReceiveTimeout = 10_000;
        client.Connect(host, port);
        var stream = client.GetStream();
        var version = new byte[12];
        stream.ReadExactly(version);
        Assert.Equal("RFB 003.008\n", Encoding.ASCII.GetString(version));
        stream.Write("RFB 003.008\n"u8);
        int count = stream.ReadByte();
        Assert.Equal(1, count);
        return stream.ReadByte();
    }

    /// <summary>QEMU moved the card's memory into its BAR without an error from the hypervisor.</summary>
    private void AssertVramRelocatedCleanly(string name)
    {
        string log = File.ReadAllText(Path.Combine(_xl.RunDir, $"qemu-dm-{name}.log"));
        Assert.DoesNotContain("relocate_memory", log);
        Assert.DoesNotContain("failed", log);
    }
}
