using XenSharp.Toolstack.Config;

namespace XenSharp.Toolstack.Tests.Config;

public class DomainConfigReaderTests
{
    private static DomainConfigReader.Result Read(string text, string file = "/etc/xen/g.cfg")
    {
        var c = XlConfigParser.Parse(text, file);
        c.Directory = Path.GetDirectoryName(file);
        return DomainConfigReader.Read(c, hostCpus: 8);
    }

    [Fact]
    public void DiskTargetsResolveAsKernelDoes()
    {
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        var d = Read("name=\"g\"\ntype=\"hvm\"\n" +
            "disk=[ \"~/.cache/xensharp/debian/debian.iso,raw,hdc,cdrom\", \"disk.img,raw,hda\", \"/srv/x.img,raw,hdb\" ]\n").Config;
        Assert.Equal(Path.Combine(home, ".cache/xensharp/debian/debian.iso"), d.Disks[0].Target);
        Assert.Equal("/etc/xen/disk.img", d.Disks[1].Target);
        Assert.Equal("/srv/x.img", d.Disks[2].Target);
    }

    [Theory]
    [InlineData("kernel = \"vmlinuz\\0.old\"", "kernel")]
    [InlineData("ramdisk = '\\000'", "ramdisk")]
    [InlineData("firmware_override = \"fw\\x00\"", "firmware_override")]
    public void APathWithANulCharacterNamesTheLine(string setting, string key)
    {
        var e = Assert.Throws<XlConfigException>(() => Read($"name = \"g\"\ntype = \"pvh\"\nkernel = \"k\"\n{setting}\n"));
        Assert.Equal($"/etc/xen/g.cfg:4: parameter `{key}' contains a NUL character", e.Message);
    }

    [Fact]
    public void PvhDomainWithTheDirectKernelBootKeys()
    {
        var r = Read("""
            name = "guest"
            type = "pvh"
            kernel = "vmlinuz"
            ramdisk = "/boot/initrd.img"
            cmdline = "console=hvc0 earlyprintk=xen"
            memory = 512
            maxmem = 1024
            vcpus = 2
            maxvcpus = 4
            cpus = "0-3,^1"
            cpus_soft = ["2", "3-7,^5"]
            on_poweroff = "destroy"
            on_reboot = "restart"
            on_crash = "preserve"
            on_watchdog = "coredump-destroy"
            uuid = "6a1ea0c2-9f5e-4b7b-8d11-3b8a4e2f0a11"
            """);
        var d = r.Config;
        Assert.Empty(r.Warnings);
        Assert.Equal("guest", d.Name);
        Assert.Equal(DomainType.Pvh, d.Type);
        Assert.Equal("/etc/xen/vmlinuz", d.Kernel);
        Assert.Equal("/boot/initrd.img", d.Ramdisk);
        Assert.Equal("console=hvc0 earlyprintk=xen", d.Cmdline);
        Assert.Equal(512 * 1024, d.TargetMemKb);
        Assert.Equal(1024 * 1024, d.MaxMemKb);
        Assert.Equal(2, d.Vcpus);
        Assert.Equal(4, d.MaxVcpus);
        Assert.Equal("0,2-3", d.CpusHard![0].ToString());
        Assert.Equal("2", d.CpusSoft![0].ToString());
        Assert.Equal("3-4,6-7", d.CpusSoft![1].ToString());
        Assert.Equal(ShutdownAction.Preserve, d.OnCrash);
        Assert.Equal(ShutdownAction.CoredumpDestroy, d.OnWatchdog);
        Assert.Equal(Guid.Parse("6a1ea0c2-9f5e-4b7b-8d11-3b8a4e2f0a11"), d.Uuid);
    }

    [Fact]
    public void DefaultsAreXls()
    {
        var d = Read("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\n").Config;
        Assert.Equal(32 * 1024, d.TargetMemKb);
        Assert.Equal(d.TargetMemKb, d.MaxMemKb);
        Assert.Equal(1, d.Vcpus);
        Assert.Equal(1, d.MaxVcpus);
        Assert.Equal(ShutdownAction.Destroy, d.OnPoweroff);
        Assert.Equal(ShutdownAction.Restart, d.OnReboot);
        Assert.Equal(ShutdownAction.Destroy, d.OnCrash);
        Assert.NotEqual(Guid.Empty, d.Uuid);
    }

