using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu.Jit;

/// <summary>Which instruction shapes are compiled inline; everything else calls the interpreter.</summary>
internal sealed partial class BlockTranslator
{
    private static bool IsGpr(in Instruction i, int k) => i.GetOpKind(k) == OpKind.Register && i.GetOpRegister(k).IsGPR();

    private static bool IsImm(in Instruction i, int k) => i.GetOpKind(k) is OpKind.Immediate8 or OpKind.Immediate16 or OpKind.Immediate32
        or OpKind.Immediate64 or OpKind.Immediate8to16 or OpKind.Immediate8to32 or OpKind.Immediate8to64 or OpKind.Immediate32to64;

    private static bool IsMem(in Instruction i, int k) => i.GetOpKind(k) == OpKind.Memory;

    private static bool IsAlu(Mnemonic m) => m is Mnemonic.Add or Mnemonic.Or or Mnemonic.Adc or Mnemonic.Sbb or Mnemonic.And
        or Mnemonic.Sub or Mnemonic.Xor or Mnemonic.Cmp or Mnemonic.Test;

    private static bool IsShift(Mnemonic m) => m is Mnemonic.Shl or Mnemonic.Sal or Mnemonic.Shr or Mnemonic.Sar or Mnemonic.Rol or Mnemonic.Ror;

    private static readonly byte[] s_condClass = BuildCondClasses();

    private static byte[] BuildCondClasses()
    {
        var t = new byte[Enum.GetValues<Mnemonic>().Max(m => (int)m) + 1];
        foreach (var m in Enum.GetValues<Mnemonic>())
        {
            string n = m.ToString();
            if (n.StartsWith("Cmov", StringComparison.Ordinal) && n.Length <= 7) t[(int)m] = 1;
            else if (n.StartsWith("Set", StringComparison.Ordinal) && n.Length <= 5 && m != Mnemonic.Setssbsy) t[(int)m] = 2;
        }
        return t;
    }

    private static bool IsCmov(Mnemonic m) => s_condClass[(int)m] == 1;
    private static bool IsSet(Mnemonic m) => s_condClass[(int)m] == 2;

    /// <summary>Instructions the interpreter runs for compiled code that change none of what the run loop
    /// looks at between blocks (TF, IF, the interrupt shadow, the mode, CS, control and debug registers,
    /// segment registers): a block calling the interpreter only for these still leaves by direct links and
    /// indirect hops. A change of RIP (a REP string instruction pausing) or a write to decoded code still
    /// ends the block at once, and faults and exits leave through Abort as ever.</summary>
    private static readonly HashSet<Mnemonic> s_chainSafe =
    [
        Mnemonic.Add, Mnemonic.Or, Mnemonic.Adc, Mnemonic.Sbb, Mnemonic.And, Mnemonic.Sub, Mnemonic.Xor, Mnemonic.Cmp, Mnemonic.Test,
        Mnemonic.Inc, Mnemonic.Dec, Mnemonic.Neg, Mnemonic.Not, Mnemonic.Lea, Mnemonic.Movzx, Mnemonic.Movsx, Mnemonic.Movsxd,
        Mnemonic.Shl, Mnemonic.Sal, Mnemonic.Shr, Mnemonic.Sar, Mnemonic.Rol, Mnemonic.Ror, Mnemonic.Rcl, Mnemonic.Rcr,
        Mnemonic.Shld, Mnemonic.Shrd, Mnemonic.Bt, Mnemonic.Bts, Mnemonic.Btr, Mnemonic.Btc, Mnemonic.Bsf, Mnemonic.Bsr,
        Mnemonic.Tzcnt, Mnemonic.Lzcnt, Mnemonic.Popcnt, Mnemonic.Mul, Mnemonic.Imul, Mnemonic.Div, Mnemonic.Idiv,
        Mnemonic.Xadd, Mnemonic.Xchg, Mnemonic.Cmpxchg, Mnemonic.Cmpxchg8b, Mnemonic.Cmpxchg16b, Mnemonic.Bswap, Mnemonic.Movbe,
        Mnemonic.Crc32, Mnemonic.Cbw, Mnemonic.Cwde, Mnemonic.Cdqe, Mnemonic.Cwd, Mnemonic.Cdq, Mnemonic.Cqo,
        Mnemonic.Lahf, Mnemonic.Sahf, Mnemonic.Clc, Mnemonic.Stc, Mnemonic.Cmc, Mnemonic.Cld, Mnemonic.Std, Mnemonic.Leave,
        Mnemonic.Movsb, Mnemonic.Movsw, Mnemonic.Movsd, Mnemonic.Movsq, Mnemonic.Stosb, Mnemonic.Stosw, Mnemonic.Stosd, Mnemonic.Stosq,
        Mnemonic.Lodsb, Mnemonic.Lodsw, Mnemonic.Lodsd, Mnemonic.Lodsq, Mnemonic.Cmpsb, Mnemonic.Cmpsw, Mnemonic.Cmpsd, Mnemonic.Cmpsq,
        Mnemonic.Scasb, Mnemonic.Scasw, Mnemonic.Scasd, Mnemonic.Scasq,
        Mnemonic.Nop, Mnemonic.Pause, Mnemonic.Lfence, Mnemonic.Sfence, Mnemonic.Mfence, Mnemonic.Endbr64,
        Mnemonic.Prefetchnta, Mnemonic.Prefetcht0, Mnemonic.Prefetcht1, Mnemonic.Prefetcht2, Mnemonic.Prefetchw,
    ];

