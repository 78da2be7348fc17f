using System.Buffers.Binary;
using System.Text;
using Iced.Intel;
using Encoder = Iced.Intel.Encoder;
using Decoder = Iced.Intel.Decoder;

namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>Fills an instruction form's operands with random registers, memory and immediates.</summary>
internal static class OperandFiller
{
    /// <summary>GPRs generated code may use: not RSP (the stack) and not R15 (the data-page base).</summary>
    static readonly int[] GprPool = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];

    public static bool Supports(OpCodeOperandKind k) => k switch
    {
        OpCodeOperandKind.mem or OpCodeOperandKind.r8_or_mem or OpCodeOperandKind.r16_or_mem or OpCodeOperandKind.r32_or_mem
            or OpCodeOperandKind.r64_or_mem or OpCodeOperandKind.mm_or_mem or OpCodeOperandKind.xmm_or_mem => true,
        OpCodeOperandKind.r8_reg or OpCodeOperandKind.r8_opcode or OpCodeOperandKind.r16_reg or OpCodeOperandKind.r16_rm
            or OpCodeOperandKind.r16_opcode or OpCodeOperandKind.r32_reg or OpCodeOperandKind.r32_rm or OpCodeOperandKind.r32_opcode
            or OpCodeOperandKind.r32_vvvv or OpCodeOperandKind.r64_reg or OpCodeOperandKind.r64_rm or OpCodeOperandKind.r64_opcode
            or OpCodeOperandKind.r64_vvvv => true,
        OpCodeOperandKind.mm_reg or OpCodeOperandKind.mm_rm or OpCodeOperandKind.xmm_reg or OpCodeOperandKind.xmm_rm => true,
        OpCodeOperandKind.al or OpCodeOperandKind.cl or OpCodeOperandKind.ax or OpCodeOperandKind.dx or OpCodeOperandKind.eax
            or OpCodeOperandKind.rax or OpCodeOperandKind.st0 or OpCodeOperandKind.sti_opcode => true,
        OpCodeOperandKind.imm8 or OpCodeOperandKind.imm8_const_1 or OpCodeOperandKind.imm8sex16 or OpCodeOperandKind.imm8sex32
            or OpCodeOperandKind.imm8sex64 or OpCodeOperandKind.imm16 or OpCodeOperandKind.imm32 or OpCodeOperandKind.imm32sex64
            or OpCodeOperandKind.imm64 => true,
        OpCodeOperandKind.seg_rSI or OpCodeOperandKind.es_rDI => true,
        OpCodeOperandKind.br64_1 or OpCodeOperandKind.br64_4 => true,
        _ => false,
    };

    static Register Gp(Random r, int size)
    {
        int i = GprPool[r.Next(GprPool.Length)];
        return size switch
        {
            64 => Register.RAX + i,
            32 => Register.EAX + i,
            16 => Register.AX + i,
            _ => r.Next(6) == 0 && i < 4 ? Register.AH + i : i < 4 ? Register.AL + i : i < 8 ? Register.SPL + (i - 4) : Register.R8L + (i - 8),
        };
    }

    public static bool IsBranch(OpKind k) => k == OpKind.NearBranch64;

    /// <summary>Builds one instruction of form <paramref name="code"/>; false when the form cannot be used.</summary>
    public static bool Fill(Random r, Code code, InstructionGroup g, out Instruction instr)
    {
        var op = code.ToOpCode();
        instr = new Instruction { Code = code };
        bool immSeen = false;
        for (int n = 0; n < op.OpCount; n++)
        {
            var k = op.GetOpKind(n);
            switch (k)
            {
                case OpCodeOperandKind.r8_or_mem or OpCodeOperandKind.r16_or_mem or OpCodeOperandKind.r32_or_mem
                    or OpCodeOperandKind.r64_or_mem or OpCodeOperandKind.mm_or_mem or OpCodeOperandKind.xmm_or_mem:
                    if (r.Next(2) == 0) { SetMemory(r, ref instr, n); break; }
                    SetRegister(ref instr, n, k switch
                    {
                        OpCodeOperandKind.r8_or_mem => Gp(r, 8),
                        OpCodeOperandKind.r16_or_mem => Gp(r, 16),
                        OpCodeOperandKind.r32_or_mem => Gp(r, 32),
                        OpCodeOperandKind.r64_or_mem => Gp(r, 64),
                        OpCodeOperandKind.mm_or_mem => Register.MM0 + r.Next(8),
                        _ => Register.XMM0 + r.Next(16),
                    });
                    break;
                case OpCodeOperandKind.mem:
                    SetMemory(r, ref instr, n);
                    break;
                case OpCodeOperandKind.r8_reg or OpCodeOperandKind.r8_opcode: SetRegister(ref instr, n, Gp(r, 8)); break;
                case OpCodeOperandKind.r16_reg or OpCodeOperandKind.r16_rm or OpCodeOperandKind.r16_opcode: SetRegister(ref instr, n, Gp(r, 16)); break;
                case OpCodeOperandKind.r32_reg or OpCodeOperandKind.r32_rm or OpCodeOperandKind.r32_opcode or OpCodeOperandKind.r32_vvvv:
                    SetRegister(ref instr, n, Gp(r, 32)); break;
                case OpCodeOperandKind.r64_reg or OpCodeOperandKind.r64_rm or OpCodeOperandKind.r64_opcode or OpCodeOperandKind.r64_vvvv:
                    SetRegister(ref instr, n, Gp(r, 64)); break;
                case OpCodeOperandKind.mm_reg or OpCodeOperandKind.mm_rm: SetRegister(ref instr, n, Register.MM0 + r.Next(8)); break;
                case OpCodeOperandKind.xmm_reg or OpCodeOperandKind.xmm_rm: SetRegister(ref instr, n, Register.XMM0 + r.Next(16)); break;
                case OpCodeOperandKind.al: SetRegister(ref instr, n, Register.AL); break;
                case OpCodeOperandKind.cl: SetRegister(ref instr, n, Register.CL); break;
                case OpCodeOperandKind.ax: SetRegister(ref instr, n, Register.AX); break;
                case OpCodeOperandKind.dx: SetRegister(ref instr, n, Register.DX); break;
                case OpCodeOperandKind.eax: SetRegister(ref instr, n, Register.EAX); break;
                case OpCodeOperandKind.rax: SetRegister(ref instr, n, Register.RAX); break;
                case OpCodeOperandKind.st0: SetRegister(ref instr, n, Register.ST0); break;
                case OpCodeOperandKind.sti_opcode: SetRegister(ref instr, n, Register.ST0 + r.Next(8)); break;
                case OpCodeOperandKind.imm8 or OpCodeOperandKind.imm8_const_1:
                    if (immSeen)
                    {
                        instr.SetOpKind(n, OpKind.Immediate8_2nd);
                        instr.Immediate8_2nd = (byte)r.Next(5); // ENTER nesting level
                    }
                    else
                    {
                        instr.SetOpKind(n, OpKind.Immediate8);
                        instr.Immediate8 = k == OpCodeOperandKind.imm8_const_1 ? (byte)1 : Imm8(r, op, g);
                    }
                    immSeen = true;
                    break;
                case OpCodeOperandKind.imm8sex16: instr.SetOpKind(n, OpKind.Immediate8to16); instr.Immediate8 = Imm8(r, op, g); immSeen = true; break;
                case OpCodeOperandKind.imm8sex32: instr.SetOpKind(n, OpKind.Immediate8to32); instr.Immediate8 = Imm8(r, op, g); immSeen = true; break;
                case OpCodeOperandKind.imm8sex64: instr.SetOpKind(n, OpKind.Immediate8to64); instr.Immediate8 = Imm8(r, op, g); immSeen = true; break;
                case OpCodeOperandKind.imm16:
                    instr.SetOpKind(n, OpKind.Immediate16);
                    instr.Immediate16 = op.Mnemonic == Mnemonic.Enter ? (ushort)r.Next(0, 64) : (ushort)Sanitize(g, Value(r));
                    immSeen = true;
                    break;
                case OpCodeOperandKind.imm32: instr.SetOpKind(n, OpKind.Immediate32); instr.Immediate32 = (uint)Sanitize(g, Value(r)); immSeen = true; break;
                case OpCodeOperandKind.imm32sex64: instr.SetOpKind(n, OpKind.Immediate32to64); instr.Immediate32 = (uint)Sanitize(g, Value(r)); immSeen = true; break;
                case OpCodeOperandKind.imm64: instr.SetOpKind(n, OpKind.Immediate64); instr.Immediate64 = Sanitize(g, Value(r)); immSeen = true; break;
                case OpCodeOperandKind.seg_rSI: instr.SetOpKind(n, OpKind.MemorySegRSI); break;
                case OpCodeOperandKind.es_rDI: instr.SetOpKind(n, OpKind.MemoryESRDI); break;
                case OpCodeOperandKind.br64_1 or OpCodeOperandKind.br64_4: instr.SetOpKind(n, OpKind.NearBranch64); break;
                default: return false;
            }
        }
        if (op.CanUseRepPrefix && r.Next(3) != 0) instr.HasRepPrefix = true;
        else if (op.CanUseRepnePrefix && r.Next(3) == 0) instr.HasRepnePrefix = true;
        if (op.CanUseLockPrefix && instr.Op0Kind == OpKind.Memory && r.Next(4) == 0) instr.HasLockPrefix = true;
        return true;
    }

    static void SetRegister(ref Instruction i, int n, Register reg)
    {
        i.SetOpKind(n, OpKind.Register);
        i.SetOpRegister(n, reg);
    }

    static void SetMemory(Random r, ref Instruction i, int n)
    {
        i.SetOpKind(n, OpKind.Memory);
        if (r.Next(40) == 0)
        {
            // Now and then a wild pointer, for #PF/#GP.
            i.MemoryBase = Gp(r, 64);
            i.MemoryDisplacement64 = 0;
            i.MemoryDisplSize = 0;
            return;
        }
        i.MemoryBase = Register.R15;
        long disp = r.Next(-0x7c0, 0x7c0);
        if (r.Next(16) != 0) disp &= ~15L;
        i.MemoryDisplacement64 = (ulong)disp;
        i.MemoryDisplSize = 8; // Iced: 8 = disp32 sign-extended in 64-bit mode
    }

    static byte Imm8(Random r, OpCodeInfo op, InstructionGroup g)
    {
        // 16-bit SHLD/SHRD with counts above 16 leave the result undefined.
        if (op.Mnemonic is Mnemonic.Shld or Mnemonic.Shrd && op.OperandSize == 16) return (byte)r.Next(0, 17);
        byte b = r.Next(4) switch { 0 => (byte)r.Next(0, 8), 1 => (byte)r.Next(0, 70), _ => (byte)r.Next(256) };
        if ((g.Traits & GroupTraits.Stack) != 0) b &= 0x7f; // no TF/AC reaching POPF through sign extension
        return b;
    }

    static ulong Sanitize(InstructionGroup g, ulong v) =>
        (g.Traits & GroupTraits.Stack) != 0 ? v & ~0x4_0100UL & 0x7fff_ffffUL : v;

    /// <summary>A register or immediate value with a bias towards boundaries.</summary>
    public static ulong Value(Random r) => r.Next(10) switch
    {
        0 => 0,
        1 => (ulong)r.Next(0, 3),
        2 => ulong.MaxValue - (ulong)r.Next(0, 2),
        3 => (ulong)r.Next(0, 300),
        4 => 1UL << r.Next(64),
        5 => (1UL << r.Next(64)) - 1,
        6 => (uint)r.NextInt64(),
        7 => 0x8000_0000UL + (ulong)r.Next(-2, 2),
        _ => (ulong)r.NextInt64() ^ ((ulong)r.Next() << 33),
    };
}

