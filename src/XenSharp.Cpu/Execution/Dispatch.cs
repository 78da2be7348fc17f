using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>The interpreter's dispatch: one switch on the mnemonic, handlers by group in the
/// other Execution files.</summary>
internal unsafe partial class X86Vcpu
{
    private const byte ClsCmov = 1, ClsSet = 2, ClsJcc = 3;
    private static readonly byte[] s_cls = BuildClasses();

    private static byte[] BuildClasses()
    {
        var all = Enum.GetValues<Mnemonic>();
        int max = 0;
        foreach (var m in all) max = Math.Max(max, (int)m);
        var t = new byte[max + 1];
        foreach (var m in all)
        {
            string n = m.ToString();
            if (n.StartsWith("Cmov", StringComparison.Ordinal) && n.Length <= 7) t[(int)m] = ClsCmov;
            else if (n.StartsWith("Set", StringComparison.Ordinal) && n.Length <= 5 && m != Mnemonic.Setssbsy) t[(int)m] = ClsSet;
            else if (n[0] == 'J' && n.Length <= 3 && m != Mnemonic.Jmp && m != Mnemonic.Jmpe) t[(int)m] = ClsJcc;
        }
        return t;
    }

    private void Execute(ref DecodedInsn d)
    {
        switch (d.Op)
        {
            case Mnemonic.Mov: ExecMov(ref d); return;
            case Mnemonic.Add: ExecAlu(ref d, AluOp.Add); return;
            case Mnemonic.Or: ExecAlu(ref d, AluOp.Or); return;
            case Mnemonic.Adc: ExecAlu(ref d, AluOp.Adc); return;
            case Mnemonic.Sbb: ExecAlu(ref d, AluOp.Sbb); return;
            case Mnemonic.And: ExecAlu(ref d, AluOp.And); return;
            case Mnemonic.Sub: ExecAlu(ref d, AluOp.Sub); return;
            case Mnemonic.Xor: ExecAlu(ref d, AluOp.Xor); return;
            case Mnemonic.Cmp: ExecAlu(ref d, AluOp.Cmp); return;
            case Mnemonic.Test: ExecAlu(ref d, AluOp.Test); return;
            case Mnemonic.Inc: ExecUnary(ref d, UnOp.Inc); return;
            case Mnemonic.Dec: ExecUnary(ref d, UnOp.Dec); return;
            case Mnemonic.Neg: ExecUnary(ref d, UnOp.Neg); return;
            case Mnemonic.Not: ExecUnary(ref d, UnOp.Not); return;
            case Mnemonic.Lea: WriteReg(d.I.Op0Register, Ea(ref d)); return;
            case Mnemonic.Movzx: WriteReg(d.I.Op0Register, ReadOp(ref d, 1, SrcSize(ref d))); return;
            case Mnemonic.Movsx:
            case Mnemonic.Movsxd:
            {
                int ss = SrcSize(ref d);
                ulong v = ReadOp(ref d, 1, ss);
                WriteReg(d.I.Op0Register, SignExtend(v, ss));
                return;
            }
            case Mnemonic.Push: ExecPush(ref d); return;
            case Mnemonic.Pop: ExecPop(ref d); return;
            case Mnemonic.Jmp: ExecJmp(ref d); return;
            case Mnemonic.Call: ExecCall(ref d); return;
            case Mnemonic.Ret: ExecRet(ref d); return;
            case Mnemonic.Nop: return;
            case Mnemonic.Xchg: ExecXchg(ref d); return;
            case Mnemonic.Xadd: ExecXadd(ref d); return;
            case Mnemonic.Cmpxchg: ExecCmpxchg(ref d); return;
            case Mnemonic.Cmpxchg8b: ExecCmpxchgWide(ref d, false); return;
            case Mnemonic.Cmpxchg16b: ExecCmpxchgWide(ref d, true); return;
            case Mnemonic.Mul: ExecMul(ref d, false); return;
            case Mnemonic.Imul:
                if (d.I.OpCount == 1) ExecMul(ref d, true); else ExecImulN(ref d);
                return;
            case Mnemonic.Div: ExecDiv(ref d, false); return;
            case Mnemonic.Idiv: ExecDiv(ref d, true); return;
            case Mnemonic.Shl: case Mnemonic.Sal: case Mnemonic.Shr: case Mnemonic.Sar:
            case Mnemonic.Rol: case Mnemonic.Ror: case Mnemonic.Rcl: case Mnemonic.Rcr:
                ExecShift(ref d, d.Op); return;
            case Mnemonic.Shld: ExecShiftDouble(ref d, true); return;
            case Mnemonic.Shrd: ExecShiftDouble(ref d, false); return;
            case Mnemonic.Bt: ExecBitTest(ref d, 0); return;
            case Mnemonic.Bts: ExecBitTest(ref d, 1); return;
            case Mnemonic.Btr: ExecBitTest(ref d, 2); return;
            case Mnemonic.Btc: ExecBitTest(ref d, 3); return;
            case Mnemonic.Bsf: case Mnemonic.Bsr: case Mnemonic.Tzcnt: case Mnemonic.Lzcnt: case Mnemonic.Popcnt:
                ExecBitScan(ref d, d.Op); return;
            case Mnemonic.Daa: case Mnemonic.Das: case Mnemonic.Aaa: case Mnemonic.Aas: case Mnemonic.Aam: case Mnemonic.Aad:
                if (Bitness == 64) throw UD();
                ExecBcd(d.Op, ref d); return;
            case Mnemonic.Bswap: ExecBswap(ref d); return;
            case Mnemonic.Movbe: ExecMovbe(ref d); return;
            case Mnemonic.Cbw: R[0] = (R[0] & ~0xFFFFUL) | (ulong)(ushort)(short)(sbyte)(byte)R[0]; return;
            case Mnemonic.Cwde: R[0] = (uint)(short)(ushort)R[0]; return;
            case Mnemonic.Cdqe: R[0] = (ulong)(int)(uint)R[0]; return;
            case Mnemonic.Cwd: R[2] = (R[2] & ~0xFFFFUL) | (((short)(ushort)R[0] < 0) ? 0xFFFFUL : 0); return;
            case Mnemonic.Cdq: R[2] = ((int)(uint)R[0] < 0) ? 0xFFFF_FFFFUL : 0; return;
            case Mnemonic.Cqo: R[2] = ((long)R[0] < 0) ? ulong.MaxValue : 0; return;
            case Mnemonic.Xlatb:
            {
                ulong off = d.AddrSize switch { 8 => R[3] + (byte)R[0], 4 => (uint)(R[3] + (byte)R[0]), _ => (ushort)(R[3] + (byte)R[0]) };
                byte v = Read8(Linear(d.I.MemorySegment - Register.ES, off));
                R[0] = (R[0] & ~0xFFUL) | v;
                return;
            }
            case Mnemonic.Lahf:
                R[0] = (R[0] & ~0xFF00UL) | (((Rflags & 0xD5) | 2) << 8);
                return;
            case Mnemonic.Sahf:
                Rflags = (Rflags & ~0xD5UL) | ((R[0] >> 8) & 0xD5) | 2;
                return;
            case Mnemonic.Clc: Rflags &= ~CF; return;
            case Mnemonic.Stc: Rflags |= CF; return;
            case Mnemonic.Cmc: Rflags ^= CF; return;
            case Mnemonic.Cld: Rflags &= ~DF; return;
            case Mnemonic.Std: Rflags |= DF; return;
            case Mnemonic.Cli: ExecCli(); return;
            case Mnemonic.Sti: ExecSti(); return;
            case Mnemonic.Pushf: case Mnemonic.Pushfd: case Mnemonic.Pushfq: ExecPushf(ref d); return;
            case Mnemonic.Popf: case Mnemonic.Popfd: case Mnemonic.Popfq: ExecPopf(ref d); return;
            case Mnemonic.Pusha: case Mnemonic.Pushad: ExecPusha(d.Op == Mnemonic.Pushad ? 4 : 2); return;
            case Mnemonic.Popa: case Mnemonic.Popad: ExecPopa(d.Op == Mnemonic.Popad ? 4 : 2); return;
            case Mnemonic.Enter: ExecEnter(ref d); return;
            case Mnemonic.Leave: ExecLeave(ref d); return;
            case Mnemonic.Loop: case Mnemonic.Loope: case Mnemonic.Loopne: ExecLoop(ref d); return;
            case Mnemonic.Jcxz: case Mnemonic.Jecxz: case Mnemonic.Jrcxz:
            {
                ulong c = d.AddrSize switch { 8 => R[1], 4 => (uint)R[1], _ => (ushort)R[1] };
                if (c == 0) Branch(ref d, d.I.NearBranchTarget);
                return;
            }
            case Mnemonic.Retf: ExecRetf(ref d); return;
            case Mnemonic.Iret: case Mnemonic.Iretd: case Mnemonic.Iretq: ExecIret(ref d); return;
            case Mnemonic.Int: ExecInt((int)d.I.Immediate8, InterruptKind.Software); return;
            case Mnemonic.Int3: ExecInt(3, InterruptKind.SoftwareException); return;
            case Mnemonic.Int1: ExecInt(1, InterruptKind.PrivilegedSoftware); return;
            case Mnemonic.Into:
                if (Bitness == 64) throw UD();
                if ((Rflags & OF) != 0) ExecInt(4, InterruptKind.SoftwareException);
                return;
            case Mnemonic.Hlt: ExecHlt(); return;
            case Mnemonic.Vmcall: case Mnemonic.Vmmcall:
                Stop = true;
                ExitAfterInstruction(VcpuExitReason.Hypercall);
                return;
            case Mnemonic.In: ExecIn(ref d); return;
            case Mnemonic.Out: ExecOut(ref d); return;
            case Mnemonic.Insb: case Mnemonic.Insw: case Mnemonic.Insd: ExecIns(ref d); return;
            case Mnemonic.Outsb: case Mnemonic.Outsw: case Mnemonic.Outsd: ExecOuts(ref d); return;
            case Mnemonic.Movsb: case Mnemonic.Movsw: case Mnemonic.Movsq: ExecMovs(ref d); return;
            case Mnemonic.Movsd:
                if (d.I.Op0Kind is OpKind.MemoryESDI or OpKind.MemoryESEDI or OpKind.MemoryESRDI) ExecMovs(ref d);
                else ExecSse(ref d);
                return;
            case Mnemonic.Stosb: case Mnemonic.Stosw: case Mnemonic.Stosd: case Mnemonic.Stosq: ExecStos(ref d); return;
            case Mnemonic.Lodsb: case Mnemonic.Lodsw: case Mnemonic.Lodsd: case Mnemonic.Lodsq: ExecLods(ref d); return;
            case Mnemonic.Scasb: case Mnemonic.Scasw: case Mnemonic.Scasd: case Mnemonic.Scasq: ExecScas(ref d); return;
            case Mnemonic.Cmpsb: case Mnemonic.Cmpsw: case Mnemonic.Cmpsq: ExecCmps(ref d); return;
            case Mnemonic.Cmpsd:
                if (d.I.Op0Kind is OpKind.MemorySegSI or OpKind.MemorySegESI or OpKind.MemorySegRSI) ExecCmps(ref d);
                else ExecSse(ref d);
                return;
            case Mnemonic.Pause: case Mnemonic.Lfence: case Mnemonic.Sfence: case Mnemonic.Mfence:
            case Mnemonic.Prefetchnta: case Mnemonic.Prefetcht0: case Mnemonic.Prefetcht1: case Mnemonic.Prefetcht2:
            case Mnemonic.Prefetchw: case Mnemonic.Prefetch: case Mnemonic.Endbr32: case Mnemonic.Endbr64:
                if (d.Op == Mnemonic.Mfence) Interlocked.MemoryBarrier();
                return;
            case Mnemonic.Clflush: case Mnemonic.Clflushopt: case Mnemonic.Clwb:
                ReadLin(MemAddr(ref d), 1);
                return;
            case Mnemonic.Ud0: case Mnemonic.Ud1: case Mnemonic.Ud2:
                throw UD();
            case Mnemonic.INVALID:
                throw UD();
            case Mnemonic.Andn: case Mnemonic.Bextr: case Mnemonic.Blsi: case Mnemonic.Blsmsk: case Mnemonic.Blsr:
            case Mnemonic.Bzhi: case Mnemonic.Mulx: case Mnemonic.Pdep: case Mnemonic.Pext: case Mnemonic.Rorx:
            case Mnemonic.Sarx: case Mnemonic.Shlx: case Mnemonic.Shrx: case Mnemonic.Adcx: case Mnemonic.Adox:
                ExecBmi(ref d); return;
            case Mnemonic.Crc32: ExecCrc32(ref d); return;
            case Mnemonic.Rdrand: case Mnemonic.Rdseed:
            {
                ulong v = (ulong)Random.Shared.NextInt64() ^ ((ulong)Random.Shared.Next() << 63);
                WriteReg(d.I.Op0Register, v);
                SetArith(CF);
                return;
            }
            case Mnemonic.Lds: case Mnemonic.Les: case Mnemonic.Lfs: case Mnemonic.Lgs: case Mnemonic.Lss:
                ExecLoadFarPointer(ref d); return;
            case Mnemonic.Salc:
                R[0] = (R[0] & ~0xFFUL) | ((Rflags & CF) != 0 ? 0xFFUL : 0);
                return;
        }
        switch (s_cls[(int)d.Op])
        {
            case ClsJcc:
                if (Cond(d.I.ConditionCode)) Branch(ref d, d.I.NearBranchTarget);
                return;
            case ClsCmov:
            {
                int size = d.OpSize;
                ulong v = ReadOp(ref d, 1, size);
                if (Cond(d.I.ConditionCode)) WriteReg(d.I.Op0Register, v);
                else if (size == 4) WriteReg(d.I.Op0Register, ReadReg(d.I.Op0Register)); // zero-extends anyway
                return;
            }
            case ClsSet:
                WriteOp0(ref d, 1, Cond(d.I.ConditionCode) ? 1UL : 0);
                return;
        }
        ExecSystemOrFloat(ref d);
    }

    private static int SrcSize(ref DecodedInsn d)
    {
        if (d.I.Op1Kind == OpKind.Register) return d.I.Op1Register.GetSize();
        return d.I.MemorySize.GetSize();
    }

    internal static ulong SignExtend(ulong v, int size) => size switch
    {
        1 => (ulong)(sbyte)(byte)v,
        2 => (ulong)(short)(ushort)v,
        4 => (ulong)(int)(uint)v,
        _ => v,
    };
}
