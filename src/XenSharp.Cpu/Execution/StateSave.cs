using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>FXSAVE/FXRSTOR, XSAVE/XRSTOR (x87 and SSE components), FNSAVE/FRSTOR, FNSTENV/FLDENV.</summary>
internal unsafe partial class X86Vcpu
{
    private const uint MxcsrMask = 0xFFFF;

    private bool TryStateSave(ref DecodedInsn d)
    {
        switch (d.Op)
        {
            case Mnemonic.Fxsave: case Mnemonic.Fxsave64:
            {
                FpuCheck();
                ulong lin = MemAddr(ref d);
                if ((lin & 15) != 0) throw GP();
                SaveLegacyRegion(lin, 3);
                return true;
            }
            case Mnemonic.Fxrstor: case Mnemonic.Fxrstor64:
            {
                FpuCheck();
                ulong lin = MemAddr(ref d);
                if ((lin & 15) != 0) throw GP();
                uint mx = (uint)ReadLin(lin + 24, 4);
                if ((mx & ~MxcsrMask) != 0) throw GP();
                LoadLegacyRegion(lin, 3, mx);
                return true;
            }
            case Mnemonic.Xsave: case Mnemonic.Xsave64: case Mnemonic.Xsaveopt: case Mnemonic.Xsaveopt64:
            {
                if ((Cr4 & 0x40000) == 0) throw UD();
                FpuCheck();
                ulong lin = MemAddr(ref d);
                if ((lin & 63) != 0) throw GP();
                ulong rfbm = Xcr0 & ((uint)R[0] | ((ulong)(uint)R[2] << 32));
                SaveLegacyRegion(lin, (int)(rfbm & 3));
                ulong bv = ReadLin(lin + 512, 8);
                WriteLin(lin + 512, 8, (bv & ~rfbm) | (rfbm & 3));
                return true;
            }
            case Mnemonic.Xrstor: case Mnemonic.Xrstor64:
            {
                if ((Cr4 & 0x40000) == 0) throw UD();
                FpuCheck();
                ulong lin = MemAddr(ref d);
                if ((lin & 63) != 0) throw GP();
                ulong rfbm = Xcr0 & ((uint)R[0] | ((ulong)(uint)R[2] << 32));
                ulong bv = ReadLin(lin + 512, 8);
                ulong comp = ReadLin(lin + 520, 8);
                if ((bv & ~Xcr0) != 0 || comp != 0) throw GP();
                uint mx = (uint)ReadLin(lin + 24, 4);
                if ((rfbm & 2) != 0 && (mx & ~MxcsrMask) != 0) throw GP();
                int load = (int)(rfbm & bv & 3);
                LoadLegacyRegion(lin, load, mx);
                if ((rfbm & 1) != 0 && (bv & 1) == 0) { Fcw = 0x37F; Fsw = 0; FpuTop = 0; FpuValid = 0; ClearFpuRegs(); }
                if ((rfbm & 2) != 0 && (bv & 2) == 0) { X = default; }
                if ((rfbm & 2) != 0) Mxcsr = mx;
                return true;
            }
            case Mnemonic.Fnsave:
            case Mnemonic.Fnstenv:
            {
                FpuCheck();
                ulong lin = MemAddr(ref d);
                bool wide = d.I.MemorySize is MemorySize.FpuEnv28 or MemorySize.FpuState108;
                int step = wide ? 4 : 2;
                WriteLin(lin, step, Fcw);
                WriteLin(lin + (ulong)step, step, StatusWord);
                WriteLin(lin + (ulong)(2 * step), step, FullTagWord());
                for (int i = 3; i < 7; i++) WriteLin(lin + (ulong)(i * step), step, 0);
                if (d.Op == Mnemonic.Fnsave)
                {
                    ulong p = lin + (ulong)(7 * step);
                    for (int i = 0; i < 8; i++)
                    {
                        GetRaw80((FpuTop + i) & 7, out ulong m, out ushort se);
                        WriteLin(p + (ulong)(i * 10), 8, m);
                        WriteLin(p + (ulong)(i * 10) + 8, 2, se);
                    }
                    Fcw = 0x37F; Fsw = 0; FpuTop = 0; FpuValid = 0;
                }
                else Fcw |= 0x3F;
                return true;
            }
            case Mnemonic.Frstor:
            case Mnemonic.Fldenv:
            {
                FpuCheck();
                ulong lin = MemAddr(ref d);
                bool wide = d.I.MemorySize is MemorySize.FpuEnv28 or MemorySize.FpuState108;
                int step = wide ? 4 : 2;
                Fcw = (ushort)ReadLin(lin, 2);
                ushort sw = (ushort)ReadLin(lin + (ulong)step, 2);
                ushort tw = (ushort)ReadLin(lin + (ulong)(2 * step), 2);
                Fsw = (ushort)(sw & ~0x3800);
                FpuTop = (sw >> 11) & 7;
                FpuValid = 0;
                for (int i = 0; i < 8; i++) if (((tw >> (2 * i)) & 3) != 3) FpuValid |= (byte)(1 << i);
                if (d.Op == Mnemonic.Frstor)
                {
                    ulong p = lin + (ulong)(7 * step);
                    for (int i = 0; i < 8; i++)
                        SetRaw80((FpuTop + i) & 7, ReadLin(p + (ulong)(i * 10), 8), (ushort)ReadLin(p + (ulong)(i * 10) + 8, 2));
                }
                return true;
            }
        }
        return false;
    }