/// <summary>Generates a group's cases from (seed, group, index): any single case can be made again.</summary>
internal static class CaseGenerator
{
    const ulong Arith = 0x8d5;

    public static int CaseSeed(int seed, string group, int index)
    {
        uint h = 2166136261;
        foreach (char c in group) h = (h ^ c) * 16777619;
        h = (h ^ (uint)seed) * 16777619;
        h = (h ^ (uint)index) * 16777619;
        return (int)(h & 0x7fff_ffff);
    }

    public static OracleCase Generate(InstructionGroup g, int seed, int index)
    {
        var r = new Random(CaseSeed(seed, g.Name, index));
        for (int attempt = 0; ; attempt++)
        {
            var c = TryGenerate(g, r, index);
            if (c != null) return c;
            if (attempt > 100) throw new InvalidOperationException($"group {g.Name}: cannot generate case {index}");
        }
    }

    static OracleCase? TryGenerate(InstructionGroup g, Random r, int index)
    {
        int n = r.Next(1, g.MaxLength + 1);
        var list = new List<Instruction>();
        var undefBefore = new List<ulong>();
        ulong undef = 0;
        while (list.Count < n)
        {
            bool ok = false;
            for (int tries = 0; tries < 40 && !ok; tries++)
            {
                var forms = g.ByMnemonic[r.Next(g.ByMnemonic.Length)];
                var code = forms[r.Next(forms.Length)];
                if (!OperandFiller.Fill(r, code, g, out var instr)) continue;
                // Approximate x87 results are compared within a tolerance (X87Tolerance): only as
                // the last instruction, where no later one can magnify the difference.
                if (X87Tolerance.IsApproximate(instr.Mnemonic) && g.Name == "x87-transcendental") continue;
                if ((UndefinedFlags.Read(instr) & undef) != 0) continue;
                if (!TryEncode(instr, OracleLayout.Code, out _)) continue;
                undefBefore.Add(undef);
                list.Add(instr);
                ulong written = MayLeaveFlagsUnchanged(instr) ? 0 : UndefinedFlags.Written(instr);
                undef = (undef & ~written) | UndefinedFlags.Of(instr);
                ok = true;
            }
            if (!ok) return null;
        }
        if (g.Name == "x87-transcendental" && r.Next(8) != 0)
        {
            Code[] last = [Code.Fsin, Code.Fcos, Code.Fsincos, Code.Fptan, Code.Fpatan, Code.F2xm1, Code.Fyl2x, Code.Fyl2xp1];
            OperandFiller.Fill(r, last[r.Next(last.Length)], g, out var instr);
            undefBefore.Add(undef);
            list.Add(instr);
        }
        if ((g.Traits & GroupTraits.X87) != 0 && g.Name == "x87-compare")
        {
            // End on a compare so that C0-C3 are defined at the end.
            Code[] enders = [Code.Fcom_st0_sti, Code.Fucom_st0_sti, Code.Ftst, Code.Fxam, Code.Fcom_m64fp];
            var e = enders[r.Next(enders.Length)];
            OperandFiller.Fill(r, e, g, out var instr);
            undefBefore.Add(undef);
            list.Add(instr);
        }

        // Two passes: lengths first (branch forms have fixed sizes), then forward branch targets.
        var ips = new ulong[list.Count + 1];
        ulong ip = OracleLayout.Code;
        for (int i = 0; i < list.Count; i++)
        {
            var instr = list[i];
            ips[i] = ip;
            if (OperandFiller.IsBranch(instr.Op0Kind)) instr.NearBranch64 = ip;
            if (!TryEncode(instr, ip, out var bytes)) return null;
            list[i] = instr;
            ip += (ulong)bytes.Length;
        }
        ips[list.Count] = ip;
        var bytesOut = new List<byte>();
        bool branches = false;
        for (int i = 0; i < list.Count; i++)
        {
            var instr = list[i];
            if (OperandFiller.IsBranch(instr.Op0Kind))
            {
                branches = true;
                instr.NearBranch64 = ips[r.Next(i + 1, list.Count + 1)];
            }
            if (!TryEncode(instr, ips[i], out var bytes) || ips[i] + (ulong)bytes.Length != ips[i + 1]) return null;
            bytesOut.AddRange(bytes);
        }
        bytesOut.Add(0xf4); // HLT: the end marker (#GP at CPL 3)

        var steps = new (ulong, ulong)[list.Count];
        ulong union = undef;
        for (int i = 0; i < list.Count; i++)
        {
            steps[i] = (ips[i], undefBefore[i]);
            union |= undefBefore[i];
        }
        if (branches)
        {
            // Which instructions ran depends on the path: be conservative.
            for (int i = 0; i < steps.Length; i++) steps[i].Item2 = union;
            undef = union;
        }

        var c = new OracleCase
        {
            Group = g.Name, Index = index, Code = bytesOut.ToArray(), Text = Disassemble(bytesOut.ToArray()),
            Steps = steps, UndefinedAtEnd = undef,
            FxMask = (g.Traits & GroupTraits.X87) != 0 && g.Name != "x87-compare" ? FxCompare.None : FxCompare.All,
            UsesFx = (g.Traits & (GroupTraits.X87 | GroupTraits.Sse)) != 0,
        };
        InitState(c, g, r);
        // An AMD host's MXCSR has the misaligned-exception mask (bit 17), which LDMXCSR then
        // accepts; the engine models Intel's MXCSR, where that bit raises #GP. Keep it clear.
        foreach (var i in list)
            if (i.Mnemonic == Mnemonic.Ldmxcsr && i.MemoryBase == Register.R15 && i.MemoryIndex == Register.None
                && 0x802 + (long)i.MemoryDisplacement64 is long at && at >= 0 && at < c.Data.Length)
                c.Data[at] &= 0xfd;
        return c;
    }

