using Iced.Intel;
using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;
using static XenSharp.Hypervisor.X86.Pv.PvMm;
using Register = Iced.Intel.Register;

namespace XenSharp.Hypervisor.X86.Pv;

/// <summary>
/// Writable page-table emulation (Xen's ptwr, pv/ro-page-fault.c): a PV kernel that writes an entry straight into
/// one of its L1 page tables, which it may map only read-only, takes a write fault on a present read-only mapping.
/// The faulting instruction is decoded and its write becomes a validated update of that entry, as mmu_update's
/// would be; then the guest goes on past the instruction. MOV, XCHG, CMPXCHG, AND, OR and BTS/BTR of 1 to 8 bytes
/// within one entry are emulated; anything else, or an entry the PV MMU refuses, leaves the page fault to the guest.
/// </summary>
internal static unsafe class PvPtwr
{
    private const uint PfecPresent = 1, PfecWrite = 2, PfecReserved = 8, PfecInstr = 0x10;
    private const ulong CF = 1, PF = 4, ZF = 0x40, SF = 0x80, OF = 0x800;

    /// <summary>A decoder per pCPU thread, reused, so that a page-table write allocates nothing.</summary>
    private sealed class ThreadDecoder
    {
        public readonly byte[] Bytes = new byte[15];
        public readonly ByteArrayCodeReader Reader;
        public readonly Decoder Decoder;

        public ThreadDecoder()
        {
            Reader = new ByteArrayCodeReader(Bytes);
            Decoder = Decoder.Create(64, Reader);
        }
    }

    [ThreadStatic] private static ThreadDecoder? t_decoder;

    /// <summary>True when the fault at <paramref name="va"/> was a write to an L1 page table and has been
    /// emulated.</summary>
    public static bool TryEmulate(Vcpu v, IVcpu cpu, ulong va, uint errorCode)
    {
        if ((errorCode & (PfecPresent | PfecWrite | PfecReserved | PfecInstr)) != (PfecPresent | PfecWrite))
            return false;
        var d = v.Domain;
        var frames = d.Host.Frames;
        var pv = v.Pv!;
        // The mapping that faulted: present, read-only, naming a frame of the domain's typed as an L1.
        if (!TryFindL1e(frames, pv.CurrentTable, va, out ulong mapL1, out int mapIndex))
            return false;
        ulong pte = ((ulong*)frames.PageAddress(mapL1))[mapIndex];
        if ((pte & (PAGE_PRESENT | PAGE_RW)) != PAGE_PRESENT)
            return false;
        ulong target = (pte & AddressMask) >> FrameTable.PageShift;

        cpu.GetRegisters(out var r);
        Span<byte> code = stackalloc byte[15];
        int have = 15;
        while (have > 0 && !GuestAccess.CopyFrom(v, r.Rip, code[..have]))
            have--; // the instruction may end just before an unmapped page
        if (have == 0)
            return false;
        var d0 = t_decoder ??= new ThreadDecoder();
        d0.Bytes.AsSpan().Clear();
        code[..have].CopyTo(d0.Bytes);
        d0.Reader.Position = 0;
        d0.Decoder.IP = r.Rip;
        d0.Decoder.Decode(out var insn);
        if (insn.IsInvalid || insn.Op0Kind != OpKind.Memory)
            return false;
        int size = insn.MemorySize switch
        {
            MemorySize.UInt8 or MemorySize.Int8 => 1, MemorySize.UInt16 or MemorySize.Int16 => 2,
            MemorySize.UInt32 or MemorySize.Int32 => 4, MemorySize.UInt64 or MemorySize.Int64 => 8, _ => 0,
        };
        if (size == 0 && insn.Mnemonic is Mnemonic.Bts or Mnemonic.Btr)
            size = insn.OpCount > 1 && insn.Op1Kind == OpKind.Register ? insn.Op1Register.GetSize() : 8;
        if (size == 0 || (va & (ulong)(size - 1)) != 0)
            return false;

        int index = (int)((va & (FrameTable.PageSize - 1)) >> 3);
        int shift = (int)(va & 7) * 8;
        ulong sizeMask = size == 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;
        if (!frames.TryGetPage(target, d.DomainId))
            return false;
        try
        {
            lock (frames.TypeLock)
            {
                var ti = frames.TypeInfoOf(target);
                if (ti.Count == 0 || ti.Type != PageType.L1)
                    return false;
                ulong oldEntry = Volatile.Read(ref ((ulong*)frames.PageAddress(target))[index]);
                ulong old = (oldEntry >> shift) & sizeMask;
                ulong value;
                bool write = true;
                ulong flags = r.Rflags;
                switch (insn.Mnemonic)
                {
                    case Mnemonic.Mov:
                        value = Source(ref r, insn);
                        break;
                    case Mnemonic.And or Mnemonic.Or:
                        value = insn.Mnemonic == Mnemonic.And ? old & Source(ref r, insn) : old | Source(ref r, insn);
                        flags = LogicFlags(flags, value & sizeMask, size);
                        break;
                    case Mnemonic.Xchg:
                        value = Reg(ref r, insn.Op1Register);
                        SetReg(ref r, insn.Op1Register, old);
                        break;
                    case Mnemonic.Cmpxchg:
                    {
                        ulong expected = r.Rax & sizeMask;
                        value = Reg(ref r, insn.Op1Register);
                        flags = CompareFlags(flags, expected, old, size);
                        if (expected != old)
                        {
                            write = false;
                            // AL/AX merge; a 32-bit result zero-extends; RAX takes all of it.
                            r.Rax = size >= 4 ? old : (r.Rax & ~sizeMask) | old;
                        }
                        break;
                    }
                    case Mnemonic.Bts or Mnemonic.Btr:
                    {
                        int bit = (int)((insn.Op1Kind == OpKind.Register ? Reg(ref r, insn.Op1Register) : insn.Immediate8) & (ulong)(size * 8 - 1));
                        flags = (old >> bit & 1) != 0 ? flags | CF : flags & ~CF;
                        value = insn.Mnemonic == Mnemonic.Bts ? old | 1UL << bit : old & ~(1UL << bit);
                        break;
                    }
                    default:
                        return false;
                }
                if (write)
                {
                    ulong entry = (oldEntry & ~(sizeMask << shift)) | ((value & sizeMask) << shift);
                    if (ModEntry(frames, target, PageType.L1, index, entry, d.DomainId, preserveAd: false) != 0)
                        return false;
                }
                r.Rflags = flags;
                r.Rip = insn.NextIP;
                cpu.SetRegisters(r);
            }
        }
        finally
        {
            frames.PutPage(target);
        }
        // The entry changed under the vCPU's cached translations.
        pv.FlushTlb(now: true);
        return true;
    }

