using System.Reflection;
using System.Reflection.Emit;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Iced.Intel;
using XenSharp.Cpu.Decoding;
using V = System.Runtime.Intrinsics.Vector128<byte>;
using Label = System.Reflection.Emit.Label;

namespace XenSharp.Cpu.Jit;

/// <summary>The lane operations compiled SSE code calls, each one host instruction once inlined.</summary>
internal static class SseLanes
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Pxor(V a, V b) => a ^ b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Por(V a, V b) => a | b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Pand(V a, V b) => a & b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Pandn(V a, V b) => Vector128.AndNot(b, a);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Pcmpeqb(V a, V b) => Vector128.Equals(a, b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Pcmpeqw(V a, V b) => Vector128.Equals(a.AsUInt16(), b.AsUInt16()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Pcmpeqd(V a, V b) => Vector128.Equals(a.AsUInt32(), b.AsUInt32()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Pcmpgtb(V a, V b) => Vector128.GreaterThan(a.AsSByte(), b.AsSByte()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Pcmpgtw(V a, V b) => Vector128.GreaterThan(a.AsInt16(), b.AsInt16()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Pcmpgtd(V a, V b) => Vector128.GreaterThan(a.AsInt32(), b.AsInt32()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Paddb(V a, V b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Paddw(V a, V b) => (a.AsUInt16() + b.AsUInt16()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Paddd(V a, V b) => (a.AsUInt32() + b.AsUInt32()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Paddq(V a, V b) => (a.AsUInt64() + b.AsUInt64()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Psubb(V a, V b) => a - b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Psubw(V a, V b) => (a.AsUInt16() - b.AsUInt16()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Psubd(V a, V b) => (a.AsUInt32() - b.AsUInt32()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Psubq(V a, V b) => (a.AsUInt64() - b.AsUInt64()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Pminub(V a, V b) => Vector128.Min(a, b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Pmaxub(V a, V b) => Vector128.Max(a, b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Punpcklbw(V a, V b) => Sse2.UnpackLow(a, b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Punpcklwd(V a, V b) => Sse2.UnpackLow(a.AsUInt16(), b.AsUInt16()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Punpckldq(V a, V b) => Sse2.UnpackLow(a.AsUInt32(), b.AsUInt32()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Punpcklqdq(V a, V b) => Sse2.UnpackLow(a.AsUInt64(), b.AsUInt64()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Punpckhbw(V a, V b) => Sse2.UnpackHigh(a, b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Punpckhwd(V a, V b) => Sse2.UnpackHigh(a.AsUInt16(), b.AsUInt16()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Punpckhdq(V a, V b) => Sse2.UnpackHigh(a.AsUInt32(), b.AsUInt32()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Punpckhqdq(V a, V b) => Sse2.UnpackHigh(a.AsUInt64(), b.AsUInt64()).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static uint Pmovmskb(V a) => a.ExtractMostSignificantBits();
    /// <summary>PSHUFB: a selector byte with its top bit set gives 0, any other picks the byte its low four bits
    /// number (Shuffle gives 0 for an index past 15, which keeping bit 7 and bits 0-3 makes exactly those).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Pshufb(V a, V b) => Vector128.Shuffle(a, b & Vector128.Create((byte)0x8F));
    // The shifts by an immediate, for a count below the lane width (the compiler settles larger ones).
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Psllw(V a, int n) => Vector128.ShiftLeft(a.AsUInt16(), n).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Pslld(V a, int n) => Vector128.ShiftLeft(a.AsUInt32(), n).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Psllq(V a, int n) => Vector128.ShiftLeft(a.AsUInt64(), n).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Psrlw(V a, int n) => Vector128.ShiftRightLogical(a.AsUInt16(), n).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Psrld(V a, int n) => Vector128.ShiftRightLogical(a.AsUInt32(), n).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Psrlq(V a, int n) => Vector128.ShiftRightLogical(a.AsUInt64(), n).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Psraw(V a, int n) => Vector128.ShiftRightArithmetic(a.AsInt16(), n).AsByte();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Psrad(V a, int n) => Vector128.ShiftRightArithmetic(a.AsInt32(), n).AsByte();
    /// <summary>PSLLDQ/PSRLDQ by 0-15 bytes: a shuffle whose indices out of 0-15 (wrapped below 0, or past 15) give 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Pslldq(V a, int n) => Vector128.Shuffle(a, V.Indices - Vector128.Create((byte)n));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Psrldq(V a, int n) => Vector128.Shuffle(a, V.Indices + Vector128.Create((byte)n));
    // The shifts by the low quadword of an XMM register or m128: a count past the lane width gives 0, or the sign.
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V PsllwXmm(V a, V c) { ulong n = Count(c); return n > 15 ? V.Zero : Psllw(a, (int)n); }
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V PslldXmm(V a, V c) { ulong n = Count(c); return n > 31 ? V.Zero : Pslld(a, (int)n); }
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V PsllqXmm(V a, V c) { ulong n = Count(c); return n > 63 ? V.Zero : Psllq(a, (int)n); }
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V PsrlwXmm(V a, V c) { ulong n = Count(c); return n > 15 ? V.Zero : Psrlw(a, (int)n); }
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V PsrldXmm(V a, V c) { ulong n = Count(c); return n > 31 ? V.Zero : Psrld(a, (int)n); }
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V PsrlqXmm(V a, V c) { ulong n = Count(c); return n > 63 ? V.Zero : Psrlq(a, (int)n); }
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V PsrawXmm(V a, V c) => Psraw(a, (int)Math.Min(Count(c), 15));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V PsradXmm(V a, V c) => Psrad(a, (int)Math.Min(Count(c), 31));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] private static ulong Count(V c) => c.AsUInt64().ToScalar();
    /// <summary>A scalar zero-extended to the register (MOVD, MOVQ, and MOVSD/MOVSS from memory).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static V Scalar(ulong v) => Vector128.CreateScalar(v).AsByte();
}

/// <summary>SSE moves, logic, integer compares, adds, unpacks, shifts, PSHUFD, PSHUFB and PMOVMSKB compiled inline:
/// what glibc's string and memory functions run, which every user program calls. The XMM registers stay in the vCPU
/// (the interpreter's own), so nothing is written back around them. CR0.EM/TS and CR4.OSFXSR are tested at each
/// instruction, and a #UD or #NM it would raise, a misaligned operand that must be aligned (#GP) and a TLB miss all
/// run the instruction in the interpreter, which raises the fault.</summary>
internal sealed partial class BlockTranslator
{
    private enum SseShape : byte
    {
        /// <summary>xmm = xmm/m128, or m128 = xmm.</summary>
        Move,
        /// <summary>xmm = op(xmm, xmm/m128).</summary>
        Lane,
        Pshufd,
        Pmovmskb,
        /// <summary>xmm = op(xmm, imm8): a count at or past the lane width (<see cref="SseForm.Width"/>) gives 0,
        /// or, for the arithmetic shifts, the shift by the width less one.</summary>
        ShiftImm,
        /// <summary>xmm = zero-extended r/m32, r/m64 or the low quadword of an xmm (MOVD, MOVQ).</summary>
        ToXmm,
        /// <summary>r/m32 or r/m64 = the low part of an xmm; to a register, MOVQ xmm/m64, xmm zero-extends.</summary>
        FromXmm,
        /// <summary>MOVSD/MOVSS: between registers the low part only; a load zero-extends; a store writes the low part.</summary>
        ScalarMove,
        /// <summary>ADDSD..DIVSD and the SS forms, through <see cref="X86Vcpu.JitScalarArith"/>.</summary>
        ScalarArith,
        /// <summary>COMISD/UCOMISD and the SS forms, through <see cref="X86Vcpu.JitComi"/>.</summary>
        Comi,
        /// <summary>CVTSI2SD/CVTSI2SS from r/m32 or r/m64, through <see cref="X86Vcpu.JitCvtsi2"/>.</summary>
        FromInt,
    }

    /// <summary>A form: its shape, its memory operand's size (for the scalar float forms, 8 for double and 4 for
    /// single), whether that operand must be 16-byte aligned, the lane operation, the float operation or (for COMI*)
    /// whether it signals on a quiet NaN, and for a shift by an immediate the lane width in units of the count (bits,
    /// or bytes for PSLLDQ/PSRLDQ) and whether it is arithmetic.</summary>
    private readonly record struct SseForm(SseShape Shape, int Size, bool Aligned, MethodInfo? Op = null, int Float = 0,
        int Width = 0, bool Arithmetic = false);

    private static readonly FieldInfo FXmm = Cpu.GetField(nameof(X86Vcpu.X), Inst)!;
    private static readonly FieldInfo FCr0 = Cpu.GetField(nameof(X86Vcpu.Cr0), Inst)!;
    private static readonly FieldInfo FCr4 = Cpu.GetField(nameof(X86Vcpu.Cr4), Inst)!;
    private static readonly MethodInfo MScalar = typeof(SseLanes).GetMethod(nameof(SseLanes.Scalar))!;
    private static readonly MethodInfo MPmovmskb = typeof(SseLanes).GetMethod(nameof(SseLanes.Pmovmskb))!;
    private static readonly MethodInfo MJitScalarArith = Cpu.GetMethod(nameof(X86Vcpu.JitScalarArith), Inst)!;
    private static readonly MethodInfo MJitComi = Cpu.GetMethod(nameof(X86Vcpu.JitComi), Inst)!;
    private static readonly MethodInfo MJitCvtsi2 = Cpu.GetMethod(nameof(X86Vcpu.JitCvtsi2), Inst)!;
    private static readonly MethodInfo MPshufd = typeof(Sse2).GetMethod(nameof(Sse2.Shuffle), [typeof(Vector128<uint>), typeof(byte)])!;

    /// <summary>The legacy-encoded XMM forms compiled inline. Only with SSE2 on the host: the unpacks and PSHUFD are
    /// its instructions, and without it every lane operation would be a software loop.</summary>
    private static readonly Dictionary<Code, SseForm> s_sse = BuildSseForms();

    private static Dictionary<Code, SseForm> BuildSseForms()
    {
        var t = new Dictionary<Code, SseForm>();
        if (!Sse2.IsSupported) return t;
        foreach (var c in new[] { Code.Movaps_xmm_xmmm128, Code.Movaps_xmmm128_xmm, Code.Movapd_xmm_xmmm128, Code.Movapd_xmmm128_xmm,
                     Code.Movdqa_xmm_xmmm128, Code.Movdqa_xmmm128_xmm })
            t[c] = new(SseShape.Move, 16, Aligned: true);
        foreach (var c in new[] { Code.Movups_xmm_xmmm128, Code.Movups_xmmm128_xmm, Code.Movupd_xmm_xmmm128, Code.Movupd_xmmm128_xmm,
                     Code.Movdqu_xmm_xmmm128, Code.Movdqu_xmmm128_xmm })
            t[c] = new(SseShape.Move, 16, Aligned: false);
        void Lane(string helper, params Code[] codes)
        {
            var m = typeof(SseLanes).GetMethod(helper)!;
            foreach (var c in codes) t[c] = new(SseShape.Lane, 16, Aligned: true, m);
        }
        // The float logic forms are the same bitwise operations and raise no SIMD exception.
        Lane(nameof(SseLanes.Pxor), Code.Pxor_xmm_xmmm128, Code.Xorps_xmm_xmmm128, Code.Xorpd_xmm_xmmm128);
        Lane(nameof(SseLanes.Por), Code.Por_xmm_xmmm128, Code.Orps_xmm_xmmm128, Code.Orpd_xmm_xmmm128);
        Lane(nameof(SseLanes.Pand), Code.Pand_xmm_xmmm128, Code.Andps_xmm_xmmm128, Code.Andpd_xmm_xmmm128);
        Lane(nameof(SseLanes.Pandn), Code.Pandn_xmm_xmmm128, Code.Andnps_xmm_xmmm128, Code.Andnpd_xmm_xmmm128);
        Lane(nameof(SseLanes.Pcmpeqb), Code.Pcmpeqb_xmm_xmmm128);
        Lane(nameof(SseLanes.Pcmpeqw), Code.Pcmpeqw_xmm_xmmm128);
        Lane(nameof(SseLanes.Pcmpeqd), Code.Pcmpeqd_xmm_xmmm128);
        Lane(nameof(SseLanes.Pcmpgtb), Code.Pcmpgtb_xmm_xmmm128);
        Lane(nameof(SseLanes.Pcmpgtw), Code.Pcmpgtw_xmm_xmmm128);
        Lane(nameof(SseLanes.Pcmpgtd), Code.Pcmpgtd_xmm_xmmm128);
        Lane(nameof(SseLanes.Paddb), Code.Paddb_xmm_xmmm128);
        Lane(nameof(SseLanes.Paddw), Code.Paddw_xmm_xmmm128);
        Lane(nameof(SseLanes.Paddd), Code.Paddd_xmm_xmmm128);
        Lane(nameof(SseLanes.Paddq), Code.Paddq_xmm_xmmm128);
        Lane(nameof(SseLanes.Psubb), Code.Psubb_xmm_xmmm128);
        Lane(nameof(SseLanes.Psubw), Code.Psubw_xmm_xmmm128);
        Lane(nameof(SseLanes.Psubd), Code.Psubd_xmm_xmmm128);
        Lane(nameof(SseLanes.Psubq), Code.Psubq_xmm_xmmm128);
        Lane(nameof(SseLanes.Pminub), Code.Pminub_xmm_xmmm128);
        Lane(nameof(SseLanes.Pmaxub), Code.Pmaxub_xmm_xmmm128);
        Lane(nameof(SseLanes.Punpcklbw), Code.Punpcklbw_xmm_xmmm128);
        Lane(nameof(SseLanes.Punpcklwd), Code.Punpcklwd_xmm_xmmm128);
        Lane(nameof(SseLanes.Punpckldq), Code.Punpckldq_xmm_xmmm128);
        Lane(nameof(SseLanes.Punpcklqdq), Code.Punpcklqdq_xmm_xmmm128);
        Lane(nameof(SseLanes.Punpckhbw), Code.Punpckhbw_xmm_xmmm128);
        Lane(nameof(SseLanes.Punpckhwd), Code.Punpckhwd_xmm_xmmm128);
        Lane(nameof(SseLanes.Punpckhdq), Code.Punpckhdq_xmm_xmmm128);
        Lane(nameof(SseLanes.Punpckhqdq), Code.Punpckhqdq_xmm_xmmm128);
        Lane(nameof(SseLanes.Pshufb), Code.Pshufb_xmm_xmmm128);
        Lane(nameof(SseLanes.PsllwXmm), Code.Psllw_xmm_xmmm128);
        Lane(nameof(SseLanes.PslldXmm), Code.Pslld_xmm_xmmm128);
        Lane(nameof(SseLanes.PsllqXmm), Code.Psllq_xmm_xmmm128);
        Lane(nameof(SseLanes.PsrlwXmm), Code.Psrlw_xmm_xmmm128);
        Lane(nameof(SseLanes.PsrldXmm), Code.Psrld_xmm_xmmm128);
        Lane(nameof(SseLanes.PsrlqXmm), Code.Psrlq_xmm_xmmm128);
        Lane(nameof(SseLanes.PsrawXmm), Code.Psraw_xmm_xmmm128);
        Lane(nameof(SseLanes.PsradXmm), Code.Psrad_xmm_xmmm128);
        void Shift(string helper, Code c, int width, bool arithmetic = false) =>
            t[c] = new(SseShape.ShiftImm, 0, false, typeof(SseLanes).GetMethod(helper)!, Width: width, Arithmetic: arithmetic);
        Shift(nameof(SseLanes.Psllw), Code.Psllw_xmm_imm8, 16);
        Shift(nameof(SseLanes.Pslld), Code.Pslld_xmm_imm8, 32);
        Shift(nameof(SseLanes.Psllq), Code.Psllq_xmm_imm8, 64);
        Shift(nameof(SseLanes.Psrlw), Code.Psrlw_xmm_imm8, 16);
        Shift(nameof(SseLanes.Psrld), Code.Psrld_xmm_imm8, 32);
        Shift(nameof(SseLanes.Psrlq), Code.Psrlq_xmm_imm8, 64);
        Shift(nameof(SseLanes.Psraw), Code.Psraw_xmm_imm8, 16, arithmetic: true);
        Shift(nameof(SseLanes.Psrad), Code.Psrad_xmm_imm8, 32, arithmetic: true);
        Shift(nameof(SseLanes.Pslldq), Code.Pslldq_xmm_imm8, 16);
        Shift(nameof(SseLanes.Psrldq), Code.Psrldq_xmm_imm8, 16);
        t[Code.Pshufd_xmm_xmmm128_imm8] = new(SseShape.Pshufd, 16, Aligned: true);
        t[Code.Pmovmskb_r32_xmm] = new(SseShape.Pmovmskb, 0, false);
        t[Code.Pmovmskb_r64_xmm] = new(SseShape.Pmovmskb, 0, false);
        t[Code.Movd_xmm_rm32] = new(SseShape.ToXmm, 4, false);
        t[Code.Movq_xmm_rm64] = new(SseShape.ToXmm, 8, false);
        t[Code.Movq_xmm_xmmm64] = new(SseShape.ToXmm, 8, false);
        t[Code.Movd_rm32_xmm] = new(SseShape.FromXmm, 4, false);
        t[Code.Movq_rm64_xmm] = new(SseShape.FromXmm, 8, false);
        t[Code.Movq_xmmm64_xmm] = new(SseShape.FromXmm, 8, false);
        t[Code.Movsd_xmm_xmmm64] = new(SseShape.ScalarMove, 8, false);
        t[Code.Movsd_xmmm64_xmm] = new(SseShape.ScalarMove, 8, false);
        t[Code.Movss_xmm_xmmm32] = new(SseShape.ScalarMove, 4, false);
        t[Code.Movss_xmmm32_xmm] = new(SseShape.ScalarMove, 4, false);
        // Scalar float arithmetic, compares and conversions, which a helper runs when no exception but a masked
        // precision one can arise (the interpreter's own host path).
        foreach (var (c, op) in new[] { (Code.Addsd_xmm_xmmm64, SoftFloat.Op.Add), (Code.Subsd_xmm_xmmm64, SoftFloat.Op.Sub),
                     (Code.Mulsd_xmm_xmmm64, SoftFloat.Op.Mul), (Code.Divsd_xmm_xmmm64, SoftFloat.Op.Div) })
            t[c] = new(SseShape.ScalarArith, 8, false, Float: (int)op);
        foreach (var (c, op) in new[] { (Code.Addss_xmm_xmmm32, SoftFloat.Op.Add), (Code.Subss_xmm_xmmm32, SoftFloat.Op.Sub),
                     (Code.Mulss_xmm_xmmm32, SoftFloat.Op.Mul), (Code.Divss_xmm_xmmm32, SoftFloat.Op.Div) })
            t[c] = new(SseShape.ScalarArith, 4, false, Float: (int)op);
        t[Code.Comisd_xmm_xmmm64] = new(SseShape.Comi, 8, false, Float: 1);
        t[Code.Ucomisd_xmm_xmmm64] = new(SseShape.Comi, 8, false, Float: 0);
        t[Code.Comiss_xmm_xmmm32] = new(SseShape.Comi, 4, false, Float: 1);
        t[Code.Ucomiss_xmm_xmmm32] = new(SseShape.Comi, 4, false, Float: 0);
        t[Code.Cvtsi2sd_xmm_rm32] = new(SseShape.FromInt, 8, false);
        t[Code.Cvtsi2sd_xmm_rm64] = new(SseShape.FromInt, 8, false);
        t[Code.Cvtsi2ss_xmm_rm32] = new(SseShape.FromInt, 4, false);
        t[Code.Cvtsi2ss_xmm_rm64] = new(SseShape.FromInt, 4, false);
        return t;
    }

    /// <summary>Whether instruction <paramref name="d"/> is an SSE form compiled inline; every one is a fault point.</summary>
    private bool SupportedSse(ref DecodedInsn d, bool memOk)
    {
        if (!s_sse.ContainsKey(d.I.Code)) return false;
        for (int k = 0; k < d.I.OpCount; k++)
            if (d.I.GetOpKind(k) == OpKind.Memory) return memOk;
        return true;
    }

    /// <summary>Pushes a managed pointer to XMM register <paramref name="r"/> in the vCPU.</summary>
    private void XmmAddress(Register r)
    {
        LdCpu(); _il.Emit(OpCodes.Ldflda, FXmm);
        int offset = (r - Register.XMM0) * 16;
        if (offset != 0) { LdcI4(offset); _il.Emit(OpCodes.Add); }
    }

    /// <summary>Branches to <paramref name="slow"/> when SSE would fault: CR0.EM or CR0.TS set, or CR4.OSFXSR clear.</summary>
    private void EmitSseGuard(Label slow)
    {
        LdCpu(); _il.Emit(OpCodes.Ldfld, FCr0); LdcU8(0xC); _il.Emit(OpCodes.And); _il.Emit(OpCodes.Brtrue, slow);
        LdCpu(); _il.Emit(OpCodes.Ldfld, FCr4); LdcU8(0x200); _il.Emit(OpCodes.And); _il.Emit(OpCodes.Brfalse, slow);
    }

    /// <summary>For a memory operand of <paramref name="size"/> bytes: its linear address into _lin, then a branch to
    /// <paramref name="slow"/> on misalignment (when it must be aligned) or a TLB miss; _entry holds the entry.</summary>
    private void EmitSseProbe(ref DecodedInsn d, int size, bool aligned, bool write, Label slow)
    {
        EmitLinear(ref d);
        if (aligned)
        {
            _il.Emit(OpCodes.Ldloc, _lin); LdcU8(15); _il.Emit(OpCodes.And); _il.Emit(OpCodes.Brtrue, slow);
        }
        EmitTlbProbe(size, write ? TlbWriteTagOffset : 0, slow);
    }

    private void EmitSse(ref DecodedInsn d, int i)
    {
        var form = s_sse[d.I.Code];
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        bool mem0 = d.I.Op0Kind == OpKind.Memory, mem1 = d.I.OpCount > 1 && d.I.Op1Kind == OpKind.Memory;
        // A general register the instruction writes, which the interpreter leaves in the vCPU.
        int gprOut = d.I.Op0Kind == OpKind.Register && d.I.Op0Register.IsGPR() ? GprNum(d.I.Op0Register) : -1;
        int dirtyBefore = _dirty;
        int at = i;
        bool flagsOut = form.Shape == SseShape.Comi;
        EmitCold(slow, () =>
        {
            SyncForSlowPath();
            EmitInterpret(ref _insns[at], at);
            if (gprOut >= 0) LoadGprFromCpu(gprOut);
            if (flagsOut) { LdCpu(); _il.Emit(OpCodes.Ldfld, FRflags); _il.Emit(OpCodes.Stloc, _fl); }
            _il.Emit(OpCodes.Br, done);
        });
        EmitSseGuard(slow);
        var vec = typeof(V);
        switch (form.Shape)
        {
            case SseShape.Move when mem0:
                EmitSseProbe(ref d, 16, form.Aligned, write: true, slow);
                EmitHostAddress();
                XmmAddress(d.I.Op1Register); _il.Emit(OpCodes.Ldobj, vec);
                _il.Emit(OpCodes.Unaligned, (byte)1); _il.Emit(OpCodes.Stobj, vec);
                break;
            case SseShape.Move:
            case SseShape.Lane:
            case SseShape.Pshufd:
                if (mem1) EmitSseProbe(ref d, 16, form.Aligned, write: false, slow);
                XmmAddress(d.I.Op0Register);
                if (form.Shape == SseShape.Lane) { XmmAddress(d.I.Op0Register); _il.Emit(OpCodes.Ldobj, vec); }
                if (mem1) { EmitHostAddress(); _il.Emit(OpCodes.Unaligned, (byte)1); }
                else XmmAddress(d.I.Op1Register);
                _il.Emit(OpCodes.Ldobj, vec);
                if (form.Shape == SseShape.Lane) _il.Emit(OpCodes.Call, form.Op!);
                else if (form.Shape == SseShape.Pshufd) { LdcI4((byte)d.I.Immediate8); _il.Emit(OpCodes.Call, MPshufd); }
                _il.Emit(OpCodes.Stobj, vec);
                break;
            case SseShape.ShiftImm:
            {
                int n = d.I.Immediate8;
                XmmAddress(d.I.Op0Register);
                if (n >= form.Width && !form.Arithmetic) { _il.Emit(OpCodes.Initobj, vec); break; }
                XmmAddress(d.I.Op0Register); _il.Emit(OpCodes.Ldobj, vec);
                LdcI4(Math.Min(n, form.Width - 1));
                _il.Emit(OpCodes.Call, form.Op!);
                _il.Emit(OpCodes.Stobj, vec);
                break;
            }
            case SseShape.Pmovmskb:
                XmmAddress(d.I.Op1Register); _il.Emit(OpCodes.Ldobj, vec);
                _il.Emit(OpCodes.Call, MPmovmskb); _il.Emit(OpCodes.Conv_U8); _il.Emit(OpCodes.Stloc, _ta);
                WriteGpr(d.I.Op0Register, _ta);
                break;
            case SseShape.ToXmm:
                if (mem1) EmitSseProbe(ref d, form.Size, false, write: false, slow);
                XmmAddress(d.I.Op0Register);
                if (mem1) { EmitHostAddress(); LoadHost(form.Size); }
                else if (d.I.Op1Register.IsXMM()) { XmmAddress(d.I.Op1Register); _il.Emit(OpCodes.Ldind_I8); }
                else ReadGpr(d.I.Op1Register);
                _il.Emit(OpCodes.Call, MScalar);
                _il.Emit(OpCodes.Stobj, vec);
                break;
            case SseShape.FromXmm when mem0:
                EmitSseProbe(ref d, form.Size, false, write: true, slow);
                EmitHostAddress();
                XmmAddress(d.I.Op1Register); _il.Emit(OpCodes.Ldind_I8);
                StoreHost(form.Size);
                break;
            case SseShape.FromXmm when gprOut >= 0:
                XmmAddress(d.I.Op1Register); _il.Emit(OpCodes.Ldind_I8);
                if (form.Size == 4) Trunc(4);
                _il.Emit(OpCodes.Stloc, _ta);
                WriteGpr(d.I.Op0Register, _ta);
                break;
            case SseShape.FromXmm:
                // MOVQ xmm, xmm (66 0F D6): the upper quadword is cleared.
                XmmAddress(d.I.Op0Register);
                XmmAddress(d.I.Op1Register); _il.Emit(OpCodes.Ldind_I8);
                _il.Emit(OpCodes.Call, MScalar);
                _il.Emit(OpCodes.Stobj, vec);
                break;
            case SseShape.ScalarMove when mem0:
                EmitSseProbe(ref d, form.Size, false, write: true, slow);
                EmitHostAddress();
                XmmAddress(d.I.Op1Register); LoadHost(form.Size);
                StoreHost(form.Size);
                break;
            case SseShape.ScalarMove when mem1:
                EmitSseProbe(ref d, form.Size, false, write: false, slow);
                XmmAddress(d.I.Op0Register);
                EmitHostAddress(); LoadHost(form.Size);
                _il.Emit(OpCodes.Call, MScalar);
                _il.Emit(OpCodes.Stobj, vec);
                break;
            case SseShape.ScalarArith:
            case SseShape.Comi:
            {
                if (mem1) EmitSseProbe(ref d, form.Size, false, write: false, slow);
                LdCpu();
                if (form.Shape == SseShape.ScalarArith) LdcI4(form.Float);
                LdcI4(d.I.Op0Register - Register.XMM0);
                if (mem1) EmitHostAddress(); else XmmAddress(d.I.Op1Register);
                LoadHost(form.Size);
                LdcI4(form.Size == 8 ? 1 : 0);
                if (form.Shape == SseShape.ScalarArith)
                {
                    _il.Emit(OpCodes.Call, MJitScalarArith);
                    _il.Emit(OpCodes.Brfalse, slow);
                    break;
                }
                LdcI4(form.Float);
                _il.Emit(OpCodes.Call, MJitComi);
                _il.Emit(OpCodes.Stloc, _ta);
                _il.Emit(OpCodes.Ldloc, _ta); LdcU8(0); _il.Emit(OpCodes.Blt, slow);
                // Every arithmetic flag is written: no pending result matters any more.
                _pending.Clear();
                _il.Emit(OpCodes.Ldloc, _fl); LdcU8(~X86Vcpu.ArithFlags); _il.Emit(OpCodes.And);
                _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Or); _il.Emit(OpCodes.Stloc, _fl);
                _flDirty = true;
                break;
            }
            case SseShape.FromInt:
            {
                int src = mem1 ? d.I.MemorySize.GetSize() : d.I.Op1Register.GetSize();
                if (mem1) EmitSseProbe(ref d, src, false, write: false, slow);
                LdCpu();
                LdcI4(d.I.Op0Register - Register.XMM0);
                if (mem1) { EmitHostAddress(); LoadHost(src); } else ReadGpr(d.I.Op1Register);
                if (src == 4) SignExt(4);
                LdcI4(form.Size == 8 ? 1 : 0);
                _il.Emit(OpCodes.Call, MJitCvtsi2);
                _il.Emit(OpCodes.Brfalse, slow);
                break;
            }
            case SseShape.ScalarMove:
                // Between registers only the low element moves.
                XmmAddress(d.I.Op0Register);
                XmmAddress(d.I.Op1Register); LoadHost(form.Size);
                StoreHost(form.Size);
                break;
        }
        _il.MarkLabel(done);
        // Both ways the written register is newer than the vCPU's (on the slow one, equal to it).
        if (gprOut >= 0) _dirty = dirtyBefore | 1 << gprOut;
        if (mem0) EmitStopCheck(i);
    }

    /// <summary>Replaces the address on the stack with the zero-extended 4 or 8 bytes there.</summary>
    private void LoadHost(int size)
    {
        _il.Emit(OpCodes.Unaligned, (byte)1);
        if (size == 4) { _il.Emit(OpCodes.Ldind_U4); _il.Emit(OpCodes.Conv_U8); }
        else _il.Emit(OpCodes.Ldind_I8);
    }

    /// <summary>Stores the value on the stack (4 or 8 bytes of it) at the address beneath it.</summary>
    private void StoreHost(int size)
    {
        if (size == 4) _il.Emit(OpCodes.Conv_U4);
        _il.Emit(OpCodes.Unaligned, (byte)1);
        _il.Emit(size == 4 ? OpCodes.Stind_I4 : OpCodes.Stind_I8);
    }
}
