using Iced.Intel;
using static Iced.Intel.Mnemonic;

namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>What a group's cases need besides its instructions.</summary>
[Flags]
internal enum GroupTraits
{
    None = 0,
    /// <summary>RSI/RDI point into the data page, RCX is small, DF random.</summary>
    Strings = 1,
    /// <summary>RCX small (LOOP), branches present.</summary>
    Branches = 2,
    /// <summary>Stack instructions: no TF in values that may reach POPF, RBP in the data page.</summary>
    Stack = 4,
    /// <summary>x87 stack loaded with values; condition codes C0/C2/C3 not compared.</summary>
    X87 = 8,
    /// <summary>XMM registers and memory hold float/double values; MXCSR modes random.</summary>
    Sse = 16,
    /// <summary>RDX small, so that divisions do not always fault.</summary>
    Divide = 32,
    /// <summary>DF random (otherwise clear).</summary>
    RandomDf = 64,
    /// <summary>x87 precision control = double and register values that fit binary64.</summary>
    X87Double = 128,
}

/// <summary>One instruction group: a name (stable, used in failure messages and seeds), the
/// instruction forms it draws from, and the host CPU features it needs (/proc/cpuinfo names).</summary>
internal sealed record InstructionGroup(string Name, Code[] Codes, string[] HostFeatures, GroupTraits Traits, int MaxLength = 6)
{
    /// <summary>The forms by mnemonic: cases pick a mnemonic first, so that one with many forms
    /// (MOV) does not crowd out one with few (CMPXCHG16B).</summary>
    public Code[][] ByMnemonic { get; } = Codes.GroupBy(c => c.ToOpCode().Mnemonic).Select(x => x.ToArray()).ToArray();
}

internal static class InstructionGroups
{
    static readonly Mnemonic[] CmovccForms = [Cmovo, Cmovno, Cmovb, Cmovae, Cmove, Cmovne, Cmovbe, Cmova, Cmovs, Cmovns, Cmovp, Cmovnp, Cmovl, Cmovge, Cmovle, Cmovg];
    static readonly Mnemonic[] SetccForms = [Seto, Setno, Setb, Setae, Sete, Setne, Setbe, Seta, Sets, Setns, Setp, Setnp, Setl, Setge, Setle, Setg];
    static readonly Mnemonic[] JccForms = [Jo, Jno, Jb, Jae, Je, Jne, Jbe, Ja, Js, Jns, Jp, Jnp, Jl, Jge, Jle, Jg];

    static readonly Mnemonic[] X87Basic =
    [
        Fld, Fst, Fstp, Fild, Fist, Fistp, Fisttp, Fadd, Faddp, Fiadd, Fsub, Fsubp, Fsubr, Fsubrp, Fisub, Fisubr,
        Fmul, Fmulp, Fimul, Fdiv, Fdivp, Fdivr, Fdivrp, Fidiv, Fidivr, Fchs, Fabs, Fsqrt, Fxch, Frndint,
        Fld1, Fldz, Fldpi, Fldl2e, Fldl2t, Fldlg2, Fldln2, Ffree, Fincstp, Fdecstp, Fcmovb, Fcmove, Fcmovbe, Fcmovu,
        Fcmovnb, Fcmovne, Fcmovnbe, Fcmovnu, Fbld, Fbstp,
    ];
    static readonly Mnemonic[] X87Compare = [Fcom, Fcomp, Fcompp, Fucom, Fucomp, Fucompp, Fcomi, Fcomip, Fucomi, Fucomip, Ftst, Fxam, Fnstsw, Fld, Fldz, Fld1, Fchs];
    static readonly Mnemonic[] X87Transcendental = [Fsin, Fcos, Fsincos, Fptan, Fpatan, F2xm1, Fyl2x, Fyl2xp1, Fscale, Fxtract, Fprem, Fprem1];

    /// <summary>x87 with double-precision control and values that fit binary64: what an engine
    /// that keeps x87 registers as doubles can get exactly right (stack, tags, TOP, compares,
    /// conversions, double-rounded arithmetic). No constants with 64-bit mantissas, no m80.</summary>
    static readonly Mnemonic[] X87Double =
    [
        Fld, Fst, Fstp, Fild, Fist, Fistp, Fisttp, Fadd, Faddp, Fiadd, Fsub, Fsubp, Fsubr, Fsubrp, Fisub, Fisubr,
        Fmul, Fmulp, Fimul, Fdiv, Fdivp, Fdivr, Fdivrp, Fidiv, Fidivr, Fchs, Fabs, Fsqrt, Fxch, Frndint,
        Fld1, Fldz, Ffree, Fincstp, Fdecstp, Fcmovb, Fcmove, Fcmovbe, Fcmovu, Fcmovnb, Fcmovne, Fcmovnbe, Fcmovnu,
        Fcomi, Fcomip, Fucomi, Fucomip,
    ];

