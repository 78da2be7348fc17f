using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>Near and far control transfers, LOOP, INT n, HLT, CLI/STI.</summary>
internal unsafe partial class X86Vcpu
{
    private void Branch(ref DecodedInsn d, ulong target)
    {
        Rip = target;
    }

    private ulong TruncIp(ulong target, int size) => size switch { 2 => (ushort)target, 4 => (uint)target, _ => target };

    private void ExecJmp(ref DecodedInsn d)
    {
        switch (d.I.Op0Kind)
        {
            case OpKind.NearBranch16:
            case OpKind.NearBranch32:
            case OpKind.NearBranch64:
                Rip = d.I.NearBranchTarget;
                return;
            case OpKind.FarBranch16:
            case OpKind.FarBranch32:
                FarJump(d.I.FarBranchSelector, d.I.Op0Kind == OpKind.FarBranch16 ? d.I.FarBranch16 : d.I.FarBranch32, false, 0);
                return;
        }
        if (d.I.IsJmpFarIndirect)
        {
            ulong lin = MemAddr(ref d);
            int offSize = d.I.MemorySize.GetSize() - 2;
            ulong off = ReadLin(lin, offSize);
            ushort sel = (ushort)ReadLin(lin + (ulong)offSize, 2);
            FarJump(sel, off, false, 0);
            return;
        }
        Rip = TruncIp(ReadOp0(ref d, d.OpSize), d.OpSize);
    }

    private void ExecCall(ref DecodedInsn d)
    {
        int size = -d.I.StackPointerIncrement;
        switch (d.I.Op0Kind)
        {
            case OpKind.NearBranch16:
            case OpKind.NearBranch32:
            case OpKind.NearBranch64:
                Push(Rip, size);
                Rip = d.I.NearBranchTarget;
                return;
            case OpKind.FarBranch16:
            case OpKind.FarBranch32:
                FarJump(d.I.FarBranchSelector, d.I.Op0Kind == OpKind.FarBranch16 ? d.I.FarBranch16 : d.I.FarBranch32, true, size / 2);
                return;
        }
        if (d.I.IsCallFarIndirect)
        {
            ulong lin = MemAddr(ref d);
            int offSize = d.I.MemorySize.GetSize() - 2;
            ulong off = ReadLin(lin, offSize);
            ushort sel = (ushort)ReadLin(lin + (ulong)offSize, 2);
            FarJump(sel, off, true, offSize);
            return;
        }
        ulong target = TruncIp(ReadOp0(ref d, d.OpSize), d.OpSize);
        Push(Rip, size);
        Rip = target;
    }

    private void ExecRet(ref DecodedInsn d)
    {
        int imm = d.I.OpCount > 0 ? d.I.Immediate16 : 0;
        int size = d.I.StackPointerIncrement - imm;
        ulong target = Pop(size);
        if (imm != 0) AddSp(imm);
        Rip = target;
    }

    private void ExecLoop(ref DecodedInsn d)
    {
        ulong c;
        switch (d.AddrSize)
        {
            case 8: c = --R[1]; break;
            case 4: c = (uint)(R[1] - 1); R[1] = c; break;
            default: c = (ushort)(R[1] - 1); R[1] = (R[1] & ~0xFFFFUL) | c; break;
        }
        bool take = c != 0;
        if (d.Op == Mnemonic.Loope) take &= (Rflags & ZF) != 0;
        else if (d.Op == Mnemonic.Loopne) take &= (Rflags & ZF) == 0;
        if (take) Rip = d.I.NearBranchTarget;
    }

    private void ExecCli()
    {
        if (Protected && Cpl > (int)((Rflags >> 12) & 3)) throw GP();
        Rflags &= ~IF;
    }

    private void ExecSti()
    {
        if (Protected && Cpl > (int)((Rflags >> 12) & 3)) throw GP();
        if ((Rflags & IF) == 0)
        {
            Rflags |= IF;
            Shadow = true;
        }
        Stop = true;
    }

    private void ExecHlt()
    {
        if (Cpl != 0) throw GP();
        Halted = true;
        Stop = true;
    }

    private void ExecInt(int vector, InterruptKind kind)
    {
        Stop = true;
        RaiseInterrupt(vector, false, 0, kind);
    }

    private void ExecRetf(ref DecodedInsn d)
    {
        int imm = d.I.OpCount > 0 ? d.I.Immediate16 : 0;
        int size = (d.I.StackPointerIncrement - imm) / 2;
        FarReturn(size, imm);
    }
}