    internal static bool MayLeaveFlagsUnchanged(in Instruction i)
    {
        switch (i.Mnemonic)
        {
            case Mnemonic.Shl or Mnemonic.Sal or Mnemonic.Shr or Mnemonic.Sar or Mnemonic.Rol or Mnemonic.Ror
                or Mnemonic.Rcl or Mnemonic.Rcr or Mnemonic.Shld or Mnemonic.Shrd:
                return true; // a zero (masked) count changes nothing
            case Mnemonic.Cmpsb or Mnemonic.Cmpsw or Mnemonic.Cmpsd or Mnemonic.Cmpsq
                or Mnemonic.Scasb or Mnemonic.Scasw or Mnemonic.Scasd or Mnemonic.Scasq:
                return i.HasRepPrefix || i.HasRepePrefix || i.HasRepnePrefix; // RCX = 0
            default:
                return false;
        }
    }

    internal static bool TryEncode(in Instruction instr, ulong ip, out byte[] bytes)
    {
        var w = new BytesWriter();
        var enc = Encoder.Create(64, w);
        if (!enc.TryEncode(instr, ip, out _, out _)) { bytes = []; return false; }
        bytes = w.Bytes.ToArray();
        return true;
    }

    sealed class BytesWriter : CodeWriter
    {
        public readonly List<byte> Bytes = new();
        public override void WriteByte(byte value) => Bytes.Add(value);
    }

