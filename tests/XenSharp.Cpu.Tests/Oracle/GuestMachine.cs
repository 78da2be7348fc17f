using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>
/// A minimal 64-bit machine for running oracle cases in the engine: RAM pages in native memory,
/// identity-mapped by 4-level page tables, a GDT with kernel and user segments, a TSS whose IST1
/// stack takes every exception, and an IDT whose handlers save the FXSAVE image and halt, so
/// that the vector can be read back from where the vCPU stopped.
/// </summary>
internal sealed unsafe class GuestMachine : IGuestMemory, IDisposable
{
    // System area (supervisor-only pages) at 1 MiB.
    const ulong Sys = 0x10_0000;
    const ulong Pml4 = Sys, Pdpt = Sys + 0x1000, Pd = Sys + 0x2000;
    const ulong PtSys = Sys + 0x3000, PtCode = Sys + 0x4000, PtData = Sys + 0x5000;
    const ulong Gdt = Sys + 0x6000, Idt = Sys + 0x7000, Tss = Sys + 0x8000, Stubs = Sys + 0x9000;
    const ulong FxIn = Sys + 0xa000, FxOut = Sys + 0xb000, IstBottom = Sys + 0xc000, IstTop = Sys + 0xe000;
    const ulong LoaderStub = Stubs + 0x800;
    const int StubSize = 16;

    public const ushort KernelCs = 0x08, KernelSs = 0x10, UserSs = 0x1b, UserCs = 0x23, TssSel = 0x28;

    readonly Dictionary<ulong, nint> pages = new();
    long generation;

    public GuestMachine()
    {
        for (ulong a = Sys; a < IstTop; a += 0x1000) Map(a);
        Map(OracleLayout.Code);
        Map(OracleLayout.Data);
        BuildPageTables();
        BuildGdtTss();
        WriteStubs();
        BuildIdt(saveFx: true);
    }

    void Map(ulong gpa)
    {
        var p = (nint)NativeMemory.AlignedAlloc(4096, 4096);
        NativeMemory.Clear((void*)p, 4096);
        pages[gpa >> 12] = p;
    }

    public byte* GetPage(ulong gfn, bool write) => pages.TryGetValue(gfn, out var p) ? (byte*)p : null;

    public long Generation => Volatile.Read(ref generation);

    public byte* Host(ulong gpa) => (byte*)pages[gpa >> 12] + (gpa & 0xfff);

    ref ulong Q(ulong gpa) => ref *(ulong*)Host(gpa);

    void BuildPageTables()
    {
        const ulong P = 1, W = 2, U = 4, NX = 1UL << 63;
        Q(Pml4) = Pdpt | P | W | U;
        Q(Pdpt) = Pd | P | W | U;
        Q(Pd + 8 * (Sys >> 21)) = PtSys | P | W | U;
        Q(Pd + 8 * (OracleLayout.Code >> 21)) = PtCode | P | W | U;
        Q(Pd + 8 * (OracleLayout.Data >> 21)) = PtData | P | W | U;
        for (ulong a = Sys; a < IstTop; a += 0x1000)
            Q(PtSys + 8 * ((a >> 12) & 511)) = a | P | W;
        Q(PtCode + 8 * ((OracleLayout.Code >> 12) & 511)) = OracleLayout.Code | P | W | U;
        Q(PtData + 8 * ((OracleLayout.Data >> 12) & 511)) = OracleLayout.Data | P | W | U | NX;
    }

    static ulong Descriptor(uint type, int dpl, bool code64) =>
        0xffffUL | (0xfUL << 48) | ((ulong)type << 40) | (1UL << 44) | ((ulong)dpl << 45) | (1UL << 47)
        | (code64 ? 1UL << 53 : 1UL << 54) | (1UL << 55);

    void BuildGdtTss()
    {
        Q(Gdt + 0x08) = Descriptor(0xb, 0, true);
        Q(Gdt + 0x10) = Descriptor(0x3, 0, false);
        Q(Gdt + 0x18) = Descriptor(0x3, 3, false);
        Q(Gdt + 0x20) = Descriptor(0xb, 3, true);
        // 64-bit busy TSS, limit 0x67.
        Q(Gdt + 0x28) = 0x67UL | ((Tss & 0xffffff) << 16) | (0xbUL << 40) | (1UL << 47) | ((Tss >> 24 & 0xff) << 56);
        Q(Gdt + 0x30) = Tss >> 32;
        *(ulong*)Host(Tss + 4) = IstTop;       // RSP0
        *(ulong*)Host(Tss + 0x24) = IstTop;    // IST1
        *(ushort*)Host(Tss + 0x66) = 0x68;     // no I/O bitmap
    }

