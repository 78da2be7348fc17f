using Iced.Intel;
using XenSharp.Cpu.Jit;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Jit;

/// <summary>BSF, BSR, TZCNT, LZCNT, POPCNT, SHLD/SHRD, 64-bit DIV of a 128-bit dividend, PUSH from memory and LEAVE
/// compiled inline end exactly as interpreted: every register, RFLAGS (the flags the manuals leave undefined
/// included), RIP and the retired count, with the compiled code handing nothing but the closing HLT to the interpreter.</summary>
public class JitBitScanShiftTests
{
    const ulong Handler = 0x12000;
    const ulong Data = 0x70000;
    /// <summary>A quadword running from one 4 KiB page into the next.</summary>
    const ulong Crossing = 0x70FFC;
    const ulong DestIn = 0xDEAD_BEEF_CAFE_BABEUL;

    sealed record Run(Registers Regs, ulong Retired, long HandOffs, long Compiled);

    /// <summary>Runs <paramref name="op"/> interpreted and compiled with RAX = <see cref="DestIn"/>, RBX = src (also at
    /// <see cref="Data"/> and <see cref="Crossing"/>), RCX = count, RDX = second, after a CMP that leaves flag pattern
    /// <paramref name="preset"/>; then reads the flags back through SETcc and a conditional branch.</summary>
    static (Run Interp, Run Jit) RunBoth(Action<Assembler> op, ulong src, ulong count = 0, ulong second = 0, int preset = 0,
        ulong raxIn = DestIn)
    {
        var (p, q) = preset switch
        {
            0 => (0UL, 1UL),                        // CF SF AF PF
            1 => (0x8000_0000_0000_0000UL, 1UL),    // OF AF PF
            _ => (5UL, 5UL),                        // ZF PF
        };
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var skip = a.CreateLabel();
            a.mov(rbx, src);
            a.mov(rcx, count);
            a.mov(rdx, second);
            a.mov(rsi, Data);
            a.mov(__qword_ptr[rsi], rbx);
            a.mov(rdi, Crossing);
            a.mov(__qword_ptr[rdi], rbx);
            a.mov(r10, p);
            a.mov(r11, q);
            a.cmp(r10, r11);
            op(a);
            a.setb(r12b);
            a.seto(r13b);
            a.sete(r14b);
            a.setp(r15b);
            a.jne(skip);
            a.inc(r9);
            a.Label(ref skip);
            a.hlt();
        });
        var handler = TestMachine.Assemble(64, Handler, a => { a.pop(r8); a.hlt(); });
        var runs = new Run[2];
        for (int k = 0; k < 2; k++)
        {
            using var m = new TestMachine(jit: k == 1 ? JitSettings.Eager : JitSettings.Off);
            m.Mem.Write(Handler, handler);
            for (int v = 0; v < 32; v++) m.SetGate64(v, Handler);
            m.Enter64(code, fourK: true);
            var r = m.Regs;
            r.Rax = raxIn;
            m.Cpu.SetRegisters(r);
            m.RunToHlt();
            var cpu = (X86Vcpu)m.Cpu;
            if (k == 1) Assert.Equal(0, m.Engine.JitFailures);
            runs[k] = new Run(m.Regs, m.Cpu.InstructionsRetired, cpu.JitHandOffs, m.Engine.CompiledBlocks);
        }
        return (runs[0], runs[1]);
    }

    /// <summary>The same state; unless the run faulted (compiled code leaving by a fault does not count the
    /// instructions its block retired before it), the same retired count and nothing but the HLT handed to the
    /// interpreter.</summary>
    static void AssertSame(Run i, Run j, bool faulted = false)
    {
        Assert.True(j.Compiled > 0);
        Assert.Equal(TestMachine.Describe(i.Regs), TestMachine.Describe(j.Regs));
        if (faulted) return;
        Assert.Equal(i.Retired, j.Retired);
        Assert.Equal(1, j.HandOffs);
    }

    static readonly Dictionary<string, Action<Assembler>> Scans = new()
    {
        ["bsf16"] = a => a.bsf(ax, bx), ["bsf32"] = a => a.bsf(eax, ebx), ["bsf64"] = a => a.bsf(rax, rbx),
        ["bsr16"] = a => a.bsr(ax, bx), ["bsr32"] = a => a.bsr(eax, ebx), ["bsr64"] = a => a.bsr(rax, rbx),
        ["tzcnt16"] = a => a.tzcnt(ax, bx), ["tzcnt32"] = a => a.tzcnt(eax, ebx), ["tzcnt64"] = a => a.tzcnt(rax, rbx),
        ["lzcnt16"] = a => a.lzcnt(ax, bx), ["lzcnt32"] = a => a.lzcnt(eax, ebx), ["lzcnt64"] = a => a.lzcnt(rax, rbx),
        ["popcnt16"] = a => a.popcnt(ax, bx), ["popcnt32"] = a => a.popcnt(eax, ebx), ["popcnt64"] = a => a.popcnt(rax, rbx),
        ["bsf64-mem"] = a => a.bsf(rax, __qword_ptr[rsi]), ["bsr32-mem"] = a => a.bsr(eax, __dword_ptr[rsi]),
        ["tzcnt64-mem"] = a => a.tzcnt(rax, __qword_ptr[rsi]), ["lzcnt16-mem"] = a => a.lzcnt(ax, __word_ptr[rsi]),
        ["popcnt64-mem"] = a => a.popcnt(rax, __qword_ptr[rsi]),
        ["bsr64-cross"] = a => a.bsr(rax, __qword_ptr[rdi]), ["tzcnt32-cross"] = a => a.tzcnt(eax, __dword_ptr[rdi + 2]),
        // The destination is the source.
        ["bsf64-same"] = a => a.bsf(rbx, rbx), ["lzcnt32-same"] = a => a.lzcnt(ebx, ebx),
    };

    static readonly ulong[] ScanSources =
    [
        0, 1, 0x8000, 0x8000_0000, 0x8000_0000_0000_0000UL, 0x0000_0100_0000_0000UL, 0x1234_5678_9ABC_DEF0UL,
        0xFFFF_FFFF_FFFF_FFFFUL, 0xFFFF_0000_0000_0000UL, // a zero 16- and 32-bit source with bits above it
        0x0F0F_0000, 0x60,
    ];

    public static IEnumerable<object[]> ScanCases()
    {
        int n = 0;
        foreach (var form in Scans.Keys)
            foreach (var src in ScanSources)
                yield return [form, src, n++ % 3];
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [MemberData(nameof(ScanCases))]
    public void Bit_scans_and_counts_are_the_interpreters(string form, ulong src, int preset)
    {
        var (i, j) = RunBoth(Scans[form], src, preset: preset);
        AssertSame(i, j);
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData("bsf32")]
    [InlineData("bsr32")]
    [InlineData("bsf16")]
    public void A_zero_source_leaves_the_destination_whole_and_sets_zf(string form)
    {
        var (i, j) = RunBoth(Scans[form], 0xFFFF_FFFF_0000_0000UL, preset: 0);
        AssertSame(i, j);
        Assert.Equal(DestIn, j.Regs.Rax);
        Assert.Equal(1UL, j.Regs.R14 & 0xFF);                   // ZF
        Assert.Equal(1UL, j.Regs.R12 & 0xFF);                   // CF kept from the CMP
    }

    static Action<Assembler> ShiftDouble(bool left, int size, string count, int imm) => a =>
    {
        switch (size, count)
        {
            case (16, "cl"): if (left) a.shld(ax, dx, cl); else a.shrd(ax, dx, cl); break;
            case (32, "cl"): if (left) a.shld(eax, edx, cl); else a.shrd(eax, edx, cl); break;
            case (64, "cl"): if (left) a.shld(rax, rdx, cl); else a.shrd(rax, rdx, cl); break;
            case (16, "imm"): if (left) a.shld(ax, dx, (byte)imm); else a.shrd(ax, dx, (byte)imm); break;
            case (32, "imm"): if (left) a.shld(eax, edx, (byte)imm); else a.shrd(eax, edx, (byte)imm); break;
            case (64, "imm"): if (left) a.shld(rax, rdx, (byte)imm); else a.shrd(rax, rdx, (byte)imm); break;
            case (64, "mem-cl"): if (left) a.shld(__qword_ptr[rsi], rdx, cl); else a.shrd(__qword_ptr[rsi], rdx, cl); break;
            case (32, "mem-imm"): if (left) a.shld(__dword_ptr[rsi], edx, (byte)imm); else a.shrd(__dword_ptr[rsi], edx, (byte)imm); break;
            case (16, "mem-cl"): if (left) a.shld(__word_ptr[rsi], dx, cl); else a.shrd(__word_ptr[rsi], dx, cl); break;
            case (64, "cross-cl"): if (left) a.shld(__qword_ptr[rdi], rdx, cl); else a.shrd(__qword_ptr[rdi], rdx, cl); break;
            default: throw new ArgumentException($"{size} {count}");
        }
        if (count.StartsWith("mem", StringComparison.Ordinal)) a.mov(r9, __qword_ptr[rsi]);
        if (count.StartsWith("cross", StringComparison.Ordinal)) a.mov(r9, __qword_ptr[rdi]);
    };

    static readonly int[] Counts = [0, 1, 2, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 200, 255];

    public static IEnumerable<object[]> ShiftCases()
    {
        int n = 0;
        (int Size, string Count)[] forms =
        [
            (16, "cl"), (32, "cl"), (64, "cl"), (16, "imm"), (32, "imm"), (64, "imm"),
            (64, "mem-cl"), (32, "mem-imm"), (16, "mem-cl"), (64, "cross-cl"),
        ];
        foreach (bool left in new[] { true, false })
            foreach (var (size, count) in forms)
                foreach (int c in Counts)
                    yield return [left, size, count, c, n++ % 3];
    }

    /// <summary>Shifts and rotates of memory (what gzip's bit buffers do): the memory read back into RBP after.</summary>
    static readonly Dictionary<string, Action<Assembler>> MemoryShifts = new()
    {
        ["shl8-1"] = a => a.shl(__byte_ptr[rsi], 1), ["shr32-cl"] = a => a.shr(__dword_ptr[rsi], cl),
        ["sar16-imm"] = a => a.sar(__word_ptr[rsi], 3), ["rol64-cl"] = a => a.rol(__qword_ptr[rsi], cl),
        ["ror8-imm"] = a => a.ror(__byte_ptr[rsi + 1], 5), ["sal64-imm"] = a => a.sal(__qword_ptr[rsi], 63),
        ["shr64-cross"] = a => a.shr(__qword_ptr[rdi], cl), ["shl32-imm0"] = a => a.shl(__dword_ptr[rsi], 0),
    };

    public static IEnumerable<object[]> MemoryShiftCases()
    {
        int n = 0;
        foreach (var form in MemoryShifts.Keys)
            foreach (var c in new ulong[] { 0, 1, 7, 31, 32, 63 })
                yield return [form, c, n++ % 3];
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [MemberData(nameof(MemoryShiftCases))]
    public void Shifts_of_memory_are_the_interpreters(string form, ulong count, int preset)
    {
        var (i, j) = RunBoth(a =>
        {
            MemoryShifts[form](a);
            a.mov(rbp, __qword_ptr[rsi]);
            a.mov(rsp, __qword_ptr[rdi]);
        }, 0x8123_4567_89AB_CDEFUL, count: count, preset: preset);
        AssertSame(i, j);
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [MemberData(nameof(ShiftCases))]
    public void Double_shifts_are_the_interpreters(bool left, int size, string count, int c, int preset)
    {
        foreach (var (dest, second) in new[] { (0x8123_4567_89AB_CDEFUL, 0xFEDC_BA98_7654_3210UL), (0x7FFF_0001_8000_FFFFUL, 0x0000_8000_0001_0000UL) })
        {
            var (i, j) = RunBoth(ShiftDouble(left, size, count, c), dest, count: (ulong)c, second: second, preset: preset, raxIn: dest);
            AssertSame(i, j);
        }
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(0UL, 0UL, 7UL)]
    [InlineData(100UL, 0UL, 7UL)]
    [InlineData(123UL, 5UL, 1UL << 40)]                                     // a 128-bit dividend
    [InlineData(0xFFFF_FFFF_FFFF_FFFFUL, 0xFFFF_FFFF_FFFF_FFFEUL, 0xFFFF_FFFF_FFFF_FFFFUL)] // the widest that fits
    [InlineData(0x0123_4567_89AB_CDEFUL, 0x1UL, 2UL)]
    [InlineData(0UL, 0x8000_0000_0000_0000UL, 0x8000_0000_0000_0001UL)]
    public void Division_of_a_128_bit_dividend_runs_compiled(ulong lo, ulong hi, ulong divisor)
    {
        foreach (bool mem in new[] { false, true })
        {
            var (i, j) = RunBoth(a => { a.mov(rax, rcx); if (mem) a.div(__qword_ptr[rsi]); else a.div(rbx); },
                divisor, count: lo, second: hi);
            AssertSame(i, j);
            Assert.Equal(0UL, j.Regs.R8);                                     // no #DE
        }
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(0UL, 7UL, 7UL, false)]                                      // quotient 2^64
    [InlineData(5UL, 0xFFFF_FFFF_FFFF_FFFFUL, 3UL, false)]
    [InlineData(100UL, 0UL, 0UL, false)]                                    // divide by zero
    [InlineData(0UL, 7UL, 7UL, true)]
    [InlineData(100UL, 0UL, 0UL, true)]
    [InlineData(100UL, 1UL, 0UL, true)]
    public void A_division_that_cannot_be_done_raises_divide_error_at_the_div(ulong lo, ulong hi, ulong divisor, bool mem)
    {
        var (i, j) = RunBoth(a => { a.mov(rax, rcx); if (mem) a.div(__qword_ptr[rsi]); else a.div(rbx); },
            divisor, count: lo, second: hi);
        Assert.NotEqual(0UL, j.Regs.R8);
        AssertSame(i, j, faulted: true);
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(100UL, 0UL, 7UL)]
    [InlineData(0xFFFF_FFFFUL, 6UL, 7UL)]
    public void Division_of_32_bits_from_memory_runs_compiled(ulong lo, ulong hi, ulong divisor)
    {
        var (i, j) = RunBoth(a => { a.mov(rax, rcx); a.div(__dword_ptr[rsi]); }, divisor, count: lo, second: hi);
        AssertSame(i, j);
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData("data")]
    [InlineData("crossing")]
    [InlineData("stack")]
    public void Push_from_memory_runs_compiled(string where)
    {
        var (i, j) = RunBoth(a =>
        {
            a.push(rbx);
            switch (where)
            {
                case "data": a.push(__qword_ptr[rsi]); break;
                case "crossing": a.push(__qword_ptr[rdi]); break;
                default: a.push(__qword_ptr[rsp]); break;          // addressed with RSP from before the push
            }
            a.pop(r9);
            a.pop(r11);
            a.cmp(r9, r11);
        }, 0x1122_3344_5566_7788UL);
        AssertSame(i, j);
        Assert.Equal(0x1122_3344_5566_7788UL, j.Regs.R11);
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(0)]
    [InlineData(1)]
    public void Leave_runs_compiled(int preset)
    {
        var (i, j) = RunBoth(a =>
        {
            a.push(rbx);                    // the caller's RBP
            a.mov(rbp, rsp);
            a.sub(rsp, 0x48);
            a.mov(__qword_ptr[rsp], rdx);
            a.leave();
            a.mov(r9, rsp);
            a.mov(r10, rbp);
        }, 0x0BAD_F00D_0000_1234UL, second: 0x55, preset: preset);
        AssertSame(i, j);
        Assert.Equal(TestMachine.StackTop, j.Regs.R9);
        Assert.Equal(0x0BAD_F00D_0000_1234UL, j.Regs.R10);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void A_leave_that_faults_leaves_rsp_and_rbp_as_they_were()
    {
        // RBP non-canonical: #SS, and the handler finds RSP where it was.
        var (i, j) = RunBoth(a =>
        {
            a.mov(rbp, 0x8000_0000_0000_0000UL);
            a.mov(r9, rsp);
            a.leave();
        }, 0);
        AssertSame(i, j, faulted: true);
        Assert.Equal(0x8000_0000_0000_0000UL, j.Regs.Rbp);
    }
}