    internal static string Disassemble(byte[] code)
    {
        var d = Decoder.Create(64, new ByteArrayCodeReader(code));
        d.IP = OracleLayout.Code;
        var f = new NasmFormatter();
        var sb = new StringBuilder();
        var o = new StringOutput();
        while (d.IP < OracleLayout.Code + (ulong)code.Length)
        {
            d.Decode(out var i);
            f.Format(i, o);
            sb.Append($"  {i.IP:x8}  {o.ToStringAndReset()}\n");
        }
        return sb.ToString();
    }

    static void InitState(OracleCase c, InstructionGroup g, Random r)
    {
        var t = g.Traits;
        for (int i = 0; i < 16; i++) c.Gpr[i] = OperandFiller.Value(r);
        c.Gpr[Gpr.Rsp] = OracleLayout.Data + 0xc00;
        c.Gpr[Gpr.R15] = OracleLayout.Data + 0x800;
        c.Rflags = ((ulong)r.Next() & Arith) | 2;
        if ((t & GroupTraits.RandomDf) != 0 && r.Next(2) == 0) c.Rflags |= 0x400;
        if ((t & GroupTraits.Divide) != 0 && r.Next(3) != 0) c.Gpr[Gpr.Rdx] = (ulong)r.Next(0, 4);
        if ((t & GroupTraits.Strings) != 0)
        {
            c.Gpr[Gpr.Rsi] = OracleLayout.Data + 0x200 + (ulong)r.Next(0, 0xc00);
            c.Gpr[Gpr.Rdi] = OracleLayout.Data + 0x200 + (ulong)r.Next(0, 0xc00);
            c.Gpr[Gpr.Rcx] = (ulong)r.Next(0, 24);
        }
        if ((t & GroupTraits.Branches) != 0 && r.Next(3) != 0) c.Gpr[Gpr.Rcx] = (ulong)r.Next(0, 4);
        if ((t & GroupTraits.Stack) != 0)
        {
            c.Gpr[Gpr.Rbp] = OracleLayout.Data + 0x400 + (ulong)(r.Next(0, 0x600) & ~7);
            for (int i = 0; i < 16; i++) c.Gpr[i] &= ~0x4_0100UL; // TF, AC
        }

        r.NextBytes(c.Data);
        if ((t & (GroupTraits.Sse | GroupTraits.X87)) != 0)
            for (int o = 0; o < c.Data.Length; o += 16) FillFloats(r, c.Data.AsSpan(o, 16));
        if ((t & GroupTraits.Stack) != 0)
            for (int o = 0; o < c.Data.Length; o += 8)
            {
                c.Data[o + 1] &= 0xfe; // TF (bit 8) of each qword
                c.Data[o + 2] &= 0xfb; // AC (bit 18)
            }

        // FXSAVE image: FCW, FSW, FTW, MXCSR, ST0-7, XMM0-15.
        var fx = c.Fx.AsSpan();
        ushort fcw = 0x037f;
        uint mxcsr = 0x1f80;
        if ((t & GroupTraits.X87) != 0)
        {
            int[] pc = [0, 2, 3, 3];
            bool dbl = (t & GroupTraits.X87Double) != 0;
            // Now and then some exceptions unmasked: #MF at the next waiting instruction.
            int masks = !dbl && r.Next(8) == 0 ? 0x40 | r.Next(0x40) : 0x7f;
            fcw = (ushort)(masks | ((dbl ? 2 : pc[r.Next(4)]) << 8) | (r.Next(4) << 10));
            int valid = r.Next(0, 9);
            int top = (8 - valid) & 7;
            BinaryPrimitives.WriteUInt16LittleEndian(fx[2..], (ushort)(top << 11));
            byte ftw = 0;
            for (int i = 0; i < valid; i++)
            {
                ftw |= (byte)(1 << ((top + i) & 7));
                WriteExtended(r, fx.Slice(32 + 16 * i, 10));
                if (dbl) FitDouble(fx.Slice(32 + 16 * i, 10));
            }
            fx[4] = ftw;
        }
        if ((t & GroupTraits.Sse) != 0)
        {
            mxcsr = (uint)(r.Next(4) << 13) | (uint)r.Next(0, 64);
            if (r.Next(3) == 0) mxcsr |= 0x8000; // FTZ
            if (r.Next(3) == 0) mxcsr |= 0x40;   // DAZ
            mxcsr |= r.Next(5) == 0 ? (uint)(r.Next(64) << 7) : 0x1f80u; // now and then unmasked exceptions
        }
        BinaryPrimitives.WriteUInt16LittleEndian(fx, fcw);
        BinaryPrimitives.WriteUInt32LittleEndian(fx[24..], mxcsr);
        BinaryPrimitives.WriteUInt32LittleEndian(fx[28..], 0xffff);
        for (int i = 0; i < 16; i++)
        {
            var x = fx.Slice(160 + 16 * i, 16);
            if ((t & GroupTraits.Sse) != 0) FillFloats(r, x); else r.NextBytes(x);
        }
    }