    /// <summary>Every group. Names are stable: seeds and failure reports refer to them.</summary>
    public static readonly InstructionGroup[] All = Build();

    static InstructionGroup[] Build()
    {
        var g = new List<InstructionGroup>
        {
            Gp("alu", [Add, Or, Adc, Sbb, And, Sub, Xor, Cmp, Test, Inc, Dec, Neg, Not, Mov, Movzx, Movsx, Movsxd, Lea]),
            Gp("shift", [Shl, Shr, Sar, Rol, Ror]),
            Gp("rotate-carry", [Rcl, Rcr, Shl, Adc, Add]),
            Gp("shld-shrd", [Shld, Shrd]),
            Gp("muldiv", [Mul, Imul, Div, Idiv], traits: GroupTraits.Divide),
            Gp("bit", [Bt, Bts, Btr, Btc, Bsf, Bsr]),
            Gp("lzcnt", [Lzcnt], "abm"),
            Gp("tzcnt-bmi1", [Tzcnt, Andn, Bextr, Blsi, Blsmsk, Blsr], "bmi1", vex: true),
            Gp("popcnt", [Popcnt], "popcnt"),
            Gp("bmi2", [Bzhi, Mulx, Pdep, Pext, Rorx, Sarx, Shlx, Shrx], "bmi2", vex: true),
            Gp("adx", [Adcx, Adox, Add, Stc, Clc], "adx"),
            Gp("string", [Movsb, Movsw, Movsd, Movsq, Stosb, Stosw, Stosd, Stosq, Lodsb, Lodsw, Lodsd, Lodsq,
                Cmpsb, Cmpsw, Cmpsd, Cmpsq, Scasb, Scasw, Scasd, Scasq], traits: GroupTraits.Strings | GroupTraits.RandomDf, max: 3),
            Gp("xchg-cmpxchg", [Cmpxchg, Cmpxchg8b, Xadd, Xchg, Cmp, Mov]),
            Gp("cmpxchg16b", [Cmpxchg16b, Mov, Cmp], "cx16"),
            Gp("cmovcc-setcc", [.. CmovccForms, .. SetccForms, Cmp, Sub, Add, Test]),
            Gp("jcc-loop", [.. JccForms, Loop, Loope, Loopne, Jrcxz, Jecxz, Jmp, Cmp, Add, Sub, Dec, Inc], traits: GroupTraits.Branches, max: 8),
            Gp("bswap", [Bswap, Mov]),
            Gp("movbe", [Movbe], "movbe"),
            Gp("enter-leave-push-pop", [Enter, Leave, Push, Pop, Pushfq, Popfq, Add], traits: GroupTraits.Stack),
            Gp("flags", [Lahf, Sahf, Pushfq, Popfq, Clc, Stc, Cmc, Cld, Std, Add, Sub], "lahf_lm", traits: GroupTraits.Stack | GroupTraits.RandomDf),
            Gp("convert", [Cbw, Cwde, Cdqe, Cwd, Cdq, Cqo]),
            Gp("crc32", [Crc32], "sse4_2"),
            Fp("x87", X87Basic, GroupTraits.X87),
            Fp("x87-double", X87Double, GroupTraits.X87 | GroupTraits.X87Double),
            Fp("x87-compare", X87Compare, GroupTraits.X87),
            Fp("x87-transcendental", X87Transcendental, GroupTraits.X87),
            Simd("mmx", [CpuidFeature.MMX, CpuidFeature.SSE, CpuidFeature.SSE2, CpuidFeature.SSSE3], mmx: true, "mmx", "ssse3"),
            Simd("sse", [CpuidFeature.SSE], mmx: false, "sse"),
            Simd("sse2", [CpuidFeature.SSE2], mmx: false, "sse2"),
            Simd("sse3", [CpuidFeature.SSE3], mmx: false, "pni"),
            Simd("ssse3", [CpuidFeature.SSSE3], mmx: false, "ssse3"),
            Simd("sse4.1", [CpuidFeature.SSE4_1], mmx: false, "sse4_1"),
            Simd("sse4.2", [CpuidFeature.SSE4_2], mmx: false, "sse4_2"),
            Simd("aes", [CpuidFeature.AES], mmx: false, "aes"),
            Simd("pclmulqdq", [CpuidFeature.PCLMULQDQ], mmx: false, "pclmulqdq"),
        };
        return g.ToArray();
    }