    private static bool ChainSafe(in Instruction i)
        => s_chainSafe.Contains(i.Mnemonic) || (s_condClass[(int)i.Mnemonic] != 0 && i.Mnemonic != Mnemonic.Setssbsy)
            || (i.Mnemonic is Mnemonic.Mov or Mnemonic.Push or Mnemonic.Pop && NoSystemRegister(i))
            || i.Mnemonic == Mnemonic.Ret || i.IsCallNear || i.IsCallNearIndirect || i.IsJmpShortOrNear || i.IsJmpNearIndirect
            // An IN the engine answers itself (unclaimed ports, polled timers) changes only its register; one that
            // exits leaves through Abort.
            || i.Mnemonic == Mnemonic.In;

    /// <summary>A MOV, PUSH or POP of general registers, memory and immediates only: not of a segment (MOV SS and
    /// POP SS also open an interrupt shadow), control or debug register. What 32- and 16-bit code runs through the
    /// interpreter for want of inline memory accesses.</summary>
    private static bool NoSystemRegister(in Instruction i)
    {
        for (int k = 0; k < i.OpCount; k++)
            if (i.GetOpKind(k) == OpKind.Register && !i.GetOpRegister(k).IsGPR())
                return false;
        return true;
    }

    private bool Supported(ref DecodedInsn d, out bool touchesMemory, out ulong kills)
    {
        ref Instruction i = ref d.I;
        touchesMemory = false;
        kills = 0;
        if (i.HasLockPrefix && !LockInline(i)) return false;
        int n = i.OpCount;
        bool memOk = MemOk(ref d);
        bool g0 = n > 0 && IsGpr(i, 0), g1 = n > 1 && IsGpr(i, 1);
        bool m0 = n > 0 && IsMem(i, 0), m1 = n > 1 && IsMem(i, 1);
        bool i1 = n > 1 && IsImm(i, 1);
        var op = d.Op;
        if (SupportedSse(ref d, memOk))
        {
            touchesMemory = true;
            if (s_sse[i.Code].Shape == SseShape.Comi) kills = X86Vcpu.ArithFlags;
            return true;
        }
        if (IsAlu(d.Op))
        {
            if (n != 2) return false;
            bool ok = (g0 && (g1 || i1 || (m1 && memOk))) || (m0 && memOk && (g1 || i1));
            touchesMemory = m0 || m1;
            kills = FlagLiveness.IcedKills(i);
            return ok;
        }
        if (IsShift(op))
        {
            if (n != 2 || !(g0 || (m0 && memOk))) return false;
            touchesMemory = m0;
            if (i1)
            {
                int c = (int)i.GetImmediate(1) & (d.OpSize == 8 ? 63 : 31);
                if (c != 0) kills = op is Mnemonic.Rol or Mnemonic.Ror ? X86Vcpu.CF | X86Vcpu.OF : X86Vcpu.ArithFlags;
                return true;
            }
            return i.Op1Kind == OpKind.Register && i.Op1Register == Register.CL;
        }
        if (i.IsJccShortOrNear) return true;
        if (IsCmov(op))
        {
            touchesMemory = m1;
            return n == 2 && g0 && (g1 || (m1 && memOk));
        }
        if (IsSet(op))
        {
            touchesMemory = m0;
            return n == 1 && (g0 || (m0 && memOk));
        }
        switch (op)
        {
            case Mnemonic.Mov:
                touchesMemory = m0 || m1;
                return n == 2 && ((g0 && (g1 || i1 || (m1 && memOk))) || (m0 && memOk && (g1 || i1))
                    || (g0 && i.Op1Kind == OpKind.Register && i.Op1Register.IsSegmentRegister()));
            case Mnemonic.Movzx:
            case Mnemonic.Movsx:
                touchesMemory = m1;
                return n == 2 && g0 && (g1 || (m1 && memOk));
            case Mnemonic.Movsxd:
                touchesMemory = m1;
                return n == 2 && g0 && d.OpSize == 8 && (g1 || (m1 && memOk));
            case Mnemonic.Lea:
                return n == 2 && g0 && d.MemSplit && d.OpSize >= 2;
            case Mnemonic.Inc:
            case Mnemonic.Dec:
            case Mnemonic.Neg:
            case Mnemonic.Not:
                touchesMemory = m0;
                kills = FlagLiveness.IcedKills(i);
                return n == 1 && (g0 || (m0 && memOk));
            case Mnemonic.Mul:
            case Mnemonic.Imul when n == 1:
                // RDX:RAX = RAX * operand, the common widths.
                touchesMemory = m0;
                kills = X86Vcpu.ArithFlags;
                return d.OpSize is 4 or 8 && (g0 || (m0 && memOk));
            case Mnemonic.Div:
                // A divisor of 0 or a quotient too wide raises #DE at run time: a fault point like a memory access.
                touchesMemory = true;
                return n == 1 && (g0 || (m0 && memOk)) && d.OpSize is 4 or 8;
            case Mnemonic.Imul:
                if (n < 2 || !g0 || d.OpSize < 2) return false;
                touchesMemory = m1;
                kills = X86Vcpu.ArithFlags;
                return (g1 || (m1 && memOk)) && (n == 2 || IsImm(i, 2));
            // 64-bit blocks, and 32-bit ones with 32-bit pointers: there the inline path is taken while SS is flat
            // and 32-bit (FlatStack), and the interpreter's push or pop is the slow path.
            case Mnemonic.Push:
                touchesMemory = true;
                if (_b.Bitness == 32) return n == 1 && (g0 || IsImm(i, 0)) && i.StackPointerIncrement is -4 or -2;
                return _is64 && n == 1 && (g0 || IsImm(i, 0) || (m0 && memOk && d.OpSize == 8)) && i.StackPointerIncrement is -8 or -2;
            case Mnemonic.Pop:
                touchesMemory = true;
                if (_b.Bitness == 32) return n == 1 && g0 && i.StackPointerIncrement == d.OpSize && d.OpSize is 4 or 2;
                return _is64 && n == 1 && g0 && i.StackPointerIncrement == d.OpSize && d.OpSize is 8 or 2;
            case Mnemonic.Call:
                touchesMemory = true;
                if (_b.Bitness == 32)
                    return n == 1 && i.StackPointerIncrement == -4 && (i.Op0Kind == OpKind.NearBranch32 || ((g0 || (m0 && memOk)) && d.OpSize == 4));
                return _is64 && n == 1 && i.StackPointerIncrement == -8 && (i.Op0Kind == OpKind.NearBranch64 || (g0 && d.OpSize == 8) || (m0 && memOk && d.OpSize == 8));
            case Mnemonic.Ret:
                touchesMemory = true;
                if (_b.Bitness == 32)
                    return (n == 0 && i.StackPointerIncrement == 4) || (n == 1 && i.Op0Kind == OpKind.Immediate16 && i.StackPointerIncrement == 4 + i.Immediate16);
                return _is64 && n == 0 && i.StackPointerIncrement == 8;
            case Mnemonic.Jmp:
                touchesMemory = m0;
                return i.Op0Kind is OpKind.NearBranch32 or OpKind.NearBranch64 || (_is64 && (g0 || (m0 && memOk)) && d.OpSize == 8);
            case Mnemonic.Leave:
                touchesMemory = true;
                return _is64 && i.Code == Code.Leaveq;
            case Mnemonic.Bsf:
            case Mnemonic.Bsr:
            case Mnemonic.Tzcnt:
            case Mnemonic.Lzcnt:
            case Mnemonic.Popcnt:
                // BSF and BSR with a zero source keep every flag but ZF; TZCNT and LZCNT keep all but CF and ZF.
                touchesMemory = m1;
                kills = op switch { Mnemonic.Bsf or Mnemonic.Bsr => X86Vcpu.ZF, Mnemonic.Popcnt => X86Vcpu.ArithFlags, _ => X86Vcpu.CF | X86Vcpu.ZF };
                return n == 2 && g0 && d.OpSize >= 2 && (g1 || (m1 && memOk));
            case Mnemonic.Shld:
            case Mnemonic.Shrd:
            {
                if (n != 3 || !g1 || !(g0 || (m0 && memOk))) return false;
                touchesMemory = m0;
                // By CL the count may be 0, which changes no flag.
                if (IsImm(i, 2) && (i.GetImmediate(2) & (d.OpSize == 8 ? 63UL : 31UL)) != 0) kills = X86Vcpu.ArithFlags;
                return IsImm(i, 2) || (i.Op2Kind == OpKind.Register && i.Op2Register == Register.CL);
            }
            case Mnemonic.Bswap:
                return g0 && d.OpSize >= 4;
            case Mnemonic.Xchg:
                touchesMemory = m0 || m1;
                return n == 2 && ((g0 && g1) || (m0 && memOk && g1) || (g0 && m1 && memOk));
            case Mnemonic.Cmpxchg:
            case Mnemonic.Xadd:
                touchesMemory = m0;
                kills = X86Vcpu.ArithFlags;
                return n == 2 && g1 && (g0 || (m0 && memOk));
            case Mnemonic.Bt:
            case Mnemonic.Bts:
            case Mnemonic.Btr:
            case Mnemonic.Btc:
                touchesMemory = m0;
                kills = X86Vcpu.CF;
                if (n != 2 || d.OpSize < 2) return false;
                if (g0) return g1 || i1;
                // A register offset addresses a bit string around the operand: with 64-bit addresses only.
                return m0 && memOk && (i1 || (g1 && _is64 && d.AddrSize == 8));
            case Mnemonic.Pushfq:
                touchesMemory = true;
                return _is64 && i.Code == Code.Pushfq;
            case Mnemonic.Cli:
            case Mnemonic.Sti:
                // A fault point: at CPL > 0 the interpreter may raise #GP.
                touchesMemory = true;
                return true;
            case Mnemonic.Swapgs:
                // A fault point: #GP outside CPL 0; outside 64-bit code #UD, from the interpreter.
                touchesMemory = true;
                return _is64;
            case Mnemonic.Rdtsc:
            case Mnemonic.Rdtscp:
                // A fault point: #GP above CPL 0 under CR4.TSD.
                touchesMemory = true;
                return true;
            case Mnemonic.Clac:
            case Mnemonic.Stac:
                // A fault point: #UD outside CPL 0.
                touchesMemory = true;
                return true;
            case Mnemonic.Cld:
            case Mnemonic.Std:
            case Mnemonic.Pause:
            case Mnemonic.Lfence:
            case Mnemonic.Sfence:
            case Mnemonic.Mfence:
            case Mnemonic.Endbr32:
            case Mnemonic.Endbr64:
            case Mnemonic.Nop:
            case Mnemonic.Prefetchnta:
            case Mnemonic.Prefetcht0:
            case Mnemonic.Prefetcht1:
            case Mnemonic.Prefetcht2:
            case Mnemonic.Prefetchw:
            case Mnemonic.Cdqe:
            case Mnemonic.Cdq:
            case Mnemonic.Cqo:
                return true;
        }
        return false;
    }
}
