using System.Buffers.Binary;
using System.Text;
using XenSharp.Toolstack.Builder;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Tests.Builder;

/// <summary>
/// The HVM domain as libxl and libxc build it for hvmloader: hvmloader at its ELF addresses and entered there in flat
/// 32-bit protected mode with EBX at the start info, the system firmware as the module named "firmware", the
/// hvm_info_table at 0x9F800 with a valid checksum, the VGA hole left to the device model, and the memory map
/// hvmloader reads starting at 1 MiB.
/// </summary>
[Trait("Feature", "x86/HVM")]
public class HvmBuilderTests
{
    private const ulong Mem = 64 << 20;
    private static readonly byte[] Code = Enumerable.Range(0, 3000).Select(i => (byte)(i * 7)).ToArray();
    private static readonly byte[] Bios = Enumerable.Range(0, 256 * 1024).Select(i => (byte)(i >> 3)).ToArray();

    private static (HvmBuildResult R, SparseGuestMemory M) Build(int vcpus = 2, int maxVcpus = 3)
    {
        var m = new SparseGuestMemory();
        var elf = TestImages.Elf(Code, phys32Entry: null, paddr: 0x100000, bss: 4096, is64: false);
        return (HvmBuilder.Build(new HvmBuildSpec(elf, "hvmloader", Bios, Mem, vcpus, maxVcpus), m), m);
    }

    private static ulong U64(SparseGuestMemory m, ulong a) { var b = new byte[8]; m.Read(a, b); return BinaryPrimitives.ReadUInt64LittleEndian(b); }
    private static uint U32(SparseGuestMemory m, ulong a) { var b = new byte[4]; m.Read(a, b); return BinaryPrimitives.ReadUInt32LittleEndian(b); }
    private static byte[] Bytes(SparseGuestMemory m, ulong a, int n) { var b = new byte[n]; m.Read(a, b); return b; }

    [Fact]
    public void HvmloaderIsEnteredInFlatProtectedModeWithTheStartInfo()
    {
        var (r, m) = Build();
        using var _ = m;
        Assert.Equal(Code, Bytes(m, 0x100000, Code.Length));
        Assert.Equal(r.StartInfoAddress, r.Registers.Rbx);
        Assert.Equal((ulong)r.Entry, r.Registers.Rip);
        Assert.Equal(1UL, r.SpecialRegisters.Cr0 & 1);
        Assert.Equal(0UL, r.SpecialRegisters.Cr0 >> 31);
        Assert.Equal(0xFFFFFFFFu, r.SpecialRegisters.Cs.Limit);
    }

    [Fact]
    public void TheFirmwareIsTheModuleNamedFirmware()
    {
        var (r, m) = Build();
        using var _ = m;
        ulong si = r.StartInfoAddress;
        Assert.Equal(0x336ec578u, U32(m, si));
        Assert.Equal(1u, U32(m, si + 12));
        ulong mod = U64(m, si + 16);
        Assert.Equal(r.FirmwareAddress, U64(m, mod));
        Assert.Equal((ulong)Bios.Length, U64(m, mod + 8));
        Assert.Equal("firmware\0", Encoding.ASCII.GetString(Bytes(m, U64(m, mod + 16), 9)));
        Assert.Equal(Bios, Bytes(m, r.FirmwareAddress, Bios.Length));
        Assert.Equal(0UL, r.FirmwareAddress & 0xFFF);
        Assert.True(r.FirmwareAddress >= 0x100000 + (ulong)Code.Length + 4096);
    }

    [Fact]
    public void TheHvmInfoTableDescribesVcpusAndMemory()
    {
        var (_, m) = Build(vcpus: 2, maxVcpus: 3);
        using var _m = m;
        var t = Bytes(m, HvmBuilder.HvmInfoAddress, HvmBuilder.HvmInfoSize);
        Assert.Equal("HVM INFO", Encoding.ASCII.GetString(t, 0, 8));
        Assert.Equal((uint)HvmBuilder.HvmInfoSize, BinaryPrimitives.ReadUInt32LittleEndian(t.AsSpan(8)));
        Assert.Equal(0, t.Aggregate(0, (s, b) => (s + b) & 0xFF));
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32LittleEndian(t.AsSpan(16)));
        Assert.Equal((uint)(Mem >> 12), BinaryPrimitives.ReadUInt32LittleEndian(t.AsSpan(20)));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(t.AsSpan(28)));
        Assert.Equal(0b11, t[32]);
    }

    [Fact]
    public void TheVgaHoleIsTheDeviceModelsAndTheMapStartsAtOneMegabyte()
    {
        var (r, m) = Build();
        using var _ = m;
        Assert.True(m.IsPopulated(0x9F));
        for (ulong gfn = 0xA0; gfn < 0xC0; gfn++)
            Assert.False(m.IsPopulated(gfn), $"gfn {gfn:x} is populated");
        Assert.True(m.IsPopulated(0xC0));
        Assert.True(m.IsPopulated(PvhLayout.SpecialPfn(PvhLayout.SpecialXenstore)));
        var ram = Assert.Single(r.Memmap);
        Assert.Equal(new MemmapEntry(0x100000, Mem - 0x100000, 1), ram);
    }
}
