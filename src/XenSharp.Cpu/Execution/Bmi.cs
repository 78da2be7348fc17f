using System.Numerics;
using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>BMI1, BMI2, ADX and CRC32.</summary>
internal unsafe partial class X86Vcpu
{
    private void ExecBmi(ref DecodedInsn d)
    {
        int size = d.OpSize;
        int bits = size * 8;
        ulong m = Mask(size);
        var dst = d.I.Op0Register;
        switch (d.Op)
        {
            case Mnemonic.Andn:
            {
                ulong r = ~ReadReg(d.I.Op1Register) & ReadOp(ref d, 2, size) & m;
                WriteReg(dst, r);
                SetArith(Szp(r, size) & (ZF | SF));
                return;
            }
            case Mnemonic.Bextr:
            {
                ulong src = ReadOp(ref d, 1, size);
                ulong ctl = ReadReg(d.I.Op2Register);
                int start = (int)(ctl & 0xFF), len = (int)((ctl >> 8) & 0xFF);
                ulong r = start >= bits ? 0 : src >> start;
                if (len < 64) r &= (1UL << len) - 1;
                r &= m;
                WriteReg(dst, r);
                SetArith(r == 0 ? ZF : 0);
                return;
            }
            case Mnemonic.Blsi:
            {
                ulong src = ReadOp(ref d, 1, size);
                ulong r = (0 - src) & src & m;
                WriteReg(dst, r);
                SetArith((Szp(r, size) & (ZF | SF)) | (src != 0 ? CF : 0));
                return;
            }
            case Mnemonic.Blsmsk:
            {
                ulong src = ReadOp(ref d, 1, size);
                ulong r = (src ^ (src - 1)) & m;
                WriteReg(dst, r);
                SetArith((Szp(r, size) & SF) | (src == 0 ? CF : 0));
                return;
            }
            case Mnemonic.Blsr:
            {
                ulong src = ReadOp(ref d, 1, size);
                ulong r = src & (src - 1) & m;
                WriteReg(dst, r);
                SetArith((Szp(r, size) & (ZF | SF)) | (src == 0 ? CF : 0));
                return;
            }
            case Mnemonic.Bzhi:
            {
                ulong src = ReadOp(ref d, 1, size);
                int n = (int)(ReadReg(d.I.Op2Register) & 0xFF);
                ulong r = n >= bits ? src : src & ((1UL << n) - 1);
                r &= m;
                WriteReg(dst, r);
                SetArith((Szp(r, size) & (ZF | SF)) | (n >= bits ? CF : 0));
                return;
            }
            case Mnemonic.Mulx:
            {
                ulong a = size == 8 ? R[2] : (uint)R[2];
                ulong b = ReadOp(ref d, 2, size);
                ulong hi, lo;
                if (size == 8) hi = Math.BigMul(a, b, out lo);
                else { ulong p = a * b; lo = (uint)p; hi = p >> 32; }
                WriteReg(d.I.Op1Register, lo);
                WriteReg(dst, hi);
                return;
            }
            case Mnemonic.Pdep:
            {
                ulong src = ReadReg(d.I.Op1Register), mask = ReadOp(ref d, 2, size);
                ulong r = 0; int k = 0;
                for (int i = 0; i < bits; i++)
                    if (((mask >> i) & 1) != 0) { if (((src >> k) & 1) != 0) r |= 1UL << i; k++; }
                WriteReg(dst, r);
                return;
            }
            case Mnemonic.Pext:
            {
                ulong src = ReadReg(d.I.Op1Register), mask = ReadOp(ref d, 2, size);
                ulong r = 0; int k = 0;
                for (int i = 0; i < bits; i++)
                    if (((mask >> i) & 1) != 0) { if (((src >> i) & 1) != 0) r |= 1UL << k; k++; }
                WriteReg(dst, r);
                return;
            }
            case Mnemonic.Rorx:
            {
                ulong src = ReadOp(ref d, 1, size);
                int c = (int)(d.I.Immediate8 & (bits - 1));
                ulong r = c == 0 ? src : ((src >> c) | (src << (bits - c))) & m;
                WriteReg(dst, r);
                return;
            }
            case Mnemonic.Sarx:
            case Mnemonic.Shlx:
            case Mnemonic.Shrx:
            {
                ulong src = ReadOp(ref d, 1, size);
                int c = (int)(ReadReg(d.I.Op2Register) & (ulong)(bits - 1));
                ulong r = d.Op switch
                {
                    Mnemonic.Shlx => (src << c) & m,
                    Mnemonic.Shrx => src >> c,
                    _ => (ulong)((long)SignExtend(src, size) >> c) & m,
                };
                WriteReg(dst, r);
                return;
            }
            case Mnemonic.Adcx:
            case Mnemonic.Adox:
            {
                ulong flag = d.Op == Mnemonic.Adcx ? CF : OF;
                ulong a = ReadReg(dst), b = ReadOp(ref d, 1, size);
                ulong c = (Rflags & flag) != 0 ? 1UL : 0;
                ulong r = (a + b + c) & m;
                bool carry = c != 0 ? r <= a : r < a;
                WriteReg(dst, r);
                Rflags = (Rflags & ~flag) | (carry ? flag : 0);
                return;
            }
        }
        throw Unsupported(d.I);
    }

    private static readonly uint[] s_crc32c = BuildCrc32c();
    private static uint[] BuildCrc32c()
    {
        var t = new uint[256];
        for (uint i = 0; i < 256; i++)
        {
            uint c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            t[i] = c;
        }
        return t;
    }

    private void ExecCrc32(ref DecodedInsn d)
    {
        int srcSize = d.I.Op1Kind == OpKind.Register ? d.I.Op1Register.GetSize() : d.I.MemorySize.GetSize();
        ulong src = ReadOp(ref d, 1, srcSize);
        uint crc = (uint)ReadReg(d.I.Op0Register);
        for (int i = 0; i < srcSize; i++)
            crc = s_crc32c[(crc ^ (byte)(src >> (8 * i))) & 0xFF] ^ (crc >> 8);
        WriteReg(d.I.Op0Register, crc);
    }
}
