using System.Buffers.Binary;
using System.Text;
using XenSharp.Toolstack.Builder;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Tests.Builder;

[Trait("Feature", "x86/PVH"), Trait("Feature", "Direct-boot kernel image format")]
public class PvhBuilderTests
{
    private const ulong Mem = 64 << 20;
    private static readonly byte[] Code = Enumerable.Range(0, 5000).Select(i => (byte)(i ^ 0x5A)).ToArray();

    private static (PvhBuildResult R, SparseGuestMemory M) Build(byte[]? ramdisk = null, string cmdline = "console=hvc0 earlyprintk=xen", int vcpus = 2, int maxVcpus = 4, ulong mem = Mem)
    {
        var m = new SparseGuestMemory();
        var r = PvhBuilder.Build(new PvhBuildSpec(TestImages.Elf(Code, 0x100010, bss: 9000), "k", ramdisk, cmdline, mem, vcpus, maxVcpus), m);
        return (r, m);
    }

    private static ulong U64(SparseGuestMemory m, ulong a) { var b = new byte[8]; m.Read(a, b); return BinaryPrimitives.ReadUInt64LittleEndian(b); }
    private static uint U32(SparseGuestMemory m, ulong a) { var b = new byte[4]; m.Read(a, b); return BinaryPrimitives.ReadUInt32LittleEndian(b); }
    private static byte[] Bytes(SparseGuestMemory m, ulong a, int n) { var b = new byte[n]; m.Read(a, b); return b; }

    [Fact]
    public void KernelIsLoadedAtItsPhysicalAddressWithBssZeroed()
    {
        var (r, m) = Build();
        using var _ = m;
        Assert.Equal(Code, Bytes(m, TestImages.LoadAddress, Code.Length));
        Assert.All(Bytes(m, TestImages.LoadAddress + (ulong)Code.Length, 9000), b => Assert.Equal(0, b));
        Assert.Equal(0x100010u, r.Entry);
    }

    [Fact]
    public void StartInfoCarriesMagicCmdlineModuleMemmapAndRsdp()
    {
        byte[] initrd = Enumerable.Range(0, 10000).Select(i => (byte)i).ToArray();
        var (r, m) = Build(initrd);
        using var _ = m;
        ulong si = r.StartInfoAddress;
        Assert.True(si < 1UL << 30);
        Assert.Equal(0x336ec578u, U32(m, si));
        Assert.Equal(1u, U32(m, si + 4));
        Assert.Equal(0u, U32(m, si + 8)); // not SIF_INITDOMAIN
        Assert.Equal(1u, U32(m, si + 12));

        ulong modlist = U64(m, si + 16);
        Assert.Equal(r.RamdiskAddress, U64(m, modlist));
        Assert.Equal((ulong)initrd.Length, U64(m, modlist + 8));
        Assert.Equal(initrd, Bytes(m, r.RamdiskAddress!.Value, initrd.Length));
        Assert.True(r.RamdiskAddress >= r.KernelEnd);

        ulong cmd = U64(m, si + 24);
        Assert.Equal("console=hvc0 earlyprintk=xen\0", Encoding.ASCII.GetString(Bytes(m, cmd, 29)));

        Assert.Equal(r.Acpi.RsdpAddress, U64(m, si + 32));
        Assert.Equal("RSD PTR ", Encoding.ASCII.GetString(Bytes(m, r.Acpi.RsdpAddress, 8)));

        ulong mm = U64(m, si + 40);
        uint n = U32(m, si + 48);
        Assert.Equal((uint)r.Memmap.Count, n);
        var entries = Enumerable.Range(0, (int)n).Select(i => (Addr: U64(m, mm + (ulong)i * 24), Size: U64(m, mm + (ulong)i * 24 + 8), Type: U32(m, mm + (ulong)i * 24 + 16))).ToList();
        Assert.Equal((0UL, Mem, 1u), entries[0]);
        Assert.Contains((0xFEFF8000UL, 0x8000UL, 2u), entries);
        Assert.Contains(entries, e => e.Addr == 0xFC000000 && e.Type == 4);
    }