    /// <summary>Rounds an 80-bit value down to one binary64 represents: 53-bit mantissa, exponent in range.</summary>
    static void FitDouble(Span<byte> s)
    {
        ulong mant = BinaryPrimitives.ReadUInt64LittleEndian(s) & ~0x7ffUL;
        ushort se = BinaryPrimitives.ReadUInt16LittleEndian(s[8..]);
        int exp = se & 0x7fff;
        if (mant != 0 && (exp < 16383 - 1000 || exp > 16383 + 1000)) exp = 16383 + (exp & 63);
        BinaryPrimitives.WriteUInt64LittleEndian(s, mant);
        BinaryPrimitives.WriteUInt16LittleEndian(s[8..], (ushort)((se & 0x8000) | (mant == 0 ? 0 : exp)));
    }

    static void WriteExtended(Random r, Span<byte> s)
    {
        ulong mant; ushort se;
        ulong random = (ulong)r.NextInt64() ^ ((ulong)r.NextInt64() << 1);
        switch (r.Next(16))
        {
            case 0: mant = 0; se = 0; break;
            case 1: mant = 1UL << 63; se = (ushort)(16383 + r.Next(0, 4)); break;
            case 2: mant = (1UL << 63) | (random >> 1); se = (ushort)(16383 + r.Next(-16000, 16000)); break;
            // Special operands: denormals and pseudo-denormals, values near the exponent limits
            // (overflow and underflow), infinities, QNaNs and SNaNs, unnormals and other
            // unsupported encodings, and values with few significant bits (exact results).
            case 3: mant = random >> r.Next(1, 64); se = 0; break;
            case 4: mant = (1UL << 63) | (random >> r.Next(1, 64)); se = 0; break;
            case 5: mant = (1UL << 63) | (random >> 1); se = (ushort)(r.Next(2) == 0 ? r.Next(1, 80) : 0x7FFE - r.Next(0, 80)); break;
            case 6: mant = 1UL << 63; se = 0x7FFF; break;
            case 7: mant = (1UL << 63) | (random >> 1) | (r.Next(2) == 0 ? 1UL << 62 : 0); if ((mant << 1) == 0) mant |= 1; se = 0x7FFF; break;
            case 8: mant = random >> r.Next(1, 64); se = (ushort)(r.Next(4) == 0 ? 0x7FFF : 16383 + r.Next(-70, 70)); break;
            case 9: mant = (1UL << 63) | (random >> 1 & ~((1UL << r.Next(8, 60)) - 1)); se = (ushort)(16383 + r.Next(-70, 70)); break;
            default: mant = (1UL << 63) | (random >> 1); se = (ushort)(16383 + r.Next(-70, 70)); break;
        }
        if (r.Next(2) == 0) se |= 0x8000;
        BinaryPrimitives.WriteUInt64LittleEndian(s, mant);
        BinaryPrimitives.WriteUInt16LittleEndian(s[8..], se);
    }

