using System.Runtime.InteropServices;
using Iced.Intel;
using XenSharp.Cpu;

namespace XenSharp.Cpu.Tests;

/// <summary>Guest RAM in native memory; frames listed in <see cref="Mmio"/> are not RAM.</summary>
public sealed unsafe class TestMemory : IGuestMemory, IDisposable
{
    public readonly byte* Base;
    public readonly ulong Size;
    public readonly HashSet<ulong> Mmio = new();
    public readonly HashSet<ulong> ReadOnly = new();
    private long _generation;

    public TestMemory(ulong size = 16 << 20)
    {
        Size = size;
        Base = (byte*)NativeMemory.AllocZeroed((nuint)size);
    }

    public byte* GetPage(ulong gfn, bool write)
    {
        if (gfn >= Size >> 12 || Mmio.Contains(gfn)) return null;
        if (write && ReadOnly.Contains(gfn)) return null;
        return Base + (gfn << 12);
    }

    public long Generation => Interlocked.Read(ref _generation);
    public void BumpGeneration() => Interlocked.Increment(ref _generation);

    public void Write(ulong pa, ReadOnlySpan<byte> data) => data.CopyTo(new Span<byte>(Base + pa, data.Length));
    public void W8(ulong pa, byte v) => Base[pa] = v;
    public void W16(ulong pa, ushort v) => *(ushort*)(Base + pa) = v;
    public void W32(ulong pa, uint v) => *(uint*)(Base + pa) = v;
    public void W64(ulong pa, ulong v) => *(ulong*)(Base + pa) = v;
    public byte R8(ulong pa) => Base[pa];
    public ushort R16(ulong pa) => *(ushort*)(Base + pa);
    public uint R32(ulong pa) => *(uint*)(Base + pa);
    public ulong R64(ulong pa) => *(ulong*)(Base + pa);

    public void Dispose() => NativeMemory.Free(Base);
}

/// <summary>An engine, one vCPU and its memory, with helpers to enter each mode.</summary>
public sealed class TestMachine : IDisposable
{
    public readonly TestMemory Mem;
    public readonly X86Engine Engine;
    public readonly IVcpu Cpu;

    public const ulong CodeAt = 0x10000;
    public const ulong StackTop = 0x80000;
    public const ulong Gdt = 0x1000;
    public const ulong Idt = 0x2000;
    public const ulong Tss = 0x3000;
    public const ulong Pml4 = 0x20000;

    public TestMachine(ulong memSize = 16 << 20, JitSettings? jit = null)
    {
        Mem = new TestMemory(memSize);
        Engine = new X86Engine(Mem, jit: jit);
        Cpu = Engine.CreateVcpu(0, new DefaultCpuidPolicy());
    }