    /// <summary>A PV shim's modules: the PV kernel with the guest's command line, then the ramdisk without one.</summary>
    [Fact]
    public void ModulesCarryTheirOwnCommandLines()
    {
        byte[] kernel = Enumerable.Range(0, 7000).Select(i => (byte)(i * 7)).ToArray();
        byte[] initrd = Enumerable.Range(0, 3000).Select(i => (byte)(i * 3)).ToArray();
        using var m = new SparseGuestMemory();
        var spec = new PvhBuildSpec(TestImages.Elf(Code, 0x100010, bss: 9000), "shim", null, "pv-shim console=xen,pv", Mem, 1, 1)
        {
            Modules = [new PvhModule(kernel, "console=hvc0 root=/dev/xvda"), new PvhModule(initrd)],
        };
        var r = PvhBuilder.Build(spec, m);
        ulong si = r.StartInfoAddress;
        Assert.Null(r.RamdiskAddress);
        Assert.Equal(2u, U32(m, si + 12));
        ulong modlist = U64(m, si + 16);
        Assert.Equal("pv-shim console=xen,pv\0", Encoding.ASCII.GetString(Bytes(m, U64(m, si + 24), 23)));

        ulong k = U64(m, modlist), rd = U64(m, modlist + 32);
        Assert.Equal(kernel, Bytes(m, k, kernel.Length));
        Assert.Equal((ulong)kernel.Length, U64(m, modlist + 8));
        Assert.Equal("console=hvc0 root=/dev/xvda\0", Encoding.ASCII.GetString(Bytes(m, U64(m, modlist + 16), 28)));
        Assert.Equal(0UL, U64(m, modlist + 24));
        Assert.Equal(initrd, Bytes(m, rd, initrd.Length));
        Assert.Equal((ulong)initrd.Length, U64(m, modlist + 40));
        Assert.Equal(0UL, U64(m, modlist + 48)); // no command line
        Assert.True(k >= r.KernelEnd && rd >= k + (ulong)kernel.Length && k % 4096 == 0 && rd % 4096 == 0);
    }

    [Fact]
    public void NoRamdiskMeansNoModules()
    {
        var (r, m) = Build(ramdisk: null);
        using var _ = m;
        Assert.Equal(0u, U32(m, r.StartInfoAddress + 12));
        Assert.Equal(0UL, U64(m, r.StartInfoAddress + 16));
    }