    static readonly float[] NiceFloats = [0f, -0f, 1f, -1f, 0.5f, 2f, 3f, 1e-40f, float.Epsilon, float.MaxValue, float.PositiveInfinity, float.NegativeInfinity, float.NaN, 1.5f, -2.5f, 100f, 65536f, 2147483648f];

    /// <summary>Binary32 and binary64 edge patterns: denormals, smallest/largest normals, infinities,
    /// quiet and signalling NaNs with payloads, the integer-conversion limits and 1 + ulp.</summary>
    static readonly uint[] EdgeSingles = [0x00000001, 0x807fffff, 0x00400000, 0x00800000, 0x80800000, 0x7f7fffff, 0xff7fffff,
        0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7fa00001, 0xff812345, 0x7fe12345, 0x3f800001, 0x4b000000,
        0x4effffff, 0x4f000000, 0xcf000000, 0x5f000000, 0xdf000001, 0x3f000000, 0xbfc00000];
    static readonly ulong[] EdgeDoubles = [0x0000000000000001, 0x800fffffffffffff, 0x0008000000000000, 0x0010000000000000,
        0x8010000000000000, 0x7fefffffffffffff, 0xffefffffffffffff, 0x7ff0000000000000, 0xfff0000000000000, 0x7ff8000000000000,
        0xfff8000000000000, 0x7ff4000000000001, 0xfff0123456789abc, 0x7ffc123456789abc, 0x3ff0000000000001, 0x4330000000000000,
        0x41dfffffffc00000, 0x41e0000000000000, 0xc1e0000000100000, 0x43e0000000000000, 0xc3e0000000000001, 0x3fe0000000000000,
        0x36a0000000000000, 0x47efffffe0000000];

