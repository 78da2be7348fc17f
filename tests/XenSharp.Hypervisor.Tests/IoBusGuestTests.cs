using System.Buffers.Binary;
using System.Text;
using XenSharp.Cpu;
using XenSharp.Public;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// The freestanding guest tests/guests/iobus.c on the real x86 engine, with <see cref="IoBusTestDevice"/> on its
/// domain's buses: port I/O and MMIO reach the device, unclaimed accesses read all ones, and the device's GSIs
/// arrive as vLAPIC interrupts (edge pulses, and a level line delivered again after EOI until lowered); event
/// upcalls arrive through a GSI callback via.
/// </summary>
[Trait("Feature", "x86/PVH")]
public class IoBusGuestTests : IDisposable
{
    private readonly XenHypervisor _host = new(new HypervisorOptions { MachineMemoryBytes = 256UL << 20, Pcpus = 1 });
    public void Dispose() => _host.Dispose();

    [Fact]
    public void GuestTalksToATestDeviceAndTakesItsInterrupts()
    {
        ushort id = PvhTestGuest.Boot(_host, "iobus", out var domain);
        var device = IoBusTestDevice.Attach(domain.Arch);
        // The guest's GSI callback via, level-triggered as Xen's platform interrupt is.
        domain.Arch.Routes.SetRoute(CallbackGsi, 0, CallbackVector, levelTriggered: true);
        ShutdownReason? reason = null;
        _host.DomainShutdown += (_, e) => { if (e.DomainId == id) reason = e.Reason; };
        _host.Unpause(id);
        Assert.True(TestHosts.WaitUntil(() => reason is not null, 60_000), "the guest did not finish:\n" + Output(id));
        string output = Output(id);
        Assert.Equal(ShutdownReason.Poweroff, reason);
        Assert.Contains("DONE passed=", output);
        Assert.DoesNotContain("FAIL ", output);
        Assert.DoesNotContain("SKIP ", output);
        foreach (var check in new[] { "iobus.port_id", "iobus.port_scratch_8", "iobus.unclaimed_port_32", "iobus.mmio_scratch_64",
                     "iobus.unclaimed_mmio_32", "iobus.edge_interrupts", "iobus.level_redelivered_after_eoi", "iobus.level_stops_when_lowered",
                     "iobus.callback_gsi_events", "iobus.callback_gsi_once_per_upcall" })
            Assert.Contains("PASS " + check + "\n", output);
        Assert.Equal(3, device.Rings);
    }

    private const uint CallbackGsi = 10;
    private const byte CallbackVector = 0x63;

    private string Output(ushort id) => Encoding.ASCII.GetString(_host.ReadConsoleHistory(id));
}

/// <summary>Loads a kernel of tests/guests (built by `make -C tests/guests`) into a new PVH (or, as firmware_override
/// does, HVM) domain as the toolstack's
/// builder would, in brief: its PT_LOAD segments, an hvm_start_info with a one-entry memory map, and the 32-bit flat
/// entry state at its XEN_ELFNOTE_PHYS32_ENTRY with RBX pointing at the start info.</summary>
internal static class PvhTestGuest
{
    private const ulong MemoryBytes = 32UL << 20, StartInfo = 0x6F000, Memmap = StartInfo + 0x100, Cmdline = StartInfo + 0x200;
    private const uint PtLoad = 1, PtNote = 4, XenElfnotePhys32Entry = 18;

