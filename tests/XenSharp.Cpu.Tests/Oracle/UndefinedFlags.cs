using Iced.Intel;

namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>
/// The RFLAGS bits the Intel SDM (Vol. 2, each instruction's "Flags Affected") leaves undefined,
/// by mnemonic. Those bits are not compared, and a generated sequence never lets a later
/// instruction read them (the generator drops such an instruction). Kept as data so it can be
/// read and checked against the manual; README.md in this folder lists it too.
/// </summary>
internal static class UndefinedFlags
{
    public const ulong CF = 1, PF = 4, AF = 0x10, ZF = 0x40, SF = 0x80, OF = 0x800;
    const ulong All = CF | PF | AF | ZF | SF | OF;

    static readonly Dictionary<Mnemonic, ulong> table = new()
    {
        // Multiply: CF and OF say whether the upper half is significant; the rest is undefined.
        [Mnemonic.Mul] = SF | ZF | AF | PF,
        [Mnemonic.Imul] = SF | ZF | AF | PF,
        // Divide: all six undefined.
        [Mnemonic.Div] = All,
        [Mnemonic.Idiv] = All,
        // Logic: AF undefined.
        [Mnemonic.And] = AF, [Mnemonic.Or] = AF, [Mnemonic.Xor] = AF, [Mnemonic.Test] = AF,
        // Shifts: AF undefined for a non-zero count; OF undefined unless the count is 1 (see Shift below).
        [Mnemonic.Shl] = AF, [Mnemonic.Sal] = AF, [Mnemonic.Shr] = AF, [Mnemonic.Sar] = AF,
        [Mnemonic.Shld] = AF, [Mnemonic.Shrd] = AF,
        // Rotates: OF undefined unless the count is 1.
        [Mnemonic.Rol] = 0, [Mnemonic.Ror] = 0, [Mnemonic.Rcl] = 0, [Mnemonic.Rcr] = 0,
        // Bit tests and scans.
        [Mnemonic.Bt] = OF | SF | AF | PF, [Mnemonic.Bts] = OF | SF | AF | PF,
        [Mnemonic.Btr] = OF | SF | AF | PF, [Mnemonic.Btc] = OF | SF | AF | PF,
        [Mnemonic.Bsf] = CF | OF | SF | AF | PF, [Mnemonic.Bsr] = CF | OF | SF | AF | PF,
        [Mnemonic.Lzcnt] = OF | SF | PF | AF, [Mnemonic.Tzcnt] = OF | SF | PF | AF,
        // BMI1/BMI2.
        [Mnemonic.Andn] = AF | PF, [Mnemonic.Bextr] = AF | SF | PF,
        [Mnemonic.Blsi] = AF | PF, [Mnemonic.Blsmsk] = AF | PF, [Mnemonic.Blsr] = AF | PF,
        [Mnemonic.Bzhi] = AF | PF,
    };

    static bool IsShiftOrRotate(Mnemonic m) => m is Mnemonic.Shl or Mnemonic.Sal or Mnemonic.Shr or Mnemonic.Sar
        or Mnemonic.Rol or Mnemonic.Ror or Mnemonic.Rcl or Mnemonic.Rcr or Mnemonic.Shld or Mnemonic.Shrd;

    /// <summary>Flags left undefined by <paramref name="i"/> (count-dependent for shifts).</summary>
    public static ulong Of(in Instruction i)
    {
        var m = i.Mnemonic;
        ulong u = table.TryGetValue(m, out var v) ? v : 0;
        if (IsShiftOrRotate(m))
        {
            // The "by 1" forms define OF; an immediate count of 1 does too. A CL count may be anything.
            bool countIsOne = i.Op1Kind == OpKind.Immediate8 && m is not (Mnemonic.Shld or Mnemonic.Shrd) && i.Immediate8 == 1
                || (m is Mnemonic.Shld or Mnemonic.Shrd) && i.Op2Kind == OpKind.Immediate8 && i.Immediate8 == 1;
            if (!countIsOne) u |= OF;
        }
        return u;
    }

    /// <summary>Flags the instruction writes (defines, clears, sets or leaves undefined).</summary>
    public static ulong Written(in Instruction i) => ToBits(i.RflagsModified);

    public static ulong Read(in Instruction i) => ToBits(i.RflagsRead);

    static ulong ToBits(RflagsBits r)
    {
        ulong b = 0;
        if ((r & RflagsBits.CF) != 0) b |= CF;
        if ((r & RflagsBits.PF) != 0) b |= PF;
        if ((r & RflagsBits.AF) != 0) b |= AF;
        if ((r & RflagsBits.ZF) != 0) b |= ZF;
        if ((r & RflagsBits.SF) != 0) b |= SF;
        if ((r & RflagsBits.OF) != 0) b |= OF;
        if ((r & RflagsBits.DF) != 0) b |= 0x400;
        return b;
    }
}