    [Fact]
    public void SoftResetIsTheDefaultActionForASoftReset()
    {
        Assert.Equal(ShutdownAction.SoftReset, Read("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\n").Config.OnSoftReset);
        Assert.Equal(ShutdownAction.Destroy,
            Read("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\non_soft_reset=\"destroy\"\n").Config.OnSoftReset);
    }

    /// <summary>The pvshim keys are read, without a warning, for PVH guests only, as xl reads them.</summary>
    [Fact]
    public void PvshimKeysAreReadForPvhGuests()
    {
        var r = Read("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\npvshim=1\npvshim_path=\"shim\"\n" +
                     "pvshim_cmdline=\"pv-shim\"\npvshim_extra=\"loglvl=all\"\n");
        Assert.Empty(r.Warnings);
        Assert.True(r.Config.PvShim);
        Assert.Equal("/etc/xen/shim", r.Config.PvShimPath);
        Assert.Equal("pv-shim", r.Config.PvShimCmdline);
        Assert.Equal("loglvl=all", r.Config.PvShimExtra);
        var pvh = LibxlJson.DomainConfig(r.Config)["b_info"]!["type.pvh"]!;
        Assert.Equal("True", (string?)pvh["pvshim"]);
        Assert.Equal("loglvl=all", (string?)pvh["pvshim_extra"]);
        Assert.False(Read("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\n").Config.PvShim);
        Assert.False(Read("name=\"g\"\ntype=\"pv\"\nkernel=\"/k\"\npvshim=1\n").Config.PvShim);
    }

    [Fact]
    public void RootAndExtraMakeTheCommandLineWhenCmdlineIsAbsent()
    {
        Assert.Equal("root=/dev/xvda1 ro quiet",
            Read("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\nroot=\"/dev/xvda1 ro\"\nextra=\"quiet\"\n").Config.Cmdline);
        var r = Read("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\ncmdline=\"c\"\nextra=\"quiet\"\n");
        Assert.Equal("c", r.Config.Cmdline);
        Assert.Single(r.Warnings);
    }

    [Fact]
    public void HvmWithFirmwareOverride()
    {
        var d = Read("name=\"h\"\ntype=\"hvm\"\nfirmware_override=\"../guests/hello.elf\"\n", "/tmp/cfg/h.cfg").Config;
        Assert.Equal(DomainType.Hvm, d.Type);
        Assert.Equal("/tmp/guests/hello.elf", d.FirmwareOverride);
    }

    [Fact]
    public void HvmFromFirmwareTakesTheDeviceModelKeys()
    {
        var r = Read("name=\"h\"\ntype=\"hvm\"\nbios=\"seabios\"\nboot=\"dc\"\nserial=\"pty\"\n" +
            "device_model_override=\"../bin/qemu\"\n", "/tmp/cfg/h.cfg");
        Assert.Empty(r.Warnings);
        var d = r.Config;
        Assert.Null(d.FirmwareOverride);
        Assert.Equal("seabios", d.Bios);
        Assert.Equal("dc", d.Boot);
        Assert.Equal(["pty"], d.Serials);
        Assert.Equal("/tmp/bin/qemu", d.DeviceModelOverride);
        Assert.Equal(["file:/tmp/a", "pty"], Read("name=\"h\"\ntype=\"hvm\"\nserial=[\"file:/tmp/a\", \"pty\"]\n").Config.Serials);
        var e = Assert.Throws<XlConfigException>(() => Read("name=\"h\"\ntype=\"hvm\"\nbios=\"rombios\"\n"));
        Assert.Contains("rombios", e.Message);
    }

    [Fact]
    public void HvmPlatformKeysHaveLibxlsDefaultsAndNames()
    {
        var d = Read("name=\"h\"\ntype=\"hvm\"\nfirmware_override=\"/f\"\n").Config;
        Assert.True(d.Hpet);
        Assert.True(d.Acpi);
        Assert.True(d.Apic);
        Assert.Equal(1, d.TimerMode); // no_delay_for_missed_ticks
        Assert.False(d.Localtime);
        Assert.Equal(0, d.RtcTimeoffset);
        var r = Read("name=\"h\"\ntype=\"hvm\"\nfirmware_override=\"/f\"\nhpet=0\nacpi=0\napic=0\n" +
            "timer_mode=\"one_missed_tick_pending\"\nlocaltime=1\nrtc_timeoffset=-3600\n");
        Assert.Empty(r.Warnings);
        Assert.False(r.Config.Hpet);
        Assert.False(r.Config.Acpi);
        Assert.False(r.Config.Apic);
        Assert.Equal(3, r.Config.TimerMode);
        Assert.True(r.Config.Localtime);
        Assert.Equal(-3600, r.Config.RtcTimeoffset);
        var n = Read("name=\"h\"\ntype=\"hvm\"\nfirmware_override=\"/f\"\ntimer_mode=2\n");
        Assert.Equal(2, n.Config.TimerMode);
        Assert.Contains(n.Warnings, w => w.Contains("\"timer_mode\" as an integer is deprecated"));
        Assert.Throws<XlConfigException>(() => Read("name=\"h\"\ntype=\"hvm\"\nfirmware_override=\"/f\"\ntimer_mode=\"sometimes\"\n"));
        Assert.Throws<XlConfigException>(() => Read("name=\"h\"\ntype=\"hvm\"\nfirmware_override=\"/f\"\ntimer_mode=4\n"));
    }