    /// <summary>Points every gate at its handler's FXSAVE (saveFx) or straight at its HLT.</summary>
    void BuildIdt(bool saveFx)
    {
        for (int v = 0; v < 32; v++)
        {
            ulong stub = Stubs + (ulong)(v * StubSize) + (saveFx ? 0UL : 9UL);
            int dpl = v == 3 ? 3 : 0; // INT3 is allowed from user mode, as Linux allows it
            ulong lo = (stub & 0xffff) | ((ulong)KernelCs << 16) | (1UL << 32) /* IST1 */
                | (0xeUL << 40) | ((ulong)dpl << 45) | (1UL << 47) | ((stub >> 16 & 0xffff) << 48);
            Q(Idt + (ulong)v * 16) = lo;
            Q(Idt + (ulong)v * 16 + 8) = stub >> 32;
        }
    }

    void WriteStubs()
    {
        for (int v = 0; v < 32; v++) WriteFxStub(Stubs + (ulong)(v * StubSize), save: true);
        WriteFxStub(LoaderStub, save: false);
    }

    /// <summary>fxsave64/fxrstor64 [abs32]; hlt</summary>
    void WriteFxStub(ulong at, bool save)
    {
        byte* p = Host(at);
        uint target = (uint)(save ? FxOut : FxIn);
        p[0] = 0x48; p[1] = 0x0f; p[2] = 0xae; p[3] = save ? (byte)0x04 : (byte)0x0c; p[4] = 0x25;
        *(uint*)(p + 5) = target;
        p[9] = 0xf4;
    }

    static Segment Seg(ushort sel, uint type, int dpl, bool code64) => new()
    {
        Selector = sel, Base = 0, Limit = 0xffff_ffff,
        Attributes = (ushort)(type | 0x10u | ((uint)dpl << 5) | 0x80u | (code64 ? 0x2000u : 0x4000u) | 0x8000u),
    };

    public SpecialRegisters SpecialRegisters(int cpl)
    {
        var cs = cpl == 3 ? Seg(UserCs, 0xb, 3, true) : Seg(KernelCs, 0xb, 0, true);
        var ds = cpl == 3 ? Seg(UserSs, 0x3, 3, false) : Seg(KernelSs, 0x3, 0, false);
        return new SpecialRegisters
        {
            Cs = cs, Ss = ds, Ds = ds, Es = ds, Fs = ds, Gs = ds,
            Tr = new Segment { Selector = TssSel, Base = Tss, Limit = 0x67, Attributes = 0x8b },
            Ldt = new Segment { Attributes = 0x82 },
            Gdt = new DescriptorTable { Base = Gdt, Limit = 0x37 },
            Idt = new DescriptorTable { Base = Idt, Limit = 32 * 16 - 1 },
            // PE MP ET NE WP AM PG (AM as Linux sets it, so EFLAGS.AC means the same on both sides);
            // PAE OSFXSR OSXMMEXCPT; SCE LME LMA NXE
            Cr0 = 0x8005_0033, Cr3 = Pml4, Cr4 = 0x620, Efer = 0xd01,
        };
    }

