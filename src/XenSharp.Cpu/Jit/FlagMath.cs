using System.Runtime.CompilerServices;

namespace XenSharp.Cpu.Jit;

/// <summary>How a deferred ("pending") flag result is recomputed from the operands the compiled
/// code kept: the interpreter's flag definitions, one kind per instruction shape.</summary>
internal enum FlagKind
{
    Add, Adc, Sub, Sbb, Logic, Inc, Dec, Neg, Shl, Shr, Sar, Rol, Ror, Imul,
    /// <summary>SHLD/SHRD: b is the carry out | 2 when the count was not 0 (else nothing changes).</summary>
    Shd,
}

/// <summary>Flag arithmetic called from compiled blocks: materialising deferred flags and testing
/// conditions. Pure functions of their arguments.</summary>
internal static class FlagMath
{
    private const ulong CF = X86Vcpu.CF, PF = X86Vcpu.PF, AF = X86Vcpu.AF, ZF = X86Vcpu.ZF, SF = X86Vcpu.SF, OF = X86Vcpu.OF;

    /// <summary>The arithmetic flags an instruction of this kind defines; the rest of RFLAGS
    /// is kept. Shifts by a count of 0 define nothing (handled in <see cref="Apply"/>).</summary>
    public static ulong Defines(FlagKind k) => k switch
    {
        FlagKind.Inc or FlagKind.Dec => X86Vcpu.ArithFlags & ~CF,
        FlagKind.Rol or FlagKind.Ror => CF | OF,
        _ => X86Vcpu.ArithFlags,
    };

    /// <summary>RFLAGS after an instruction of kind <paramref name="k"/> with operands a, b and
    /// result res (all masked to <paramref name="size"/> bytes) ran with flags <paramref name="fl"/>.
    /// For shifts b is the masked count, for IMUL b is 1 when the product overflowed.</summary>
    public static ulong Apply(ulong fl, int k, int size, ulong a, ulong b, ulong res)
    {
        int top = size * 8 - 1;
        ulong f;
        switch ((FlagKind)k)
        {
            case FlagKind.Add:
            case FlagKind.Adc:
            {
                ulong c = k == (int)FlagKind.Adc ? fl & CF : 0;
                f = X86Vcpu.Szp(res, size) | ((a ^ b ^ res) & AF);
                if (c != 0 ? res <= a : res < a) f |= CF;
                if ((((a ^ res) & (b ^ res)) >> top & 1) != 0) f |= OF;
                break;
            }
            case FlagKind.Sub:
            case FlagKind.Sbb:
            {
                ulong c = k == (int)FlagKind.Sbb ? fl & CF : 0;
                f = X86Vcpu.Szp(res, size) | ((a ^ b ^ res) & AF);
                if (c != 0 ? a <= b : a < b) f |= CF;
                if ((((a ^ b) & (a ^ res)) >> top & 1) != 0) f |= OF;
                break;
            }
            case FlagKind.Logic:
                f = X86Vcpu.Szp(res, size);
                break;
            case FlagKind.Inc:
                f = X86Vcpu.Szp(res, size) | ((a ^ res) & AF) | (fl & CF);
                if (res == 1UL << top) f |= OF;
                break;
            case FlagKind.Dec:
                f = X86Vcpu.Szp(res, size) | ((a ^ res) & AF) | (fl & CF);
                if (a == 1UL << top) f |= OF;
                break;
            case FlagKind.Neg:
                f = X86Vcpu.Szp(res, size) | ((a ^ res) & AF);
                if (a != 0) f |= CF;
                if (a == 1UL << top) f |= OF;
                break;
            case FlagKind.Imul:
                f = X86Vcpu.Szp(res, size) | (b != 0 ? CF | OF : 0);
                break;
            case FlagKind.Shd:
                // As the interpreter: OF when the sign changed, AF cleared, for every count.
                if ((b & 2) == 0) return fl;
                f = X86Vcpu.Szp(res, size) | (b & CF);
                if ((((a ^ res) >> top) & 1) != 0) f |= OF;
                break;
            default:
                return Shift(fl, (FlagKind)k, size, a, (int)b, res);
        }
        return (fl & ~X86Vcpu.ArithFlags) | f;
    }

    /// <summary>CF alone of a pending result (<see cref="X86Vcpu.LazyFlags"/>'s kind | size &lt;&lt; 8 in
    /// <paramref name="k"/>): what <see cref="Apply"/> would give it, without the other flags for the commonest kinds.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Carry(int k, ulong a, ulong b, ulong res, ulong fl) => (FlagKind)(k & 0xFF) switch
    {
        FlagKind.Sub => a < b ? CF : 0,
        FlagKind.Add => res < a ? CF : 0,
        FlagKind.Logic => 0,
        FlagKind.Inc or FlagKind.Dec => fl & CF,
        _ => Apply(fl, k & 0xFF, k >> 8, a, b, res) & CF,
    };

