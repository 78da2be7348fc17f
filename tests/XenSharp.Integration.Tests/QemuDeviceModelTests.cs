using System.Diagnostics;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Debian's QEMU (qemu-system-xen 7.2, <c>-machine xenfv</c>) attached as the device model of an HVM domain built by
/// XenSharp's toolstack, through XenSharp's drop-in Xen libraries: it creates its IOREQ server, maps the server's pages
/// as a resource, binds the per-vCPU event channels, claims its port, MMIO and PCI ranges and tells xenstore it runs.
/// The <c>qemuio</c> test kernel's port I/O then travels through the ioreq page to QEMU and back: the PCI
/// configuration space of QEMU's i440FX and PIIX3, and QEMU's 16550 UART, whose output QEMU writes to a file.
/// </summary>
public sealed class QemuDeviceModelTests : IDisposable
{
    private readonly XlHost _xl = new();

    public void Dispose() => _xl.Dispose();

    [Fact]
    [Trait("Feature", "x86/HVM"), Trait("Feature", "Dom0 stable libraries")]
    public void AnHvmGuestsPortIoIsServedByQemu()
    {
        Assert.True(File.Exists(Repository.PathOf("tests", "guests", "build", "qemuio.elf")), "qemuio.elf is not built (make -C tests/guests)");
        var created = _xl.Run("create", "-p", Repository.PathOf("tests", "guests", "qemuio.cfg"));
        Assert.True(created.ExitCode == 0, created.ToString());
        string domid = _xl.Run("domid", "qemuio").Stdout.Trim();
        string serial = Path.Combine(_xl.RunDir, "qemuio-serial.txt");

        using var qemu = StartQemu(domid, "qemuio", serial);
        try
        {
            Assert.True(XlHost.WaitUntil(() => qemu.Process.HasExited
                    || _xl.RunDom0("xenstore-read", $"/local/domain/0/device-model/{domid}/state").Stdout.Trim() == "running",
                TimeSpan.FromMinutes(2)) && !qemu.Process.HasExited, $"QEMU did not start:\n{qemu.Log}");

            Assert.Equal(0, _xl.Run("unpause", "qemuio").ExitCode);
            // The guest powers off when its checks are done (on_poweroff = "destroy").
            Assert.True(XlHost.WaitUntil(() => !_xl.Run("list").Stdout.Contains("qemuio"), TimeSpan.FromMinutes(3)),
                "the guest did not finish:\n" + _xl.Run("dmesg").Stdout);
            string log = _xl.Run("dmesg").Stdout;
            Assert.Contains($"(d{domid}) DONE passed=", log);
            Assert.DoesNotContain($"(d{domid}) FAIL", log);
            Assert.DoesNotContain($"(d{domid}) SKIP", log);
            foreach (var check in new[] { "pci_host_bridge_id", "pci_piix3_id", "pci_piix3_class", "pci_word_read", "pci_byte_read",
                         "pci_empty_slot", "pci_address_readback", "pci_piix3_pirq_route", "uart_scratch", "uart_lcr", "uart_lsr_thr_empty" })
                Assert.Contains($"(d{domid}) PASS qemuio.{check}", log);
            Assert.True(XlHost.WaitUntil(() => File.Exists(serial) && File.ReadAllText(serial).Contains("qemuio: hello through the 16550"),
                TimeSpan.FromSeconds(30)), "QEMU's serial output: " + (File.Exists(serial) ? File.ReadAllText(serial) : "(none)"));
        }
        finally
        {
            qemu.Stop();
        }
    }

