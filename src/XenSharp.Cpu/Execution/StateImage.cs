using System.Buffers.Binary;

namespace XenSharp.Cpu;

/// <summary>The x87/SSE state and XCR0 read and written from outside the guest (save/restore), in FXSAVE's layout.</summary>
internal unsafe partial class X86Vcpu
{
    public bool TryGetFpuState(Span<byte> fxsave, out ulong xcr0)
    {
        xcr0 = Xcr0;
        if (fxsave.Length < 512) return false;
        fxsave[..512].Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(fxsave, Fcw);
        BinaryPrimitives.WriteUInt16LittleEndian(fxsave[2..], StatusWord);
        fxsave[4] = FpuValid;
        BinaryPrimitives.WriteUInt32LittleEndian(fxsave[24..], Mxcsr);
        BinaryPrimitives.WriteUInt32LittleEndian(fxsave[28..], MxcsrMask);
        for (int i = 0; i < 8; i++)
        {
            GetRaw80((FpuTop + i) & 7, out ulong m, out ushort se);
            BinaryPrimitives.WriteUInt64LittleEndian(fxsave[(32 + i * 16)..], m);
            BinaryPrimitives.WriteUInt16LittleEndian(fxsave[(40 + i * 16)..], se);
        }
        for (int i = 0; i < 16; i++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(fxsave[(160 + i * 16)..], X[i].Lo);
            BinaryPrimitives.WriteUInt64LittleEndian(fxsave[(168 + i * 16)..], X[i].Hi);
        }
        return true;
    }

    public bool TrySetFpuState(ReadOnlySpan<byte> fxsave, ulong xcr0)
    {
        if (fxsave.Length < 512 || (xcr0 & 1) == 0 || (xcr0 & ~SupportedXcr0) != 0) return false;
        uint mxcsr = BinaryPrimitives.ReadUInt32LittleEndian(fxsave[24..]);
        if ((mxcsr & ~MxcsrMask) != 0) return false;
        Xcr0 = xcr0;
        Fcw = BinaryPrimitives.ReadUInt16LittleEndian(fxsave);
        ushort sw = BinaryPrimitives.ReadUInt16LittleEndian(fxsave[2..]);
        Fsw = (ushort)(sw & ~0x3800);
        FpuTop = (sw >> 11) & 7;
        FpuValid = fxsave[4];
        for (int i = 0; i < 8; i++)
            SetRaw80((FpuTop + i) & 7, BinaryPrimitives.ReadUInt64LittleEndian(fxsave[(32 + i * 16)..]),
                BinaryPrimitives.ReadUInt16LittleEndian(fxsave[(40 + i * 16)..]));
        Mxcsr = mxcsr;
        for (int i = 0; i < 16; i++)
        {
            X[i].Lo = BinaryPrimitives.ReadUInt64LittleEndian(fxsave[(160 + i * 16)..]);
            X[i].Hi = BinaryPrimitives.ReadUInt64LittleEndian(fxsave[(168 + i * 16)..]);
        }
        return true;
    }
}