    /// <summary>Runs one case on a fresh engine and vCPU (so no decoded code survives from the
    /// previous case) and reads back the state it stopped in.</summary>
    public OracleResult Run(OracleCase c, Func<IGuestMemory, ICpuEngine> engineFactory)
    {
        NativeMemory.Clear(Host(OracleLayout.Code), 4096);
        new Span<byte>(Host(OracleLayout.Code), 4096).Fill(0xcc);
        c.Code.CopyTo(new Span<byte>(Host(OracleLayout.Code), c.Code.Length));
        c.Data.CopyTo(new Span<byte>(Host(OracleLayout.Data), 4096));
        c.Fx.CopyTo(new Span<byte>(Host(FxIn), 512));
        NativeMemory.Clear(Host(FxOut), 512);
        Interlocked.Increment(ref generation);

        BuildIdt(c.UsesFx);

        using var engine = engineFactory(this);
        var vcpu = engine.CreateVcpu(0, HostCpuid.Instance);
        var r = new OracleResult();
        SpecialRegisters sregs;
        Registers regs;
        ref readonly var exit = ref Unsafe.NullRef<VcpuExit>();

        if (c.UsesFx)
        {
            // Load the x87/SSE state with FXRSTOR at CPL 0: the vCPU contract has no FPU accessors.
            sregs = SpecialRegisters(0);
            vcpu.SetSpecialRegisters(in sregs);
            regs = new Registers { Rip = LoaderStub, Rsp = IstTop, Rflags = 2 };
            vcpu.SetRegisters(in regs);
            exit = ref vcpu.Run();
            vcpu.GetRegisters(out var loaded);
            if (exit.Reason != VcpuExitReason.Hlt || loaded.Rip - LoaderStub > 10)
            {
                // A fault in FXRSTOR lands in a handler stub: say which vector.
                string where = loaded.Rip >= Stubs && loaded.Rip < Stubs + 32 * StubSize
                    ? $"vector {(loaded.Rip - Stubs) / StubSize}" : $"rip {loaded.Rip:x}";
                r.EngineError = $"FXRSTOR loader stopped with {exit.Reason} at {where} {exit.Message}";
                return r;
            }
        }

        sregs = SpecialRegisters(3);
        vcpu.SetSpecialRegisters(in sregs);
        regs = new Registers
        {
            Rax = c.Gpr[0], Rcx = c.Gpr[1], Rdx = c.Gpr[2], Rbx = c.Gpr[3], Rsp = c.Gpr[4], Rbp = c.Gpr[5],
            Rsi = c.Gpr[6], Rdi = c.Gpr[7], R8 = c.Gpr[8], R9 = c.Gpr[9], R10 = c.Gpr[10], R11 = c.Gpr[11],
            R12 = c.Gpr[12], R13 = c.Gpr[13], R14 = c.Gpr[14], R15 = c.Gpr[15],
            Rip = OracleLayout.Code, Rflags = c.Rflags | 0x202,
        };
        vcpu.SetRegisters(in regs);
        // Wall time, so generous: a case is a few instructions, and only a loaded host makes one take seconds.
        using (var watchdog = new Timer(_ => vcpu.RequestExit(), null, 60_000, Timeout.Infinite))
            exit = ref vcpu.Run();

        vcpu.GetRegisters(out var after);
        if (exit.Reason == VcpuExitReason.Preempted)
        {
            r.Vector = OracleLayout.Timeout;
            return r;
        }
        if (exit.Reason != VcpuExitReason.Hlt || after.Rip < Stubs || after.Rip >= Stubs + 32 * StubSize)
        {
            r.EngineError = $"stopped with {exit.Reason} at rip {after.Rip:x}: {exit.Message}";
            return r;
        }
        uint vector = (uint)((after.Rip - Stubs) / StubSize);
        bool hasError = vector is 8 or (>= 10 and <= 14) or 17 or 21 or 29 or 30;
        ulong frame = IstTop - (hasError ? 48UL : 40UL);
        if (after.Rsp != frame)
        {
            r.EngineError = $"vector {vector}: exception frame at {after.Rsp:x}, expected {frame:x}";
            return r;
        }
        ulong* f = (ulong*)Host(frame);
        int k = hasError ? 1 : 0;
        r.ErrorCode = hasError ? (uint)f[0] : 0;
        r.Rip = f[k];
        r.Rflags = f[k + 2];
        r.Gpr = [after.Rax, after.Rcx, after.Rdx, after.Rbx, f[k + 3], after.Rbp, after.Rsi, after.Rdi,
            after.R8, after.R9, after.R10, after.R11, after.R12, after.R13, after.R14, after.R15];
        r.Vector = vector == 13 && r.Rip == OracleLayout.Code + (ulong)c.Code.Length - 1 ? OracleLayout.NoFault : vector;
        new ReadOnlySpan<byte>(Host(FxOut), 512).CopyTo(r.Fx);
        new ReadOnlySpan<byte>(Host(OracleLayout.Data), 4096).CopyTo(r.Data);
        new ReadOnlySpan<byte>(Host(OracleLayout.Code), 4096).CopyTo(r.Code);
        return r;
    }

    public void Dispose()
    {
        foreach (var p in pages.Values) NativeMemory.AlignedFree((void*)p);
        pages.Clear();
    }
}

/// <summary>CPUID as the host answers it, so that the engine and the host agree on features.</summary>
internal sealed class HostCpuid : ICpuidPolicy
{
    public static readonly HostCpuid Instance = new();

    public void Cpuid(uint leaf, uint subleaf, out uint eax, out uint ebx, out uint ecx, out uint edx)
    {
        var (a, b, c, d) = X86Base.CpuId((int)leaf, (int)subleaf);
        (eax, ebx, ecx, edx) = ((uint)a, (uint)b, (uint)c, (uint)d);
    }
}
