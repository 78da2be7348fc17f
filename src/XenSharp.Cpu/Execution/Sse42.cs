using System.Numerics;
using System.Runtime.Intrinsics;
using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>SSE4.2 string and text instructions: PCMPESTRI, PCMPESTRM, PCMPISTRI, PCMPISTRM.</summary>
internal unsafe partial class X86Vcpu
{
    private bool TrySse42(ref DecodedInsn d)
    {
        bool explicitLength, index;
        switch (d.Op)
        {
            case Mnemonic.Pcmpestri: case Mnemonic.Pcmpestri64: explicitLength = true; index = true; break;
            case Mnemonic.Pcmpestrm: case Mnemonic.Pcmpestrm64: explicitLength = true; index = false; break;
            case Mnemonic.Pcmpistri: explicitLength = false; index = true; break;
            case Mnemonic.Pcmpistrm: explicitLength = false; index = false; break;
            default: return false;
        }
        SseCheck();
        int imm = d.I.Immediate8;
        bool words = (imm & 1) != 0, signed = (imm & 2) != 0;
        int n = words ? 8 : 16;
        var a = Dst(ref d);
        var b = VecOp(ref d, 1);
        Span<int> x = stackalloc int[16], y = stackalloc int[16];
        for (int i = 0; i < n; i++)
        {
            x[i] = Element(a, i, words, signed);
            y[i] = Element(b, i, words, signed);
        }
        int la, lb;
        if (explicitLength)
        {
            bool wide = d.Op is Mnemonic.Pcmpestri64 or Mnemonic.Pcmpestrm64;
            la = ExplicitLength(R[0], wide, n);
            lb = ExplicitLength(R[2], wide, n);
        }
        else
        {
            la = ImplicitLength(x, n);
            lb = ImplicitLength(y, n);
        }
        uint res = StringCompare(x, y, la, lb, n, imm);
        if (index)
        {
            uint idx = res == 0 ? (uint)n : (imm & 0x40) != 0 ? (uint)(31 - BitOperations.LeadingZeroCount(res)) : (uint)BitOperations.TrailingZeroCount(res);
            WriteReg(Register.ECX, idx);
        }
        else
        {
            Vector128<byte> m;
            if ((imm & 0x40) == 0) m = Vector128.CreateScalar(res).AsByte();
            else if (words)
            {
                Span<ushort> w = stackalloc ushort[8];
                for (int i = 0; i < 8; i++) w[i] = ((res >> i) & 1) != 0 ? ushort.MaxValue : (ushort)0;
                m = Vector128.Create((ReadOnlySpan<ushort>)w).AsByte();
            }
            else
            {
                Span<byte> bs = stackalloc byte[16];
                for (int i = 0; i < 16; i++) bs[i] = ((res >> i) & 1) != 0 ? byte.MaxValue : (byte)0;
                m = Vector128.Create((ReadOnlySpan<byte>)bs);
            }
            XReg(Register.XMM0) = m;
        }
        SetArith((res != 0 ? CF : 0) | (lb < n ? ZF : 0) | (la < n ? SF : 0) | ((res & 1) != 0 ? OF : 0));
        return true;
    }

    private static int Element(Vector128<byte> v, int i, bool words, bool signed) => words
        ? (signed ? v.AsInt16().GetElement(i) : v.AsUInt16().GetElement(i))
        : (signed ? v.AsSByte().GetElement(i) : v.GetElement(i));

    /// <summary>The absolute value of RAX/RDX (or EAX/EDX), saturated to the element count.</summary>
    private static int ExplicitLength(ulong reg, bool wide, int n)
    {
        long v = wide ? (long)reg : (int)reg;
        if (v == long.MinValue) return n;
        v = Math.Abs(v);
        return v > n ? n : (int)v;
    }

    private static int ImplicitLength(Span<int> e, int n)
    {
        for (int i = 0; i < n; i++) if (e[i] == 0) return i;
        return n;
    }

    /// <summary>The aggregated and polarity-adjusted result (IntRes2) of comparing the first
    /// operand's <paramref name="la"/> elements with the second's <paramref name="lb"/>.</summary>
    private static uint StringCompare(Span<int> x, Span<int> y, int la, int lb, int n, int imm)
    {
        int agg = (imm >> 2) & 3;
        uint res = 0;
        switch (agg)
        {
            case 0: // equal any: y[j] is one of x[0..la)
                for (int j = 0; j < lb; j++)
                    for (int i = 0; i < la; i++)
                        if (x[i] == y[j]) { res |= 1u << j; break; }
                break;
            case 1: // ranges: x holds (low, high) pairs
                for (int j = 0; j < lb; j++)
                    for (int i = 0; i + 1 < la; i += 2)
                        if (x[i] <= y[j] && y[j] <= x[i + 1]) { res |= 1u << j; break; }
                break;
            case 2: // equal each: both invalid compares true, one invalid false
                for (int i = 0; i < n; i++)
                {
                    bool va = i < la, vb = i < lb;
                    if (va && vb ? x[i] == y[i] : !va && !vb) res |= 1u << i;
                }
                break;
            default: // equal ordered: x[0..la) occurs in y at j (an invalid x element matches anything)
                for (int j = 0; j < n; j++)
                {
                    bool match = true;
                    for (int i = 0; i < n - j && match; i++)
                    {
                        int k = j + i;
                        bool va = i < la, vb = k < lb;
                        if (!va) break;           // the rest of the needle matches anything
                        if (!vb) match = false;   // needle left, haystack ended
                        else if (x[i] != y[k]) match = false;
                    }
                    if (match) res |= 1u << j;
                }
                break;
        }
        uint all = n == 16 ? 0xFFFFu : 0xFFu;
        switch ((imm >> 4) & 3)
        {
            case 1: res = ~res & all; break;
            case 3: res ^= (uint)((1 << lb) - 1); break;
        }
        return res;
    }
}
