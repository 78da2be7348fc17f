using System.Buffers.Binary;
using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>Data movement: MOV, stack operations, byte swaps, far-pointer loads.</summary>
internal unsafe partial class X86Vcpu
{
    private void ExecMov(ref DecodedInsn d)
    {
        if (d.I.Op0Kind == OpKind.Register)
        {
            var r = d.I.Op0Register;
            int i = (int)r;
            if (s_size[i] != 0)
            {
                if (d.I.Op1Kind == OpKind.Register)
                {
                    var s = d.I.Op1Register;
                    if (s_size[(int)s] == 0 && !s.IsSegmentRegister()) { MovFromSpecial(ref d, s); return; }
                    WriteReg(r, ReadReg(s));
                }
                else WriteReg(r, ReadOp1(ref d, d.OpSize));
                return;
            }
            if (r.IsSegmentRegister())
            {
                int seg = r - Register.ES;
                if (seg == CS) throw UD();
                LoadSegment(seg, (ushort)ReadOp1(ref d, 2));
                if (seg == SS) { Shadow = true; Stop = true; }
                return;
            }
            MovToSpecial(ref d, r);
            return;
        }
        WriteLin(MemAddr(ref d), d.OpSize, ReadOp1(ref d, d.OpSize));
    }

    private void ExecPush(ref DecodedInsn d)
    {
        int size = -d.I.StackPointerIncrement;
        ulong v = d.I.Op0Kind == OpKind.Register ? ReadReg(d.I.Op0Register) : ReadOp(ref d, 0, size);
        Push(v, size);
    }

    private void ExecPop(ref DecodedInsn d)
    {
        int size = d.I.StackPointerIncrement;
        ulong oldSp = R[4];
        ulong v = Pop(size);
        if (d.I.Op0Kind == OpKind.Register)
        {
            var r = d.I.Op0Register;
            if (r.IsSegmentRegister())
            {
                int seg = r - Register.ES;
                try { LoadSegment(seg, (ushort)v); }
                catch (GuestFault) { R[4] = oldSp; throw; }
                if (seg == SS) { Shadow = true; Stop = true; }
                return;
            }
            WriteReg(r, v);
            return;
        }
        try { WriteLin(MemAddr(ref d), size, v); }
        catch (GuestFault) { R[4] = oldSp; throw; }
    }

    private void ExecBswap(ref DecodedInsn d)
    {
        var r = d.I.Op0Register;
        ulong v = ReadReg(r);
        switch (d.OpSize)
        {
            case 4: WriteReg(r, BinaryPrimitives.ReverseEndianness((uint)v)); break;
            case 8: WriteReg(r, BinaryPrimitives.ReverseEndianness(v)); break;
            default: WriteReg(r, 0); break;
        }
    }

    private static ulong Swap(ulong v, int size) => size switch
    {
        2 => BinaryPrimitives.ReverseEndianness((ushort)v),
        4 => BinaryPrimitives.ReverseEndianness((uint)v),
        _ => BinaryPrimitives.ReverseEndianness(v),
    };

    private void ExecMovbe(ref DecodedInsn d)
    {
        int size = d.OpSize;
        if (d.I.Op0Kind == OpKind.Register) WriteReg(d.I.Op0Register, Swap(ReadOp(ref d, 1, size), size));
        else WriteLin(MemAddr(ref d), size, Swap(ReadReg(d.I.Op1Register), size));
    }

    private ulong FlagsImage() => Rflags & ~(RF | VM);

    private void ExecPushf(ref DecodedInsn d)
    {
        if ((Rflags & VM) != 0 && ((Rflags >> 12) & 3) < 3) throw GP();
        int size = -d.I.StackPointerIncrement;
        Push(FlagsImage() & Mask(size), size);
    }

    private void ExecPopf(ref DecodedInsn d)
    {
        if ((Rflags & VM) != 0 && ((Rflags >> 12) & 3) < 3) throw GP();
        int size = d.I.StackPointerIncrement;
        ulong v = Pop(size);
        WriteFlagsFromPop(v, size);
    }