    static InstructionGroup Gp(string name, Mnemonic[] mnemonics, string? feature = null, bool vex = false,
        GroupTraits traits = GroupTraits.None, int max = 6)
    {
        var set = mnemonics.ToHashSet();
        var codes = Candidates().Where(c =>
        {
            var op = c.ToOpCode();
            if (!set.Contains(op.Mnemonic)) return false;
            if (op.Encoding != EncodingKind.Legacy && !(vex && op.Encoding == EncodingKind.VEX)) return false;
            // 16-bit SHLD/SHRD with a count above 16 leave the result undefined: only immediate counts, limited below.
            if (op.Mnemonic is Shld or Shrd && op.OperandSize == 16 && Kinds(op).Contains(OpCodeOperandKind.cl)) return false;
            // Only direct near jumps: indirect and far ones would leave the code page.
            if (op.Mnemonic is Jmp && !Kinds(op).Any(k => k is OpCodeOperandKind.br64_1 or OpCodeOperandKind.br64_4)) return false;
            // MOVSD/CMPSD also name SSE2 forms; integer groups take no MMX/XMM operands.
            if (Kinds(op).Any(k => k is OpCodeOperandKind.xmm_reg or OpCodeOperandKind.xmm_rm or OpCodeOperandKind.xmm_or_mem
                or OpCodeOperandKind.mm_reg or OpCodeOperandKind.mm_rm or OpCodeOperandKind.mm_or_mem)) return false;
            return true;
        }).ToArray();
        return new InstructionGroup(name, codes, feature is null ? [] : [feature], traits, max);
    }

    static InstructionGroup Fp(string name, Mnemonic[] mnemonics, GroupTraits traits)
    {
        var set = mnemonics.ToHashSet();
        var codes = Candidates().Where(c => set.Contains(c.ToOpCode().Mnemonic) && c.ToOpCode().Encoding == EncodingKind.Legacy
            && !FeaturesOf(c).Any(f => f is CpuidFeature.FPU287 or CpuidFeature.FPU287XL_ONLY or CpuidFeature.FPU387SL_ONLY)
            && ((traits & GroupTraits.X87Double) == 0 || new Instruction { Code = c }.MemorySize != MemorySize.Float80)).ToArray();
        return new InstructionGroup(name, codes, ["fpu"], traits, 6);
    }

    static InstructionGroup Simd(string name, CpuidFeature[] features, bool mmx, params string[] host)
    {
        var allowed = features.ToHashSet();
        var codes = Candidates().Where(c =>
        {
            var op = c.ToOpCode();
            if (op.Encoding != EncodingKind.Legacy) return false;
            var f = FeaturesOf(c);
            if (f.Length == 0 || !f.All(allowed.Contains)) return false;
            var kinds = Kinds(op);
            bool usesMm = kinds.Any(k => k is OpCodeOperandKind.mm_reg or OpCodeOperandKind.mm_rm or OpCodeOperandKind.mm_or_mem);
            bool usesXmm = kinds.Any(k => k is OpCodeOperandKind.xmm_reg or OpCodeOperandKind.xmm_rm or OpCodeOperandKind.xmm_or_mem);
            if (mmx ? !usesMm : usesMm) return false;
            if (!mmx && !usesXmm && op.Mnemonic is not (Crc32 or Ldmxcsr or Stmxcsr)) return false;
            // Implicit RDI stores add nothing to compare.
            if (op.Mnemonic is Maskmovq or Maskmovdqu) return false;
            // Approximations whose exact bits the SDM leaves to the implementation (relative
            // error at most 1.5 * 2^-12): no two CPUs need agree.
            if (op.Mnemonic is Rcpps or Rcpss or Rsqrtps or Rsqrtss) return false;
            return true;
        }).ToArray();
        return new InstructionGroup(name, codes, host, GroupTraits.Sse, 5);
    }

    static IEnumerable<Code> Candidates()
    {
        foreach (Code c in Enum.GetValues<Code>())
        {
            if (c == Code.INVALID) continue;
            var op = c.ToOpCode();
            if (!op.IsInstruction || !op.Mode64) continue;
            if (Kinds(op).Any(k => !OperandFiller.Supports(k))) continue;
            if (FeaturesOf(c).Contains(CpuidFeature.KNC)) continue; // Knights Corner only
            yield return c;
        }
    }

    static CpuidFeature[] FeaturesOf(Code c)
    {
        var i = new Instruction { Code = c };
        return i.CpuidFeatures;
    }

    internal static OpCodeOperandKind[] Kinds(OpCodeInfo op)
    {
        var k = new OpCodeOperandKind[op.OpCount];
        for (int i = 0; i < k.Length; i++) k[i] = op.GetOpKind(i);
        return k;
    }
}
