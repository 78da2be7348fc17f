using System.Runtime.InteropServices;
using XenSharp.Cpu;

namespace XenSharp.Bench.Engine;

/// <summary>
/// A bare 64-bit guest for running a flat workload binary: RAM in one native block, identity
/// mapped with 4 KiB pages, CPL 0 long mode, no IDT (a fault is a triple fault and ends the run).
/// Functions are called SysV-style with a return address pointing at a HLT.
/// </summary>
internal sealed unsafe class FlatGuest : IGuestMemory, IDisposable
{
    public const ulong RamSize = 128UL << 20;
    public const ulong ImageBase = 0x20_0000;
    public const ulong Buffer = 0x200_0000;
    const ulong HltStub = 0x1000, Gdt = 0x2000, Pml4 = 0x10_0000, Pdpt = 0x10_1000, Pd = 0x10_2000, Pts = 0x11_0000;
    const ulong StackTop = 0x100_0000;

    readonly byte* ram;
    readonly IVcpu vcpu;
    readonly ICpuEngine engine;

    public FlatGuest(byte[] image)
    {
        ram = (byte*)NativeMemory.AlignedAlloc((nuint)RamSize, 4096);
        NativeMemory.Clear(ram, (nuint)RamSize);
        image.CopyTo(new Span<byte>(ram + ImageBase, image.Length));
        ram[HltStub] = 0xf4;

        const ulong P = 1, W = 2;
        Q(Pml4) = Pdpt | P | W;
        Q(Pdpt) = Pd | P | W;
        for (ulong pt = 0; pt < RamSize >> 21; pt++)
        {
            Q(Pd + pt * 8) = (Pts + pt * 4096) | P | W;
            for (ulong i = 0; i < 512; i++)
                Q(Pts + pt * 4096 + i * 8) = ((pt << 21) + (i << 12)) | P | W;
        }
        Q(Gdt + 8) = 0x00af_9b00_0000_ffff;  // 64-bit code, DPL 0
        Q(Gdt + 16) = 0x00cf_9300_0000_ffff; // data

        engine = new X86Engine(this);
        vcpu = engine.CreateVcpu(0, new HostCpuid());
        var code = new Segment { Selector = 8, Limit = 0xffff_ffff, Attributes = 0xa09b };
        var data = new Segment { Selector = 16, Limit = 0xffff_ffff, Attributes = 0xc093 };
        var sregs = new SpecialRegisters
        {
            Cs = code, Ds = data, Es = data, Ss = data, Fs = data, Gs = data,
            Tr = new Segment { Attributes = 0x8b, Limit = 0x67 },
            Ldt = new Segment { Attributes = 0x82 },
            Gdt = new DescriptorTable { Base = Gdt, Limit = 23 },
            Cr0 = 0x8001_0033, Cr3 = Pml4, Cr4 = 0x620, Efer = 0xd01,
        };
        vcpu.SetSpecialRegisters(in sregs);
    }

    ref ulong Q(ulong gpa) => ref *(ulong*)(ram + gpa);

    public byte* GetPage(ulong gfn, bool write) => gfn < RamSize >> 12 ? ram + (gfn << 12) : null;

    public long Generation => 0;

    public Span<byte> Memory(ulong gpa, int length) => new(ram + gpa, length);

    public ulong InstructionsRetired => vcpu.InstructionsRetired;

    /// <summary>Calls the guest function at <paramref name="entry"/> and returns its RAX.</summary>
    public ulong Call(ulong entry, ulong a0 = 0, ulong a1 = 0, ulong a2 = 0)
    {
        Q(StackTop - 8) = HltStub;
        var regs = new Registers { Rip = entry, Rsp = StackTop - 8, Rdi = a0, Rsi = a1, Rdx = a2, Rflags = 2 };
        vcpu.SetRegisters(in regs);
        while (true)
        {
            ref readonly var exit = ref vcpu.Run();
            vcpu.GetRegisters(out regs);
            if (exit.Reason == VcpuExitReason.Hlt && regs.Rip - HltStub <= 1)
                return regs.Rax;
            if (exit.Reason == VcpuExitReason.Preempted)
                continue;
            throw new InvalidOperationException($"guest stopped with {exit.Reason} at rip {regs.Rip:x}: {exit.Message}");
        }
    }

    public void Dispose()
    {
        engine.Dispose();
        NativeMemory.AlignedFree(ram);
    }
}

internal sealed class HostCpuid : ICpuidPolicy
{
    public void Cpuid(uint leaf, uint subleaf, out uint eax, out uint ebx, out uint ecx, out uint edx)
    {
        var (a, b, c, d) = System.Runtime.Intrinsics.X86.X86Base.CpuId((int)leaf, (int)subleaf);
        (eax, ebx, ecx, edx) = ((uint)a, (uint)b, (uint)c, (uint)d);
    }
}