    [Fact]
    public void Altp2mModesByNameOrNumber()
    {
        Assert.Equal(0, Read("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\n").Config.Altp2m);
        var r = Read("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\naltp2m=\"external\"\n");
        Assert.Empty(r.Warnings);
        Assert.Equal(2, r.Config.Altp2m);
        Assert.Equal(1, Read("name=\"g\"\ntype=\"hvm\"\nfirmware_override=\"/f\"\naltp2m=\"Mixed\"\n").Config.Altp2m);
        Assert.Equal(3, Read("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\naltp2m=3\n").Config.Altp2m);
        Assert.Throws<XlConfigException>(() => Read("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\naltp2m=\"sometimes\"\n"));
        Assert.Throws<XlConfigException>(() => Read("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\naltp2m=4\n"));
    }

    [Fact]
    public void UnknownKeysWarnWithFileAndLine()
    {
        var r = Read("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\nfrobnicate=1\nvtpm=['x']\n", "g.cfg");
        Assert.Contains("g.cfg:4: warning: unknown key `frobnicate' ignored", r.Warnings);
        Assert.Contains("g.cfg:5: warning: `vtpm' is not supported yet and is ignored", r.Warnings);
    }

    [Theory]
    [InlineData("type=\"pvh\"\nkernel=\"/k\"\n", "g.cfg: domain name must be specified (name=\"NAME\")")]
    [InlineData("name=\"g\"\ntype=\"pvx\"\n", "g.cfg:2: Invalid domain type pvx.")]
    [InlineData("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\non_crash=\"explode\"\n", "g.cfg:4: Unknown on_crash action \"explode\" specified")]
    [InlineData("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\nmemory=512\nmaxmem=256\n", "g.cfg:5: maxmem (256) must be greater than or equal to memory (512)")]
    [InlineData("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\nuuid=\"zzz\"\n", "g.cfg:4: Failed to parse UUID: zzz")]
    [InlineData("name=\"g\"\ntype=\"pvh\"\n", "g.cfg: a PVH domain needs kernel=\"PATHNAME\"")]
    [InlineData("name=\"g\"\n", "g.cfg: a PV domain needs kernel=\"PATHNAME\" (64-bit ELF or bzImage)")]
    [InlineData("name=\"g\"\nbootloader=\"pygrub\"\n", "g.cfg:2: a bootloader needs a disk to boot from")]
    [InlineData("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\ncpus=\"1-x\"\n", "g.cfg:4: invalid cpu specification `1-x'")]
    [InlineData("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\nvcpus=4\nmaxvcpus=2\n", "g.cfg:4: vcpus (4) must not exceed maxvcpus (2)")]
    [InlineData("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\nmemory=0\n", "g.cfg:4: parameter `memory' must be a positive number, not 0")]
    public void BadConfigurationsAreRejectedWithFileAndLine(string text, string message)
    {
        var e = Assert.Throws<XlConfigException>(() => Read(text, "g.cfg"));
        Assert.Equal(message, e.Message);
    }

    [Fact]
    public void APvGuestWithABootloaderNeedsNoKernelAndKeepsTheBootloadersArguments()
    {
        var d = Read("name=\"g\"\nbootloader=\"pygrub\"\nbootloader_args=[\"--entry=1\", \"-v\"]\n" +
            "disk=[ 'format=raw,vdev=xvda,target=/d.img' ]\n", "g.cfg").Config;
        Assert.Equal(DomainType.Pv, d.Type);
        Assert.Null(d.Kernel);
        Assert.Equal("pygrub", d.Bootloader);
        Assert.Equal(["--entry=1", "-v"], d.BootloaderArgs);
        // The deprecated string form is split at spaces, as xl does.
        d = Read("name=\"g\"\nbootloader=\"/bin/bl\"\nbootloader_args=\"-a  -b\"\ndisk=[ '/d.img,raw,xvda,rw' ]\n", "g.cfg").Config;
        Assert.Equal(["-a", "-b"], d.BootloaderArgs);
    }