    public static byte[] Assemble(int bitness, ulong ip, Action<Assembler> build)
    {
        var a = new Assembler(bitness);
        build(a);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), ip);
        return ms.ToArray();
    }

    public static ulong CodeSeg64 = 0xA09B, CodeSeg32 = 0xC09B, DataSeg = 0xC093;

    /// <summary>Standard GDT: 0x08 code32, 0x10 data, 0x18 code64, 0x20 data (DPL0), 0x2B code32 DPL3,
    /// 0x33 data DPL3, 0x3B code64 DPL3, 0x40 TSS (16 bytes in long mode).</summary>
    public void WriteGdt(bool longTss)
    {
        Mem.W64(Gdt + 0x00, 0);
        Mem.W64(Gdt + 0x08, 0x00CF9B000000FFFF);
        Mem.W64(Gdt + 0x10, 0x00CF93000000FFFF);
        Mem.W64(Gdt + 0x18, 0x00AF9B000000FFFF);
        Mem.W64(Gdt + 0x20, 0x00CF93000000FFFF);
        Mem.W64(Gdt + 0x28, 0x00CFFB000000FFFF);
        Mem.W64(Gdt + 0x30, 0x00CFF3000000FFFF);
        Mem.W64(Gdt + 0x38, 0x00AFFB000000FFFF);
        ulong tssDesc = 0x0000890000000000UL | 0x67 | ((Tss & 0xFFFFFF) << 16) | (((Tss >> 24) & 0xFF) << 56);
        Mem.W64(Gdt + 0x40, tssDesc);
        Mem.W64(Gdt + 0x48, longTss ? Tss >> 32 : 0);
    }

    private static Segment Seg(ushort sel, ushort attr) => new() { Selector = sel, Base = 0, Limit = 0xFFFF_FFFF, Attributes = attr };

    /// <summary>The state a PVH vCPU starts in: flat 32-bit protected mode, paging off.</summary>
    public void Enter32(byte[] code, ulong at = CodeAt)
    {
        Mem.Write(at, code);
        WriteGdt(false);
        var s = new SpecialRegisters
        {
            Cs = Seg(0x08, 0xC09B), Ds = Seg(0x10, 0xC093), Es = Seg(0x10, 0xC093), Ss = Seg(0x10, 0xC093),
            Fs = Seg(0x10, 0xC093), Gs = Seg(0x10, 0xC093),
            Tr = new Segment { Selector = 0x40, Base = Tss, Limit = 0x67, Attributes = 0x8B },
            Ldt = new Segment { Attributes = 0x82 },
            Gdt = new DescriptorTable { Base = Gdt, Limit = 0x4F },
            Idt = new DescriptorTable { Base = Idt, Limit = 0x7FF },
            Cr0 = 0x11,
        };
        Cpu.SetSpecialRegisters(s);
        Cpu.SetRegisters(new Registers { Rip = at, Rsp = StackTop, Rflags = 2 });
    }

    /// <summary>Block compiler on, but no block reaches its threshold: a run decodes the blocks for a test to compile.</summary>
    public static readonly JitSettings DecodeOnly = new(true, int.MaxValue, Background: false);

    /// <summary>Runs 64-bit <paramref name="code"/> at <see cref="CodeAt"/> under 4 KiB pages to its HLT.</summary>
    public void Run64ToHlt(byte[] code)
    {
        Enter64(code, fourK: true);
        RunToHlt();
    }

    /// <summary>A machine that has run <paramref name="code"/> once (<see cref="Run64ToHlt"/>).</summary>
    public static TestMachine RanToHlt(byte[] code, JitSettings jit)
    {
        var m = new TestMachine(jit: jit);
        m.Run64ToHlt(code);
        return m;
    }

    /// <summary>64-bit mode with the first 1 GiB identity-mapped by 2 MiB pages (user, writable).</summary>
    public void Enter64(byte[] code, ulong at = CodeAt, bool fourK = false)
    {
        Mem.Write(at, code);
        WriteGdt(true);
        BuildIdentityPageTables(fourK);
        var s = new SpecialRegisters
        {
            Cs = new Segment { Selector = 0x18, Limit = 0xFFFF_FFFF, Attributes = 0xA09B },
            Ds = Seg(0x20, 0xC093), Es = Seg(0x20, 0xC093), Ss = Seg(0x20, 0xC093), Fs = Seg(0x20, 0xC093), Gs = Seg(0x20, 0xC093),
            Tr = new Segment { Selector = 0x40, Base = Tss, Limit = 0x67, Attributes = 0x8B },
            Ldt = new Segment { Attributes = 0x82 },
            Gdt = new DescriptorTable { Base = Gdt, Limit = 0x4F },
            Idt = new DescriptorTable { Base = Idt, Limit = 0xFFF },
            Cr0 = 0x80010011, Cr3 = Pml4, Cr4 = 0x20 | 0x200 | 0x400, Efer = 0xD01,
        };
        Cpu.SetSpecialRegisters(s);
        Cpu.SetRegisters(new Registers { Rip = at, Rsp = StackTop, Rflags = 2 });
    }

    public const ulong Pdpt = Pml4 + 0x1000, Pd = Pml4 + 0x2000, Pt = Pml4 + 0x3000;

    public void BuildIdentityPageTables(bool fourK)
    {
        Mem.W64(Pml4, Pdpt | 7);
        Mem.W64(Pdpt, Pd | 7);
        for (ulong i = 0; i < 512; i++) Mem.W64(Pd + i * 8, (i << 21) | 0x87);
        if (fourK)
        {
            // First 2 MiB by 4 KiB pages so tests can unmap single pages.
            Mem.W64(Pd, Pt | 7);
            for (ulong i = 0; i < 512; i++) Mem.W64(Pt + i * 8, (i << 12) | 7);
        }
    }

    /// <summary>64-bit interrupt gate for <paramref name="vector"/> to <paramref name="handler"/>.</summary>
    public void SetGate64(int vector, ulong handler, int ist = 0, int dpl = 0, bool trap = false)
    {
        ulong lo = (handler & 0xFFFF) | (0x18UL << 16) | ((ulong)ist << 32) | ((trap ? 0xFUL : 0xEUL) << 40) | ((ulong)dpl << 45) | (1UL << 47) | (((handler >> 16) & 0xFFFF) << 48);
        Mem.W64(Idt + (ulong)vector * 16, lo);
        Mem.W64(Idt + (ulong)vector * 16 + 8, handler >> 32);
    }

    public void SetGate32(int vector, ulong handler, int dpl = 0)
    {
        ulong lo = (handler & 0xFFFF) | (0x08UL << 16) | (0xEUL << 40) | ((ulong)dpl << 45) | (1UL << 47) | (((handler >> 16) & 0xFFFF) << 48);
        Mem.W64(Idt + (ulong)vector * 8, lo);
    }

    public Registers Regs { get { Cpu.GetRegisters(out var r); return r; } }

    /// <summary>Every general register, RIP and RFLAGS on one line: two runs compare equal as text and differ readably.</summary>
    public static string Describe(Registers r) =>
        $"rax {r.Rax:X} rbx {r.Rbx:X} rcx {r.Rcx:X} rdx {r.Rdx:X} rsi {r.Rsi:X} rdi {r.Rdi:X} rsp {r.Rsp:X} rbp {r.Rbp:X} " +
        $"r8 {r.R8:X} r9 {r.R9:X} r10 {r.R10:X} r11 {r.R11:X} r12 {r.R12:X} r13 {r.R13:X} r14 {r.R14:X} r15 {r.R15:X} rip {r.Rip:X} rflags {r.Rflags:X}";
    public SpecialRegisters SRegs { get { Cpu.GetSpecialRegisters(out var s); return s; } }

    /// <summary>Runs until an exit other than Preempted; fails on InternalError.</summary>
    public VcpuExit Run()
    {
        var e = Cpu.Run();
        Assert.True(e.Reason != VcpuExitReason.InternalError, e.Message);
        return e;
    }

    public VcpuExit RunToHlt()
    {
        var e = Run();
        Assert.Equal(VcpuExitReason.Hlt, e.Reason);
        return e;
    }

    /// <summary>Runs to the next HLT and returns how many guest faults the engine threw as exceptions meanwhile (on
    /// this thread, so tests running beside it do not count): those it records in its abort path instead are not.</summary>
    public int RunToHltCountingThrownFaults()
    {
        int thread = Environment.CurrentManagedThreadId, thrown = 0;
        EventHandler<System.Runtime.ExceptionServices.FirstChanceExceptionEventArgs> count = (_, e) =>
        {
            if (Environment.CurrentManagedThreadId == thread && e.Exception.GetType().Name == "GuestFault") thrown++;
        };
        AppDomain.CurrentDomain.FirstChanceException += count;
        try { RunToHlt(); }
        finally { AppDomain.CurrentDomain.FirstChanceException -= count; }
        return thrown;
    }

    /// <summary>Runs from <paramref name="rip"/> (the other registers as they are) to the next HLT.</summary>
    public VcpuExit RunFrom(ulong rip)
    {
        var r = Regs;
        r.Rip = rip;
        Cpu.SetRegisters(r);
        return RunToHlt();
    }

    public void Dispose()
    {
        Engine.Dispose();
        Mem.Dispose();
    }
}