    [Fact]
    [Trait("Feature", "x86/HVM"), Trait("Feature", "Dom0 stable libraries")]
    public void RepStringIoAndVgaMemoryWritesAreServedByQemu()
    {
        Assert.True(File.Exists(Repository.PathOf("tests", "guests", "build", "qemustr.elf")), "qemustr.elf is not built (make -C tests/guests)");
        // The disk the guest reads with REP INSW/INSL: a known byte at every offset (qemustr.c's disk_byte).
        string disk = Path.Combine(_xl.RunDir, "qemustr-disk.img");
        var image = new byte[64 * Sector];
        for (int o = 0; o < image.Length; o++)
            image[o] = DiskByte(o);
        File.WriteAllBytes(disk, image);
        var created = _xl.Run("create", "-p", Repository.PathOf("tests", "guests", "qemustr.cfg"));
        Assert.True(created.ExitCode == 0, created.ToString());
        string domid = _xl.Run("domid", "qemustr").Stdout.Trim();
        string serial = Path.Combine(_xl.RunDir, "qemustr-serial.txt");
        // Room for QEMU's 16 MiB of VGA memory, which it populates in the guest (libxl adds videoram to maxmem).
        Assert.Equal(0, _xl.Run("mem-max", "qemustr", "64").ExitCode);
        using var qemu = StartQemu(domid, "qemustr", serial,
            "-drive", $"file={disk},if=ide,index=0,media=disk,format=raw", "-vga", "std", "-global", "VGA.romfile=");
        try
        {
            Assert.True(XlHost.WaitUntil(() => qemu.Process.HasExited
                    || _xl.RunDom0("xenstore-read", $"/local/domain/0/device-model/{domid}/state").Stdout.Trim() == "running",
                TimeSpan.FromMinutes(2)) && !qemu.Process.HasExited, $"QEMU did not start:\n{qemu.Log}");
            Assert.Equal(0, _xl.Run("unpause", "qemustr").ExitCode);
            Assert.True(XlHost.WaitUntil(() => !_xl.Run("list").Stdout.Contains("qemustr"), TimeSpan.FromMinutes(3)),
                "the guest did not finish:\n" + _xl.Run("dmesg").Stdout);
            string log = _xl.Run("dmesg").Stdout;
            Assert.Contains($"(d{domid}) DONE passed=", log);
            Assert.DoesNotContain($"(d{domid}) FAIL", log);
            Assert.DoesNotContain($"(d{domid}) SKIP", log);
            foreach (var check in new[] { "insw_across_page_regs", "insw_across_page_data", "insw_backward_regs", "insw_backward_data",
                         "insl_data", "insw_rest_regs", "insw_parts_data", "outsw_regs", "outsw_read_back", "code_read_over_runs",
                         "outsb_regs", "insb_regs", "insb_data", "movsl_to_mmio_regs", "movsl_to_mmio_data", "movsb_from_mmio_regs",
                         "movsb_from_mmio_data", "movsw_backward_regs", "movsw_backward_data", "stosl_to_mmio_regs", "stosl_to_mmio_data",
                         "vga_byte_writes", "vga_qword_writes", "vga_write_then_read" })
                Assert.Contains($"(d{domid}) PASS qemustr.{check}", log);
            // What REP OUTSW wrote reached the image through QEMU's IDE, and REP OUTSB's line its serial output.
            qemu.Stop();
            byte[] after = File.ReadAllBytes(disk);
            for (int i = 0; i < Sector; i++)
                Assert.True(after[10 * Sector + i] == (byte)(0xC3 ^ (i * 5)), $"sector 10 byte {i} is {after[10 * Sector + i]:x2}");
            Assert.Contains("qemustr: rep outsb through the 16550", File.ReadAllText(serial));
        }
        finally
        {
            qemu.Stop();
        }
    }

    private const int Sector = 512;

    private static byte DiskByte(int o) => (byte)(o * 7 + (o >> 9) * 31 + 1);

    /// <summary>QEMU as libxl starts the device model of an HVM domain, attached to an existing domain, with the guest's
    /// serial port to a file.</summary>
    private RunningQemu StartQemu(string domid, string name, string serial, params string[] extra)
    {
        string[] args = ["-xen-domid", domid, "-xen-attach",
            "-name", name, "-machine", "xenfv", "-nodefaults", "-no-user-config", "-display", "none",
            "-chardev", $"socket,id=libxl-cmd,path={Path.Combine(_xl.RunDir, $"qmp-libxl-{domid}")},server=on,wait=off",
            "-mon", "chardev=libxl-cmd,mode=control", "-serial", $"file:{serial}", "-m", "32",
            .. (extra.Contains("-vga") ? extra : ["-vga", "none", .. extra])];
        return new RunningQemu(Process.Start(_xl.Dom0StartInfo(["/usr/libexec/xen-qemu-system-i386", .. args]))!);
    }