    /// <summary>POPF / IRET flag update rules by CPL and IOPL.</summary>
    internal void WriteFlagsFromPop(ulong v, int size)
    {
        ulong changeable = CF | PF | AF | ZF | SF | TF | DF | OF | NT | AC | ID | IF | IOPL;
        if (Protected)
        {
            int iopl = (int)((Rflags >> 12) & 3);
            if (Cpl > 0) changeable &= ~IOPL;
            if (Cpl > iopl) changeable &= ~IF;
        }
        if (size == 2) changeable &= 0xFFFF;
        ulong old = Rflags;
        Rflags = (Rflags & ~changeable) | (v & changeable) | 2;
        Rflags &= ~RF;
        // A newly set TF traps after the next instruction; a newly set IF opens the interrupt
        // window: either way the block must end here so the run loop sees it.
        if ((Rflags & TF) != 0 || ((Rflags & ~old) & IF) != 0) Stop = true;
    }

    private void ExecPusha(int size)
    {
        ulong sp = R[4];
        for (int i = 0; i < 8; i++) Push(i == 4 ? sp : R[i], size);
    }

    private void ExecPopa(int size)
    {
        for (int i = 7; i >= 0; i--)
        {
            ulong v = Pop(size);
            if (i == 4) continue;
            if (size == 2) R[i] = (R[i] & ~0xFFFFUL) | (ushort)v; else R[i] = (uint)v;
        }
    }

    private void ExecEnter(ref DecodedInsn d)
    {
        int size = d.I.Code switch { Code.Enterw_imm16_imm8 => 2, Code.Enterq_imm16_imm8 => 8, _ => 4 };
        ulong alloc = d.I.Immediate16;
        int level = d.I.Immediate8_2nd & 31;
        ulong oldSp = R[4];
        ulong frame;
        // ENTER is restartable: a fault in any of its stack accesses leaves RSP as it was.
        try
        {
            Push(R[5], size);
            frame = R[4];
            if (level > 0)
            {
                ulong bp = R[5];
                for (int i = 1; i < level; i++)
                {
                    bp -= (ulong)size;
                    ulong addr = Bitness == 64 ? bp : Seg[SS].Big ? (uint)(Seg[SS].Base + (uint)bp) : (uint)(Seg[SS].Base + (ushort)bp);
                    CheckStackCanonical(addr, (uint)size);
                    if (_acUser && (Rflags & 0x40000) != 0) CheckAlignment(addr, (uint)size);
                    Push(ReadLin(addr, size), size);
                }
                Push(frame, size);
            }
        }
        catch (GuestFault) { R[4] = oldSp; throw; }
        if (_acUser)
        {
            // After the frame is written the final stack pointer is alignment-checked; a fault
            // leaves RSP and RBP as they were.
            ulong fin = R[4] - alloc;
            ulong lin = Bitness == 64 ? fin : Seg[SS].Big ? (uint)(Seg[SS].Base + (uint)fin) : (uint)(Seg[SS].Base + (ushort)fin);
            try { CheckAlignment(lin, (uint)size); }
            catch (GuestFault) { R[4] = oldSp; throw; }
        }
        WriteSized(5, frame, size);
        AddSp(-(long)alloc);
    }

    private void WriteSized(int reg, ulong v, int size)
    {
        if (size == 2) R[reg] = (R[reg] & ~0xFFFFUL) | (ushort)v;
        else if (size == 4) R[reg] = (uint)v;
        else R[reg] = v;
    }

    private void ExecLeave(ref DecodedInsn d)
    {
        int size = d.I.Code switch { Code.Leavew => 2, Code.Leaveq => 8, _ => 4 };
        ulong oldSp = R[4];
        if (Bitness == 64) R[4] = R[5];
        else if (Seg[SS].Big) R[4] = (uint)R[5];
        else R[4] = (R[4] & ~0xFFFFUL) | (ushort)R[5];
        ulong v;
        // LEAVE is restartable: a faulting pop leaves RSP as it was.
        try { v = Pop(size); }
        catch (GuestFault) { R[4] = oldSp; throw; }
        WriteSized(5, v, size);
    }

    private void ExecLoadFarPointer(ref DecodedInsn d)
    {
        int size = d.OpSize;
        ulong lin = MemAddr(ref d);
        int offSize = d.I.Op0Register.GetSize();
        ulong off = ReadLin(lin, offSize);
        ushort sel = (ushort)ReadLin(lin + (ulong)offSize, 2);
        int seg = d.Op switch { Mnemonic.Lds => DS, Mnemonic.Les => ES, Mnemonic.Lfs => FS, Mnemonic.Lgs => GS, _ => SS };
        LoadSegment(seg, sel);
        WriteReg(d.I.Op0Register, off);
        if (seg == SS) { Shadow = true; Stop = true; }
        _ = size;
    }
}
