using System.Text.RegularExpressions;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// PXE, as an HVM guest boots from the network on Xen: <c>boot = "n"</c> becomes QEMU's <c>-boot order=n</c>, SeaBIOS
/// runs the option ROM of the <c>model=e1000</c> NIC (Debian's ipxe-qemu, which QEMU places in the NIC's ROM BAR in
/// guest memory it populates and moves), and iPXE takes an address from dnsmasq over the TAP device vifD.0-emu on the
/// bridge, fetches its script by TFTP and from it Debian's kernel and the shell initramfs, and boots them. The guest also
/// has Debian's boot CD, which is not used. The daemon, QEMU and dnsmasq run in a network namespace of the test.
/// </summary>
public sealed partial class HvmPxeBootTests : IDisposable
{
    private static readonly TimeSpan BootLimit = TimeSpan.FromMinutes(12);
    private const string Bridge = "10.96.0.1";
    private readonly XlHost _xl = new();
    private NetworkNamespace? _net;
    private System.Diagnostics.Process? _dnsmasq;
    private SerialSocket? _serial;

    [GeneratedRegex(@"cmdline: .*pxe\.ip=(10\.96\.0\.\d+) pxe\.mac=([0-9a-f:]+)-end")]
    private static partial Regex PxeArguments();

    [Fact]
    [Trait("Feature", "x86/HVM iPXE"), Trait("Feature", "x86/HVM"), Trait("Feature", "x86/HVM BIOS")]
    public void TheE1000sIpxeRomBootsLinuxFromTftp()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        Assert.True(File.Exists("/usr/lib/ipxe/qemu/efi-e1000.rom"), "the e1000's iPXE ROM (ipxe-qemu) is not installed");
        Assert.True(File.Exists("/usr/sbin/dnsmasq"), "dnsmasq (dnsmasq-base) is not installed");
        Assert.True(File.Exists("/etc/xen/scripts/vif-bridge"), "Xen's hotplug scripts (xen-utils-common) are not installed");

        // What the TFTP server gives: iPXE's script, which puts the address DHCP gave iPXE on the kernel's command line.
        string tftp = Directory.CreateDirectory(Path.Combine(_xl.RunDir, "tftp")).FullName;
        File.Copy(store.KernelPath, Path.Combine(tftp, "vmlinuz"));
        File.Copy(store.ShellInitrdPath, Path.Combine(tftp, "initrd.img"));
        File.WriteAllText(Path.Combine(tftp, "boot.ipxe"), $$"""
            #!ipxe
            kernel tftp://{{Bridge}}/vmlinuz console=ttyS0,115200 pxe.ip=${net0/ip} pxe.mac=${net0/mac}
            initrd tftp://{{Bridge}}/initrd.img
            boot
            """);
        string dnsmasqLog = Path.Combine(_xl.RunDir, "dnsmasq.log");
        string iso = GrubRescueImage.Debian(store, _xl.RunDir);

        var net = _net = new NetworkNamespace("xspxe", _xl.RunDir);
        net.AddBridge("xenbr0", $"{Bridge}/24");
        _dnsmasq = net.Start("dnsmasq", "--keep-in-foreground", "--no-resolv", "--port=0",
            "--interface=xenbr0", "--bind-interfaces", "--dhcp-range=10.96.0.50,10.96.0.99,255.255.255.0,1h", "--leasefile-ro",
            "--user=root", "--enable-tftp", $"--tftp-root={tftp}", "--dhcp-boot=boot.ipxe", $"--log-facility={dnsmasqLog}");
        net.StartDaemon();   // and with it the QEMU it starts

        string socket = Path.Combine(_xl.RunDir, "serial.sock");
        string cfg = Path.Combine(_xl.RunDir, "pxe.cfg");
        File.WriteAllText(cfg, $"""
            name = "pxe"
            type = "hvm"
            memory = 256
            vcpus = 1
            serial = "unix:{socket},server=on,wait=off"
            disk = [ "{iso},raw,hdc,cdrom" ]
            vif = [ "mac=00:16:3e:5a:00:0b,bridge=xenbr0,model=e1000" ]
            boot = "n"
            on_crash = "preserve"
            """);
        var created = _xl.Run(TimeSpan.FromMinutes(2), "create", cfg);
        Assert.True(created.ExitCode == 0, created.ToString());
        string domid = _xl.Run("domid", "pxe").Stdout.Trim();
        string dmPid = NetworkNamespace.XenstoreRead(_xl.RunDir, $"/local/domain/0/libxl/{domid}/dm-pid");
        Assert.Contains("-boot order=n ", File.ReadAllText($"/proc/{dmPid}/cmdline").Replace('\0', ' '));
        _serial = new SerialSocket(socket, TimeSpan.FromSeconds(30));
        _serial.WaitFor("~ # ", BootLimit);

        // The kernel runs with the command line of iPXE's script, not GRUB's from the CD: iPXE's own DHCP lease and the
        // e1000's MAC are in it.
        string reply = _serial.Ask("echo cmdline: $(cat /proc/cmdline)-e\"\"nd", "-end");
        var m = PxeArguments().Match(reply);
        string log = File.ReadAllText(dnsmasqLog);
        Assert.True(m.Success, $"the kernel's command line is not the iPXE script's: {reply}\ndnsmasq:\n{log}");
        Assert.Equal("00:16:3e:5a:00:0b", m.Groups[2].Value);
        Assert.Matches($@"DHCPACK\(xenbr0\) {Regex.Escape(m.Groups[1].Value)} 00:16:3e:5a:00:0b", log);
        foreach (string file in new[] { "boot.ipxe", "vmlinuz", "initrd.img" })
            Assert.Contains($"sent {Path.Combine(tftp, file)} to {m.Groups[1].Value}", log);
    }

    public void Dispose()
    {
        _xl.Run("destroy", "pxe");
        _serial?.Dispose();
        _xl.Dispose();
        if (_dnsmasq is { } d)
        {
            if (!d.HasExited) d.Kill(entireProcessTree: true);
            d.WaitForExit();
            d.Dispose();
        }
        _net?.Dispose();
    }
}