    private sealed class RunningQemu : IDisposable
    {
        private readonly System.Text.StringBuilder _log = new();

        public RunningQemu(Process p)
        {
            Process = p;
            p.OutputDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
            p.ErrorDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
        }

        public Process Process { get; }

        public string Log { get { lock (_log) return _log.ToString(); } }

        public void Stop()
        {
            if (!Process.HasExited)
                Process.Kill(entireProcessTree: true);
            Process.WaitForExit();
        }

        public void Dispose()
        {
            Stop();
            Process.Dispose();
        }
    }

    [Fact]
    [Trait("Feature", "x86/HVM"), Trait("Feature", "x86/HVM BIOS"), Trait("Feature", "Dom0 stable libraries")]
    public void HvmloaderHandsOverToSeabiosWithQemuAsTheDeviceModel()
    {
        string cfg = Path.Combine(_xl.RunDir, "bios.cfg");
        string serial = Path.Combine(_xl.RunDir, "bios-serial.txt");
        File.WriteAllText(cfg, $"name = \"bios\"\ntype = \"hvm\"\nmemory = 64\nvcpus = 1\non_crash = \"destroy\"\nserial = \"file:{serial}\"\n");
        var created = _xl.Run(TimeSpan.FromMinutes(2), "create", cfg);
        Assert.True(created.ExitCode == 0, created.ToString());
        string domid = _xl.Run("domid", "bios").Stdout.Trim();
        string d = $"(d{domid}) ";
        // Debian's hvmloader (its debug port 0xE9 reaches the hypervisor log) finds Xen and QEMU's PCI devices, builds
        // the tables, and starts SeaBIOS, which prints its banner there too.
        Assert.True(XlHost.WaitUntil(() => _xl.Run("dmesg").Stdout.Contains(d + "Press ESC for boot menu"), TimeSpan.FromMinutes(3)),
            "SeaBIOS did not get to its boot menu:\n" + _xl.Run("dmesg").Stdout);
        string log = _xl.Run("dmesg").Stdout;
        foreach (var line in new[] { "HVM Loader", "Detected Xen v", "System requested SeaBIOS", "PCI-ISA link 0 routed to IRQ",
                     "Loading SeaBIOS ...", "Loading ACPI ...", "Invoking SeaBIOS ...", "SeaBIOS (version 1.16", "Found Xen hypervisor signature",
                     "Running on QEMU (i440fx)", "xen: copy BIOS tables...", "Found 1 serial ports" })
            Assert.Contains(d + line, log);
        Assert.DoesNotContain(d + " OVERLAP", log);
        Assert.True(File.Exists(serial), "QEMU did not open the serial file xl.cfg names");

        // QEMU runs as libxl runs it, and its death crashes only its domain (on_crash = "destroy" here).
        Assert.Equal("running", _xl.RunDom0("xenstore-read", $"/local/domain/0/device-model/{domid}/state").Stdout.Trim());
        Assert.Equal("seabios", _xl.RunDom0("xenstore-read", $"/local/domain/{domid}/hvmloader/bios").Stdout.Trim());
        int pid = int.Parse(_xl.RunDom0("xenstore-read", $"/local/domain/0/libxl/{domid}/dm-pid").Stdout.Trim());
        Assert.Equal("/usr/libexec/xen-qemu-system-i386", new FileInfo($"/proc/{pid}/exe").ResolveLinkTarget(false)?.FullName);
        Assert.Contains("-machine\0xenfv", File.ReadAllText($"/proc/{pid}/cmdline"));
        Assert.True(File.Exists(Path.Combine(_xl.RunDir, $"qmp-libxl-{domid}")));
        Process.GetProcessById(pid).Kill();
        Assert.True(XlHost.WaitUntil(() => !_xl.Run("list").Stdout.Contains("bios"), TimeSpan.FromMinutes(1)),
            "the domain outlived its device model:\n" + _xl.Run("list").Stdout);
        Assert.Contains("Domain-0", _xl.Run("list").Stdout);
        Assert.Contains($"(XEN) domain {domid} shut down: Crash", _xl.Run("dmesg").Stdout);
    }
}