    [Fact]
    public void CpuListForms()
    {
        Assert.Equal("all", CpuMap.TryParse("all", 8, out _)!.ToString());
        Assert.Equal("0-6", CpuMap.TryParse("all,^7", 8, out _)!.ToString());
        Assert.Equal("0,2-3,5", CpuMap.TryParse("0-3,5,^1", 8, out _)!.ToString());
        Assert.Equal("all", CpuMap.TryParse("nodes:0", 8, out _)!.ToString());
        Assert.Null(CpuMap.TryParse("nodes:1", 8, out var err));
        Assert.Equal("node 1 does not exist (the host has 1 node)", err);
    }

    /// <summary>A host of 8 CPUs on two nodes: 0-3 on node 0, 4-7 on node 1.</summary>
    private static readonly int[] TwoNodes = [0, 0, 0, 0, 1, 1, 1, 1];

    [Fact, Trait("Feature", "NUMA scheduler affinity")]
    public void NodesNameTheirCpus()
    {
        Assert.Equal("4-7", CpuMap.TryParse("node:1", 8, out _, TwoNodes)!.ToString());
        Assert.Equal("all", CpuMap.TryParse("nodes:0-1", 8, out _, TwoNodes)!.ToString());
        Assert.Equal("0-3,5", CpuMap.TryParse("node:0,5", 8, out _, TwoNodes)!.ToString());
        Assert.Equal("0-3", CpuMap.TryParse("all,^node:1", 8, out _, TwoNodes)!.ToString());
        Assert.Null(CpuMap.TryParse("nodes:0-2", 8, out var err, TwoNodes));
        Assert.Equal("node 2 does not exist (the host has 2 nodes)", err);

        var c = XlConfigParser.Parse("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\nvcpus=2\ncpus=\"node:1\"\ncpus_soft=[\"nodes:0\", \"6\"]\n", "/etc/xen/g.cfg");
        var d = DomainConfigReader.Read(c, 8, TwoNodes).Config;
        Assert.Equal(["4-7"], d.CpusHard!.Select(m => m.ToString()));
        Assert.Equal(["0-3", "6"], d.CpusSoft!.Select(m => m.ToString()));
    }

    [Theory, Trait("Feature", "NUMA scheduler affinity")]
    [InlineData("cpus=\"nodes:1-3\"", "g.cfg:4: node 2 does not exist (the host has 2 nodes)")]
    [InlineData("cpus_soft=\"node:x\"", "g.cfg:4: invalid node specification `node:x'")]
    [InlineData("cpus=\"2-9\"", "g.cfg:4: cpu 9 does not exist (the host has 8 cpus)")]
    [InlineData("cpus=\"node:0,^0-3\"", "g.cfg:4: `node:0,^0-3' leaves a vCPU no cpu to run on")]
    [InlineData("cpus=[\"1\", \"nodes:\"]", "g.cfg:4: invalid node specification `nodes:'")]
    public void BadCpuListsNameTheirLine(string line, string message)
    {
        var c = XlConfigParser.Parse($"name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\n{line}\n", "g.cfg");
        Assert.Equal(message, Assert.Throws<XlConfigException>(() => DomainConfigReader.Read(c, 8, TwoNodes)).Message);
    }

    [Fact]
    public void SeclabelAndInitSeclabelAreReadAsLabels()
    {
        var r = DomainConfigReader.Read(XlConfigParser.Parse("""
            name = "labelled"
            kernel = "/k"
            seclabel = "system_u:system_r:domU_t"
            init_seclabel = "system_u:system_r:domU_build_t"
            """, "l.cfg"), 8);
        Assert.Empty(r.Warnings);
        Assert.Equal("system_u:system_r:domU_t", r.Config.Seclabel);
        Assert.Equal("system_u:system_r:domU_build_t", r.Config.InitSeclabel);
        Assert.Null(DomainConfigReader.Read(XlConfigParser.Parse("name = \"plain\"\nkernel = \"/k\"\n", "p.cfg"), 8).Config.Seclabel);
    }
}