    [Fact]
    public void SpecialPagesAreZeroedAndWhereXenPutsThem()
    {
        var (r, m) = Build();
        using var _ = m;
        Assert.Equal(0xFEFFCUL, r.XenstorePfn);
        Assert.Equal(0xFEFFFUL, r.ConsolePfn);
        for (ulong pfn = 0xFEFF8; pfn < 0xFF000; pfn++)
            Assert.All(m.Page(pfn).ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public void FirstVcpuStartsInFlat32BitProtectedModeWithRbxAtStartInfo()
    {
        var (r, m) = Build();
        using var _ = m;
        Assert.Equal(r.Entry, r.Registers.Rip);
        Assert.Equal(r.StartInfoAddress, r.Registers.Rbx);
        Assert.Equal(0x11UL, r.SpecialRegisters.Cr0);
        Assert.Equal(0UL, r.SpecialRegisters.Cr4);
        Assert.Equal(0UL, r.SpecialRegisters.Efer);
        Assert.Equal(0xFFFFFFFFu, r.SpecialRegisters.Cs.Limit);
        Assert.Equal(0x0B, r.SpecialRegisters.Cs.Attributes & 0xF);
        Assert.NotEqual(0, r.SpecialRegisters.Cs.Attributes & (1 << 14)); // 32-bit
        Assert.Equal(0, r.SpecialRegisters.Cs.Attributes & (1 << 13));    // not 64-bit
        Assert.Equal(0x67u, r.SpecialRegisters.Tr.Limit);
        Assert.Equal(0UL, r.Registers.Rflags & (1 << 9)); // IF clear
    }

    [Fact]
    public void AcpiTablesAreConsistentAndChecksummed()
    {
        var (r, m) = Build(vcpus: 2, maxVcpus: 4);
        using var _ = m;
        ulong rsdp = r.Acpi.RsdpAddress;
        Assert.Equal(0, AcpiSum(Bytes(m, rsdp, 20)));
        Assert.Equal(0, AcpiSum(Bytes(m, rsdp, 36)));
        ulong xsdt = U64(m, rsdp + 24);
        ulong rsdt = U32(m, rsdp + 16);
        Assert.Equal("XSDT", Sig(m, xsdt));
        Assert.Equal("RSDT", Sig(m, rsdt));
        var tables = new Dictionary<string, ulong>();
        uint xlen = U32(m, xsdt + 4);
        for (ulong o = 36; o < xlen; o += 8)
        {
            ulong t = U64(m, xsdt + o);
            tables[Sig(m, t)] = t;
            Assert.Equal(0, AcpiSum(Bytes(m, t, (int)U32(m, t + 4))));
        }
        Assert.Equal(["APIC", "FACP"], tables.Keys.Order().ToArray());

        ulong fadt = tables["FACP"];
        Assert.Equal(5, Bytes(m, fadt + 8, 1)[0]);
        Assert.Equal(268u, U32(m, fadt + 4));
        ulong dsdt = U64(m, fadt + 140);
        ulong facs = U64(m, fadt + 132);
        Assert.Equal("FACS", Sig(m, facs));
        Assert.Equal(0UL, facs % 64);
        Assert.Equal("DSDT", Sig(m, dsdt));
        Assert.Equal(0u, U32(m, fadt + 76)); // no PM timer
        Assert.Equal(0x24, BinaryPrimitives.ReadUInt16LittleEndian(Bytes(m, fadt + 109, 2)));

        byte[] dsdtBytes = Bytes(m, dsdt, (int)U32(m, dsdt + 4));
        Assert.Equal(0, AcpiSum(dsdtBytes));
        string aml = Encoding.Latin1.GetString(dsdtBytes);
        for (int i = 0; i < 4; i++) Assert.Contains($"PR{i:X2}", aml);
        Assert.Contains("\\_S5_", aml);

        ulong madt = tables["APIC"];
        Assert.Equal(0xFEE00000u, U32(m, madt + 36));
        uint mlen = U32(m, madt + 4);
        var lapics = new List<(int Uid, int ApicId, uint Flags)>();
        for (ulong o = 44; o < mlen;)
        {
            var e = Bytes(m, madt + o, 8);
            Assert.Equal(0, e[0]);
            lapics.Add((e[2], e[3], BinaryPrimitives.ReadUInt32LittleEndian(e.AsSpan(4))));
            o += e[1];
        }
        Assert.Equal([(0, 0, 1u), (1, 2, 1u), (2, 4, 0u), (3, 6, 0u)], lapics);
    }

    [Fact]
    public void BadInputsAreClearErrors()
    {
        var m = new SparseGuestMemory();
        using var _ = m;
        Assert.Contains("PHYS32_ENTRY", Assert.Throws<DomainBuildException>(() =>
            PvhBuilder.Build(new PvhBuildSpec(TestImages.Elf(Code, null), "k", null, "", Mem, 1, 1), m)).Message);
        Assert.Contains("raise memory=", Assert.Throws<DomainBuildException>(() =>
            PvhBuilder.Build(new PvhBuildSpec(TestImages.Elf(Code, 0x2000000, paddr: 0x2000000), "k", null, "", 16 << 20, 1, 1), new SparseGuestMemory())).Message);
        Assert.Contains("command line longer", Assert.Throws<DomainBuildException>(() =>
            PvhBuilder.Build(new PvhBuildSpec(TestImages.Elf(Code, 0x100000), "k", null, new string('x', 2000), Mem, 1, 1), new SparseGuestMemory())).Message);
        Assert.Contains("not an ELF kernel", Assert.Throws<DomainBuildException>(() =>
            PvhBuilder.Build(new PvhBuildSpec(Encoding.ASCII.GetBytes("just some text, not a kernel"), "k", null, "", Mem, 1, 1), new SparseGuestMemory())).Message);
    }

    private static int AcpiSum(byte[] b) { byte s = 0; foreach (var x in b) s += x; return s; }
    private static string Sig(SparseGuestMemory m, ulong a) => Encoding.ASCII.GetString(Bytes(m, a, 4));
}
