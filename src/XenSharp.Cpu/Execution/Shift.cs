using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>Shifts and rotates, including RCL/RCR and the double shifts SHLD/SHRD.</summary>
internal unsafe partial class X86Vcpu
{
    private void ExecShift(ref DecodedInsn d, Mnemonic op)
    {
        int size = d.OpSize;
        int bits = size * 8;
        ulong m = Mask(size);
        int count = d.I.OpCount > 1 ? (int)ReadOp(ref d, 1, 1) : 1;
        count &= size == 8 ? 63 : 31;
        if (count == 0)
        {
            // Operand still read (and faults) but nothing changes, flags included; a 32-bit
            // register destination is still written, which zeroes bits 63:32.
            ulong v0 = ReadOp0(ref d, size);
            if (size == 4 && d.I.Op0Kind == OpKind.Register) WriteReg(d.I.Op0Register, v0);
            return;
        }
        bool isReg = d.I.Op0Kind == OpKind.Register;
        ulong lin = isReg ? 0 : MemAddr(ref d);
        ulong a = isReg ? ReadReg(d.I.Op0Register) : ReadLin(lin, size);
        ulong res, f = Rflags & ArithFlags;
        int top = bits - 1;
        switch (op)
        {
            case Mnemonic.Shl:
            case Mnemonic.Sal:
            {
                res = count < 64 ? (a << count) & m : 0;
                bool cf = count <= bits && ((a >> (bits - count)) & 1) != 0;
                f = Szp(res, size) | (cf ? CF : 0);
                if ((((res >> top) & 1) != 0) != cf) f |= OF;
                break;
            }
            case Mnemonic.Shr:
            {
                res = count < 64 ? a >> count : 0;
                bool cf = count <= bits && ((a >> (count - 1)) & 1) != 0;
                f = Szp(res, size) | (cf ? CF : 0);
                if (((a >> top) & 1) != 0 && count == 1) f |= OF;
                break;
            }
            case Mnemonic.Sar:
            {
                long sa = (long)(a << (64 - bits)) >> (64 - bits);
                int c = Math.Min(count, 63);
                res = (ulong)(sa >> c) & m;
                bool cf = ((sa >> Math.Min(count - 1, 63)) & 1) != 0;
                f = Szp(res, size) | (cf ? CF : 0);
                break;
            }
            case Mnemonic.Rol:
            {
                int c = count % bits;
                res = c == 0 ? a : ((a << c) | (a >> (bits - c))) & m;
                bool cf = (res & 1) != 0;
                f = (f & ~(CF | OF)) | (cf ? CF : 0);
                if ((((res >> top) & 1) != 0) != cf) f |= OF;
                break;
            }
            case Mnemonic.Ror:
            {
                int c = count % bits;
                res = c == 0 ? a : ((a >> c) | (a << (bits - c))) & m;
                bool msb = ((res >> top) & 1) != 0;
                f = (f & ~(CF | OF)) | (msb ? CF : 0);
                if (msb != (((res >> (top - 1)) & 1) != 0)) f |= OF;
                break;
            }
            case Mnemonic.Rcl:
            {
                int c = count % (bits + 1);
                ulong cf = Rflags & CF;
                res = a;
                for (int i = 0; i < c; i++)
                {
                    ulong outBit = (res >> top) & 1;
                    res = ((res << 1) | cf) & m;
                    cf = outBit;
                }
                f = (f & ~(CF | OF)) | cf;
                if ((((res >> top) & 1) ^ cf) != 0) f |= OF;
                break;
            }
            case Mnemonic.Rcr:
            {
                int c = count % (bits + 1);
                ulong cf = Rflags & CF;
                res = a;
                ulong ofBit = ((a >> top) & 1) ^ cf;
                for (int i = 0; i < c; i++)
                {
                    ulong outBit = res & 1;
                    res = (res >> 1) | (cf << top);
                    cf = outBit;
                }
                f = (f & ~(CF | OF)) | cf;
                if (c != 0)
                {
                    // OF = XOR of the two most significant bits of the result.
                    ofBit = ((res >> top) ^ (res >> (top - 1))) & 1;
                }
                if (ofBit != 0) f |= OF;
                break;
            }
            default:
                throw Unsupported(d.I);
        }
        if (isReg) WriteReg(d.I.Op0Register, res); else WriteLin(lin, size, res);
        SetArith(f);
    }

    private void ExecShiftDouble(ref DecodedInsn d, bool left)
    {
        int size = d.OpSize;
        int bits = size * 8;
        ulong m = Mask(size);
        int count = (int)ReadOp(ref d, 2, 1) & (size == 8 ? 63 : 31);
        if (count == 0)
        {
            ulong v0 = ReadOp0(ref d, size);
            if (size == 4 && d.I.Op0Kind == OpKind.Register) WriteReg(d.I.Op0Register, v0);
            return;
        }
        bool isReg = d.I.Op0Kind == OpKind.Register;
        ulong lin = isReg ? 0 : MemAddr(ref d);
        ulong a = isReg ? ReadReg(d.I.Op0Register) : ReadLin(lin, size);
        ulong b = ReadReg(d.I.Op1Register);
        int top = bits - 1;
        ulong res;
        bool cf;
        if (size == 2 && count > 16)
        {
            // Architecturally undefined; behave like a 32-bit shift of b:a:b as hardware does.
            ulong wide = left ? (a << 32) | (b << 16) | a : (a << 32) | (b << 16) | b;
            wide &= 0xFFFF_FFFF_FFFF;
            if (left) { res = (wide << count >> 32) & 0xFFFF; cf = ((wide >> (48 - count)) & 1) != 0; }
            else { ulong w2 = (b << 32) | (a << 16) | a; res = (w2 >> count) & 0xFFFF; cf = ((w2 >> (count - 1)) & 1) != 0; }
        }
        else if (left)
        {
            res = ((a << count) | (count == bits ? b : b >> (bits - count))) & m;
            cf = ((a >> (bits - count)) & 1) != 0;
        }
        else
        {
            res = ((a >> count) | (count == bits ? b : b << (bits - count))) & m;
            cf = ((a >> (count - 1)) & 1) != 0;
        }
        ulong f = Szp(res, size) | (cf ? CF : 0);
        if ((((res ^ a) >> top) & 1) != 0) f |= OF;
        if (isReg) WriteReg(d.I.Op0Register, res); else WriteLin(lin, size, res);
        SetArith(f);
    }
}