    /// <summary>16 bytes as floats, doubles, integers, edge patterns (or values near the exponent limits) or noise.</summary>
    static void FillFloats(Random r, Span<byte> s)
    {
        switch (r.Next(6))
        {
            case 4:
                if (r.Next(2) == 0)
                    for (int i = 0; i < 4; i++)
                        BinaryPrimitives.WriteUInt32LittleEndian(s[(4 * i)..], r.Next(2) == 0 ? EdgeSingles[r.Next(EdgeSingles.Length)]
                            : (uint)r.Next(2) << 31 | (uint)(r.Next(2) == 0 ? r.Next(0, 4) : r.Next(250, 255)) << 23 | (uint)r.Next(1 << 23));
                else
                    for (int i = 0; i < 2; i++)
                        BinaryPrimitives.WriteUInt64LittleEndian(s[(8 * i)..], r.Next(2) == 0 ? EdgeDoubles[r.Next(EdgeDoubles.Length)]
                            : (ulong)r.Next(2) << 63 | (ulong)(r.Next(2) == 0 ? r.Next(0, 4) : r.Next(2043, 2047)) << 52 | (ulong)r.NextInt64(1L << 52));
                break;
            case 0:
                for (int i = 0; i < 4; i++)
                    BinaryPrimitives.WriteSingleLittleEndian(s[(4 * i)..], r.Next(3) == 0 ? NiceFloats[r.Next(NiceFloats.Length)] : (float)((r.NextDouble() - 0.5) * Math.Pow(2, r.Next(-30, 30))));
                break;
            case 1:
                for (int i = 0; i < 2; i++)
                    BinaryPrimitives.WriteDoubleLittleEndian(s[(8 * i)..], r.Next(3) == 0 ? NiceFloats[r.Next(NiceFloats.Length)] : (r.NextDouble() - 0.5) * Math.Pow(2, r.Next(-60, 60)));
                break;
            case 2:
                for (int i = 0; i < 4; i++) BinaryPrimitives.WriteInt32LittleEndian(s[(4 * i)..], r.Next(-1000, 1000));
                break;
            default:
                r.NextBytes(s);
                break;
        }
    }
}