    private static ulong Shift(ulong fl, FlagKind k, int size, ulong a, int count, ulong res)
    {
        if (count == 0) return fl;
        int bits = size * 8, top = bits - 1;
        ulong f;
        switch (k)
        {
            case FlagKind.Shl:
            {
                bool cf = count <= bits && ((a >> (bits - count)) & 1) != 0;
                f = X86Vcpu.Szp(res, size) | (cf ? CF : 0);
                if ((((res >> top) & 1) != 0) != cf) f |= OF;
                return (fl & ~X86Vcpu.ArithFlags) | f;
            }
            case FlagKind.Shr:
            {
                bool cf = count <= bits && ((a >> (count - 1)) & 1) != 0;
                f = X86Vcpu.Szp(res, size) | (cf ? CF : 0);
                if (((a >> top) & 1) != 0 && count == 1) f |= OF;
                return (fl & ~X86Vcpu.ArithFlags) | f;
            }
            case FlagKind.Sar:
            {
                long sa = (long)(a << (64 - bits)) >> (64 - bits);
                bool cf = ((sa >> Math.Min(count - 1, 63)) & 1) != 0;
                f = X86Vcpu.Szp(res, size) | (cf ? CF : 0);
                return (fl & ~X86Vcpu.ArithFlags) | f;
            }
            case FlagKind.Rol:
            {
                bool cf = (res & 1) != 0;
                f = (fl & ~(CF | OF)) | (cf ? CF : 0);
                if ((((res >> top) & 1) != 0) != cf) f |= OF;
                return f;
            }
            default: // Ror
            {
                bool msb = ((res >> top) & 1) != 0;
                f = (fl & ~(CF | OF)) | (msb ? CF : 0);
                if (msb != (((res >> (top - 1)) & 1) != 0)) f |= OF;
                return f;
            }
        }
    }

    /// <summary>The flags a condition code reads.</summary>
    public static ulong Reads(Iced.Intel.ConditionCode cc) => cc switch
    {
        Iced.Intel.ConditionCode.o or Iced.Intel.ConditionCode.no => OF,
        Iced.Intel.ConditionCode.b or Iced.Intel.ConditionCode.ae => CF,
        Iced.Intel.ConditionCode.e or Iced.Intel.ConditionCode.ne => ZF,
        Iced.Intel.ConditionCode.be or Iced.Intel.ConditionCode.a => CF | ZF,
        Iced.Intel.ConditionCode.s or Iced.Intel.ConditionCode.ns => SF,
        Iced.Intel.ConditionCode.p or Iced.Intel.ConditionCode.np => PF,
        Iced.Intel.ConditionCode.l or Iced.Intel.ConditionCode.ge => SF | OF,
        _ => ZF | SF | OF,
    };

    /// <summary>Condition <paramref name="cc"/> (Iced's numbering) on RFLAGS value f.</summary>
    public static bool Cond(ulong f, int cc)
    {
        switch ((Iced.Intel.ConditionCode)cc)
        {
            case Iced.Intel.ConditionCode.o: return (f & OF) != 0;
            case Iced.Intel.ConditionCode.no: return (f & OF) == 0;
            case Iced.Intel.ConditionCode.b: return (f & CF) != 0;
            case Iced.Intel.ConditionCode.ae: return (f & CF) == 0;
            case Iced.Intel.ConditionCode.e: return (f & ZF) != 0;
            case Iced.Intel.ConditionCode.ne: return (f & ZF) == 0;
            case Iced.Intel.ConditionCode.be: return (f & (CF | ZF)) != 0;
            case Iced.Intel.ConditionCode.a: return (f & (CF | ZF)) == 0;
            case Iced.Intel.ConditionCode.s: return (f & SF) != 0;
            case Iced.Intel.ConditionCode.ns: return (f & SF) == 0;
            case Iced.Intel.ConditionCode.p: return (f & PF) != 0;
            case Iced.Intel.ConditionCode.np: return (f & PF) == 0;
            case Iced.Intel.ConditionCode.l: return ((f & SF) != 0) != ((f & OF) != 0);
            case Iced.Intel.ConditionCode.ge: return ((f & SF) != 0) == ((f & OF) != 0);
            case Iced.Intel.ConditionCode.le: return (f & ZF) != 0 || (((f & SF) != 0) != ((f & OF) != 0));
            default: return (f & ZF) == 0 && (((f & SF) != 0) == ((f & OF) != 0));
        }
    }
}