    private ushort FullTagWord()
    {
        int tw = 0;
        for (int phys = 0; phys < 8; phys++)
        {
            int t;
            if ((FpuValid & (1 << phys)) == 0) t = 3;
            else
            {
                GetRaw80(phys, out ulong m, out ushort se);
                var c = new Float80(m, se).Class;
                t = c == FpClass.Zero ? 1 : c == FpClass.Normal ? 0 : 2;
            }
            tw |= t << (2 * phys);
        }
        return (ushort)tw;
    }

    /// <summary>The 512-byte legacy region; <paramref name="parts"/> bit 0 = x87, bit 1 = SSE.</summary>
    private void SaveLegacyRegion(ulong lin, int parts)
    {
        if ((lin & 0xFFF) + 512 > 4096) Translate(lin + 511, Access.Write, Cpl == 3);
        if ((parts & 1) != 0)
        {
            WriteLin(lin, 2, Fcw);
            WriteLin(lin + 2, 2, StatusWord);
            WriteLin(lin + 4, 1, FpuValid);
            WriteLin(lin + 5, 1, 0);
            WriteLin(lin + 6, 2, 0);
            WriteLin(lin + 8, 8, 0);
            WriteLin(lin + 16, 8, 0);
            for (int i = 0; i < 8; i++)
            {
                GetRaw80((FpuTop + i) & 7, out ulong m, out ushort se);
                WriteLin(lin + 32 + (ulong)(i * 16), 8, m);
                WriteLin(lin + 40 + (ulong)(i * 16), 8, se);
            }
        }
        if ((parts & 2) != 0)
        {
            WriteLin(lin + 24, 4, Mxcsr);
            WriteLin(lin + 28, 4, MxcsrMask);
            int n = Bitness == 64 ? 16 : 8;
            for (int i = 0; i < n; i++)
            {
                WriteLin(lin + 160 + (ulong)(i * 16), 8, X[i].Lo);
                WriteLin(lin + 168 + (ulong)(i * 16), 8, X[i].Hi);
            }
        }
    }

    private void LoadLegacyRegion(ulong lin, int parts, uint mxcsr)
    {
        if ((parts & 1) != 0)
        {
            Fcw = (ushort)ReadLin(lin, 2);
            ushort sw = (ushort)ReadLin(lin + 2, 2);
            Fsw = (ushort)(sw & ~0x3800);
            FpuTop = (sw >> 11) & 7;
            FpuValid = (byte)ReadLin(lin + 4, 1);
            for (int i = 0; i < 8; i++)
                SetRaw80((FpuTop + i) & 7, ReadLin(lin + 32 + (ulong)(i * 16), 8), (ushort)ReadLin(lin + 40 + (ulong)(i * 16), 2));
        }
        if ((parts & 2) != 0)
        {
            Mxcsr = mxcsr;
            int n = Bitness == 64 ? 16 : 8;
            for (int i = 0; i < n; i++)
            {
                X[i].Lo = ReadLin(lin + 160 + (ulong)(i * 16), 8);
                X[i].Hi = ReadLin(lin + 168 + (ulong)(i * 16), 8);
            }
        }
    }
}