    private static ulong Source(ref Registers r, in Instruction insn) =>
        insn.Op1Kind == OpKind.Register ? Reg(ref r, insn.Op1Register) : insn.GetImmediate(1);

    private static ulong LogicFlags(ulong flags, ulong result, int size)
    {
        flags &= ~(CF | PF | ZF | SF | OF);
        if (result == 0) flags |= ZF;
        if ((result >> (size * 8 - 1) & 1) != 0) flags |= SF;
        if ((System.Numerics.BitOperations.PopCount(result & 0xFF) & 1) == 0) flags |= PF;
        return flags;
    }

    private static ulong CompareFlags(ulong flags, ulong a, ulong b, int size)
    {
        ulong mask = size == 8 ? ulong.MaxValue : 0xFFFF_FFFFUL;
        ulong diff = (a - b) & mask;
        int top = size * 8 - 1;
        flags &= ~(CF | PF | ZF | SF | OF | 0x10);
        if (a < b) flags |= CF;
        if (diff == 0) flags |= ZF;
        if ((diff >> top & 1) != 0) flags |= SF;
        if ((((a ^ b) & (a ^ diff)) >> top & 1) != 0) flags |= OF;
        if ((System.Numerics.BitOperations.PopCount(diff & 0xFF) & 1) == 0) flags |= PF;
        if (((a ^ b ^ diff) & 0x10) != 0) flags |= 0x10;
        return flags;
    }

    private static ulong Reg(ref Registers r, Register reg)
    {
        ulong full = Full(ref r, reg.GetFullRegister());
        // AH..BH are bits 8-15 of their register; other byte registers the low 8.
        if (reg is Register.AH or Register.CH or Register.DH or Register.BH)
            return (full >> 8) & 0xFF;
        int size = reg.GetSize();
        return size == 8 ? full : full & ((1UL << (size * 8)) - 1);
    }

    private static void SetReg(ref Registers r, Register reg, ulong value)
    {
        ref ulong full = ref Full(ref r, reg.GetFullRegister());
        if (reg is Register.AH or Register.CH or Register.DH or Register.BH)
        {
            full = (full & ~0xFF00UL) | ((value & 0xFF) << 8);
            return;
        }
        int size = reg.GetSize();
        full = size switch
        {
            8 => value,
            4 => (uint)value, // a 32-bit write zero-extends
            _ => (full & ~((1UL << (size * 8)) - 1)) | (value & ((1UL << (size * 8)) - 1)),
        };
    }

    private static ref ulong Full(ref Registers r, Register full)
    {
        switch (full)
        {
            case Register.RAX: return ref r.Rax;
            case Register.RCX: return ref r.Rcx;
            case Register.RDX: return ref r.Rdx;
            case Register.RBX: return ref r.Rbx;
            case Register.RSP: return ref r.Rsp;
            case Register.RBP: return ref r.Rbp;
            case Register.RSI: return ref r.Rsi;
            case Register.RDI: return ref r.Rdi;
            case Register.R8: return ref r.R8;
            case Register.R9: return ref r.R9;
            case Register.R10: return ref r.R10;
            case Register.R11: return ref r.R11;
            case Register.R12: return ref r.R12;
            case Register.R13: return ref r.R13;
            case Register.R14: return ref r.R14;
            default: return ref r.R15;
        }
    }
}