    public static ushort Boot(XenHypervisor host, string guest, out Common.Domain domain, DomainKind kind = DomainKind.Pvh)
    {
        byte[] elf = File.ReadAllBytes(ElfPath(guest));
        Assert.True(elf.Length > 64 && elf[4] == 2, $"{guest}.elf is not a 64-bit ELF");
        ushort id = host.CreateDomain(new DomainCreateConfig(kind, MemoryBytes / 1024, 1));
        host.PopulatePhysmap(id, 0, MemoryBytes / 4096);
        ulong phoff = BinaryPrimitives.ReadUInt64LittleEndian(elf.AsSpan(0x20));
        int phentsize = BinaryPrimitives.ReadUInt16LittleEndian(elf.AsSpan(0x36));
        int phnum = BinaryPrimitives.ReadUInt16LittleEndian(elf.AsSpan(0x38));
        uint? entry = null;
        for (int i = 0; i < phnum; i++)
        {
            var ph = elf.AsSpan((int)phoff + i * phentsize, phentsize);
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(ph);
            int offset = (int)BinaryPrimitives.ReadUInt64LittleEndian(ph[8..]);
            ulong paddr = BinaryPrimitives.ReadUInt64LittleEndian(ph[24..]);
            int filesz = (int)BinaryPrimitives.ReadUInt64LittleEndian(ph[32..]);
            ulong memsz = BinaryPrimitives.ReadUInt64LittleEndian(ph[40..]);
            if (type == PtLoad)
            {
                host.WriteGuestMemory(id, paddr, elf.AsSpan(offset, filesz));
                if (memsz > (ulong)filesz)
                    host.WriteGuestMemory(id, paddr + (ulong)filesz, new byte[memsz - (ulong)filesz]);
            }
            else if (type == PtNote)
                entry ??= FindPhys32Entry(elf.AsSpan(offset, filesz));
        }
        Assert.True(entry is not null, $"{guest}.elf has no PHYS32_ENTRY note");
        host.WriteGuestMemory(id, Cmdline, [0]);
        var map = new HvmMemmapTableEntry { Addr = 0, Size = MemoryBytes, Type = Public.Hvm.StartInfo.XEN_HVM_MEMMAP_TYPE_RAM };
        host.WriteGuestMemory(id, Memmap, System.Runtime.InteropServices.MemoryMarshal.AsBytes(new ReadOnlySpan<HvmMemmapTableEntry>(in map)));
        var si = new HvmStartInfo
        {
            Magic = Public.Hvm.StartInfo.XEN_HVM_START_MAGIC_VALUE, Version = 1,
            CmdlinePaddr = Cmdline, MemmapPaddr = Memmap, MemmapEntries = 1,
        };
        host.WriteGuestMemory(id, StartInfo, System.Runtime.InteropServices.MemoryMarshal.AsBytes(new ReadOnlySpan<HvmStartInfo>(in si)));
        var code = new Segment { Limit = 0xFFFFFFFF, Attributes = 0xC09B, Selector = 0x10 };
        var data = new Segment { Limit = 0xFFFFFFFF, Attributes = 0xC093, Selector = 0x18 };
        var sregs = new SpecialRegisters
        {
            Cs = code, Ds = data, Es = data, Fs = data, Gs = data, Ss = data,
            Tr = new Segment { Limit = 0x67, Attributes = 0x8B, Selector = 0x20 },
            Ldt = new Segment { Attributes = 0x82 },
            Cr0 = 0x11,
        };
        host.SetVcpuRegisters(id, 0, new Registers { Rip = entry!.Value, Rbx = StartInfo, Rflags = 2 }, sregs);
        domain = host.FindDomain(id)!;
        return id;
    }

    private static uint? FindPhys32Entry(ReadOnlySpan<byte> notes)
    {
        while (notes.Length >= 12)
        {
            int namesz = (int)BinaryPrimitives.ReadUInt32LittleEndian(notes);
            int descsz = (int)BinaryPrimitives.ReadUInt32LittleEndian(notes[4..]);
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(notes[8..]);
            int name = 12, desc = name + ((namesz + 3) & ~3), next = desc + ((descsz + 3) & ~3);
            if (next > notes.Length)
                break;
            if (type == XenElfnotePhys32Entry && Encoding.ASCII.GetString(notes.Slice(name, namesz)).TrimEnd('\0') == "Xen" && descsz >= 4)
                return BinaryPrimitives.ReadUInt32LittleEndian(notes[desc..]);
            notes = notes[next..];
        }
        return null;
    }

    private static string ElfPath(string guest)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "XenSharp.slnx")))
            {
                string path = Path.Combine(dir.FullName, "tests", "guests", "build", guest + ".elf");
                Assert.True(File.Exists(path), $"{path} is missing: run `make -C tests/guests`");
                return path;
            }
        throw new InvalidOperationException("the repository root (XenSharp.slnx) is not above " + AppContext.BaseDirectory);
    }
}
