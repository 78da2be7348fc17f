using System.Buffers.Binary;
using XenSharp.Hypervisor;
using XenSharp.Public.Migration;
using XenSharp.Toolstack.Platform;
using XenSharp.Toolstack.Save;

namespace XenSharp.Toolstack.Tests.Save;

/// <summary>
/// libxl's emulator records after an HVM domain's libxc stream, written and read back through a real domain's save:
/// EMULATOR_XENSTORE_DATA and EMULATOR_CONTEXT with the qemu-xen sub-header come back as written, and streams whose
/// records name another emulator or index, come twice, are too short for their header, or carry xenstore keys libxl
/// or the stream's specification refuses, are refused with the reason.
/// </summary>
[Trait("Feature", "xl save/restore")]
public sealed class EmulatorRecordTests : IDisposable
{
    private readonly XenHypervisorPlatform _hv = new(new XenHypervisor(new HypervisorOptions { MachineMemoryBytes = 64UL << 20, Pcpus = 1 }));
    private uint _next = 1;

    public void Dispose() => _hv.Dispose();

    private IHypervisorDomain NewHvm()
    {
        var d = _hv.CreateDomain(_next, new DomainCreateInfo(DomainKind.Hvm, Guid.NewGuid(), 1, 4096, $"e{_next}"));
        _next++;
        d.Memory.Populate(0, 4);
        return d;
    }

    private byte[] Save(params EmulatorRecord[] records)
    {
        var s = new MemoryStream();
        SaveFileWriter.Write(s, new SaveSource(NewHvm(), "name = \"e\"\n", 4, 14, 0) { Emulator = () => records });
        return s.ToArray();
    }

    private RestoredState Load(byte[] file)
    {
        var reader = new SaveFileReader(new MemoryStream(file), "e.save");
        reader.ReadHeader();
        return reader.Load(NewHvm());
    }

    private static EmulatorRecord Context(byte[] data, uint id = LibxlStream.EMULATOR_QEMU_UPSTREAM, uint index = 0) =>
        new(LibxlStream.REC_TYPE_EMULATOR_CONTEXT, id, index, data);

    private static EmulatorRecord Xenstore(byte[] data) =>
        new(LibxlStream.REC_TYPE_EMULATOR_XENSTORE_DATA, LibxlStream.EMULATOR_QEMU_UPSTREAM, 0, data);

    [Fact]
    public void TheDeviceModelsRecordsComeBackAsWritten()
    {
        byte[] state = "QEVM\0\0\0\u0003device state"u8.ToArray();
        var keys = new[] { ("physmap/f0000000/start_addr", "f0000000"), ("physmap/f0000000/size", "800000"), ("physmap/f0000000/name", "vga.vram") };
        var restored = Load(Save(Xenstore(EmulatorRecord.XenstoreData(keys)), Context(state)));
        Assert.NotNull(restored.Emulator);
        Assert.Equal(state, restored.Emulator.Context);
        Assert.Equal(keys, restored.Emulator.Xenstore);

        // A PVH-style stream (no emulator records) has none.
        Assert.Null(Load(Save()).Emulator);
    }

    [Theory]
    [InlineData(7u, 0u, "names unknown emulator 0x7")]
    [InlineData(LibxlStream.EMULATOR_QEMU_TRADITIONAL, 0u, "qemu-xen-traditional")]
    [InlineData(LibxlStream.EMULATOR_QEMU_UPSTREAM, 1u, "device model 1")]
    public void AnotherEmulatorOrIndexIsRefused(uint id, uint index, string why)
    {
        var e = Assert.Throws<SaveFileException>(() => Load(Save(Context([1, 2, 3], id, index))));
        Assert.Contains(why, e.Message);
    }

    [Fact]
    public void ASecondContextOrAShortRecordIsRefused()
    {
        var e = Assert.Throws<SaveFileException>(() => Load(Save(Context([1]), Context([2]))));
        Assert.Contains("a second emulator context record", e.Message);

        // The context record cut to 4 bytes of body: no room for its emulator header.
        byte[] file = Save(Context([]));
        int at = file.Length - 8 - 16; // the context record (8 header, 8 body), then END
        Assert.Equal(LibxlStream.REC_TYPE_EMULATOR_CONTEXT, BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(at)));
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(at + 4), 4);
        file.AsSpan(at + 12, 4).Clear();
        e = Assert.Throws<SaveFileException>(() => Load(file));
        Assert.Contains("too short for its emulator header", e.Message);
    }

    [Theory]
    [InlineData("/local/domain/0/x\0v\0", "not relative")]
    [InlineData("\0v\0", "an empty key")]
    [InlineData("physmap/a b\0v\0", "a character xenstore does not allow")]
    [InlineData("physmap//a\0v\0", "an empty path element")]
    [InlineData("physmap/a\0v", "not NUL-terminated")]
    [InlineData("physmap/a", "not NUL-terminated")]
    public void XenstoreDataLibxlRefusesIsRefused(string data, string why)
    {
        var e = Assert.Throws<SaveFileException>(() => Load(Save(Xenstore(System.Text.Encoding.ASCII.GetBytes(data)), Context([1]))));
        Assert.Contains(why, e.Message);
    }
}
