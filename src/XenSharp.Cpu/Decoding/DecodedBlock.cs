using System.Runtime.InteropServices;
using Iced.Intel;

namespace XenSharp.Cpu.Decoding;

/// <summary>
/// One decoded instruction plus what the interpreter precomputes about it. Plain data, so that a
/// later JIT can translate a block from the same array. Exactly one cache line (64 bytes): an idle
/// guest's wake-up runs thousands of instructions whose decoded records went cold since the last one,
/// and each record costs the lines it spans; what Iced's <see cref="I"/> already holds (the length, the
/// displacement) is read from it rather than kept twice, and the flags share a byte.
/// </summary>
[StructLayout(LayoutKind.Sequential, Pack = 8)]
internal struct DecodedInsn
{
    public Instruction I;
    public ulong Imm;
    private ushort _op;
    /// <summary>Bytes touched by the memory operand (1 when unknown): the segment limit check
    /// covers its last byte and the alignment check uses it.</summary>
    public ushort MemBytes;
    /// <summary>Address size in bytes (2, 4, 8) from the mode and the 0x67 prefix.</summary>
    public byte AddrSize;
    /// <summary>Size in bytes of operand 0 (register or memory), 0 when it has none.</summary>
    public byte OpSize;
    /// <summary>A specialised shape the interpreter runs without Iced's operand accessors
    /// (<see cref="FastForm"/>), or None.</summary>
    public FastForm Form;
    /// <summary>ALU operation for the ALU forms.</summary>
    public byte AluKind;
    /// <summary>GPR numbers of operands 0 and 1 for the fast forms.</summary>
    public byte R0, R1;
    /// <summary>Memory operand pre-split for the fast forms: GPR numbers (0xFF = none), scale
    /// shift, segment number; the displacement is <see cref="MemDisp"/>.</summary>
    public byte MemBase, MemIndex, MemShift, MemSeg;
    private byte _bits;

    private const byte BitMemSplit = 1, BitMemStack = 2, BitHigh0 = 4, BitHigh1 = 8;

    /// <summary>Iced's mnemonic, cached (the interpreter dispatches on it).</summary>
    public Mnemonic Op
    {
        readonly get => (Mnemonic)_op;
        set => _op = (ushort)value;
    }

    public readonly byte Length => (byte)I.Length;

    /// <summary>Displacement of the pre-split memory operand (absolute for RIP-relative, as Iced gives it).</summary>
    public readonly ulong MemDisp => I.MemoryDisplacement64;

    /// <summary>The memory operand is pre-split (32/64-bit addressing).</summary>
    public bool MemSplit
    {
        readonly get => (_bits & BitMemSplit) != 0;
        set => _bits = (byte)(value ? _bits | BitMemSplit : _bits & ~BitMemSplit);
    }

    /// <summary>In 64-bit mode a non-canonical address of the memory operand raises #SS rather than
    /// #GP: its base register is RSP or RBP and it has no FS/GS override (64-bit mode ignores the
    /// other overrides, so an SS override on another base does not make it a stack access, nor a
    /// DS override on RBP a data access). Only 64-bit mode consults it.</summary>
    public bool MemStack
    {
        readonly get => (_bits & BitMemStack) != 0;
        set => _bits = (byte)(value ? _bits | BitMemStack : _bits & ~BitMemStack);
    }

    /// <summary>Bit position of an 8-bit register operand 0 or 1 in its GPR (8 for AH..BH, else 0), for the
    /// narrow fast forms.</summary>
    public readonly byte Sh0 => (byte)((_bits & BitHigh0) << 1);
    public readonly byte Sh1 => (byte)(_bits & BitHigh1);

    /// <summary>Sets <see cref="Sh0"/> and <see cref="Sh1"/>: whether operand 0 or 1 is AH..BH.</summary>
    public void SetHigh(int op, bool high)
    {
        byte bit = op == 0 ? BitHigh0 : BitHigh1;
        _bits = (byte)(high ? _bits | bit : _bits & ~bit);
    }
}

internal enum FastForm : byte
{
    None,
    AluRR,      // op r32/64, r32/64
    AluRI,      // op r32/64, imm
    MovRR,
    MovRI,
    MovRM,      // mov r32/64, [mem]
    MovMR,      // mov [mem], r32/64
    Jcc,
    IncR,
    DecR,
    Lea,
    PushR,
    PopR,
    AluRM,      // op r32/64, [mem]
    AluMR,      // op [mem], r32/64
    AluMI,      // op [mem], imm (32/64-bit operand)
    JmpRel,
    CallRel,
    RetNear,
    MovzxRM,    // movzx r32/64, r/m8 or r/m16 from memory
    AluRRn,     // op r8/16, r8/16 (AH..BH included)
    AluRIn,     // op r8/16, imm
    AluRMn,     // op r8/16, [mem]
    MovMI,      // mov [mem], imm (any size)
    ShiftRI,    // shl/shr/sar/rol/ror r32/64, imm (AluKind: 0 shl, 1 shr, 2 sar, 3 rol, 4 ror)
    ShiftRC,    // the same by CL
    MovxRR,     // movzx/movsx/movsxd r32/64, r8/16/32 (AluKind: source size, Imm 1 when signed)
    CmovRR,     // cmovcc r32/64, r32/64
    SetccR,     // setcc r8
    ImulRR,     // imul r32/64, r32/64
    ImulRRI,    // imul r32/64, r32/64, imm
    NotR,
    NegR,
    Nop,        // NOP (any operands), PREFETCHh, ENDBR: nothing to do
    // AluRR and AluRI split by operation, so that the interpreter takes one dispatch for them, not two.
    AddRR, OrRR, AndRR, SubRR, XorRR, CmpRR, TestRR,
    AddRI, OrRI, AndRI, SubRI, XorRI, CmpRI, TestRI,
}

/// <summary>A run of instructions from one guest-physical page, in the order they execute, ending at a
/// control transfer, a page end or a size cap; in 64-bit code, and in 32-bit code under a page-aligned CS base, a
/// direct JMP or CALL into the same page (outside the run so far) does not end it, and the instruction after it is
/// its target (X86Vcpu.FollowsInto).</summary>
/// <remarks>The fields a lookup and a hop check (RIP, entry word, CS base, mode, aging stamp, validity) come first and
/// together, with the guest-physical page a cross-page hop checks, then the link slots an exit reads, so that finding and entering a block whose lines went cold waits for
/// one or two lines rather than the three .NET's own layout spread them over.</remarks>
[StructLayout(LayoutKind.Explicit)]
internal sealed class DecodedBlock
{
    [FieldOffset(72)] public readonly DecodedInsn[] Insns;
    [FieldOffset(68)] public readonly int Count;
    /// <summary>Guest-physical address of the first byte.</summary>
    [FieldOffset(40)] public readonly ulong Phys;
    /// <summary>RIP (segment offset) of the first instruction.</summary>
    [FieldOffset(0)] public readonly ulong Ip;
    /// <summary>16, 32 or 64.</summary>
    [FieldOffset(24)] public readonly int Bitness;
    /// <summary>A block of one instruction that crosses into the next linear page, whose tail bytes came from
    /// guest-physical page <see cref="TailPhys"/>: a later lookup holds only while that page still maps there.</summary>
    [FieldOffset(33)] public bool HasTail;
    [FieldOffset(120)] public ulong TailPhys;
    /// <summary>CS base the block was found under (a per-vCPU jump-cache hit must match it).</summary>
    [FieldOffset(16)] public ulong CsBase;
    /// <summary>The highest offset any of its instructions occupies, which must lie within the CS limit outside 64-bit
    /// mode for the whole block to run (the last instruction's end for a straight run, not for a followed one).</summary>
    [FieldOffset(128)] public readonly ulong LastByte;
    /// <summary>Cleared when the page is written; holders must look the block up again.</summary>
    [FieldOffset(32)] public volatile bool Valid = true;
    /// <summary>The engine's aging epoch when the run loop last entered the block (<see cref="X86Engine.AgeCode"/>).</summary>
    [FieldOffset(28)] public int LastRun;
    /// <summary>Times the interpreter ran the block (until it is compiled), halved by each aging pass
    /// (<see cref="X86Engine.AgeCode"/>): the block compiler's threshold is met by blocks run often, not by blocks
    /// run now and then for long enough.</summary>
    [FieldOffset(64)] public int Hits;
    /// <summary>The method the block was compiled into (Jit/BlockTranslator.cs), or null while interpreted. It keeps
    /// that method's code alive for as long as anything can enter the block.</summary>
    [FieldOffset(96)] public Jit.CompiledMethod? Compiled;
    /// <summary>How compiled code and the run loop enter the block (0 while interpreted): the native code of its
    /// method, and in bits <see cref="EntryBodyShift"/> and up the block's body among the method's. One word, written
    /// once after the code is ready, read from the line whose other fields a hop checks anyway: entering a block costs
    /// no delegate, no closure and no precode on the way.</summary>
    [FieldOffset(8)] public long Entry;
    public const int EntryBodyShift = 60;
    public const long EntryCodeMask = (1L << EntryBodyShift) - 1;
    /// <summary>Translation failed once: the block stays interpreted.</summary>
    [FieldOffset(34)] public bool JitFailed;
    /// <summary>Waiting in the engine's background compile queue.</summary>
    [FieldOffset(35)] public bool Queued;
    /// <summary>The compiled code's direct exits (branch targets in the same linear page) and the
    /// compiled blocks they lead to once seen (null until then): compiled code jumps straight into
    /// a linked successor instead of returning to the run loop.</summary>
    [FieldOffset(104)] public ulong[] LinkTargets = [];
    /// <summary>The links of slots 0 and 1 (nearly every block has no more), kept in the block itself: a hop reads
    /// its link from the block it leaves, whose other fields it has just used, where an array would be one more line
    /// to wait for. <see cref="Links"/> holds slot 2 and up.</summary>
    [FieldOffset(48)] public DecodedBlock? Link0;
    [FieldOffset(56)] public DecodedBlock? Link1;
    [FieldOffset(112)] public DecodedBlock?[] Links = [];
    public int LinkCount => LinkTargets.Length;
    public DecodedBlock? LinkAt(int slot) =>
        slot == 0 ? Link0 : slot == 1 ? Link1 : Links is var l && (uint)(slot - 2) < (uint)l.Length ? l[slot - 2] : null;
    public void SetLink(int slot, DecodedBlock? next)
    {
        if (slot == 0) Link0 = next;
        else if (slot == 1) Link1 = next;
        else if (Links is var l && (uint)(slot - 2) < (uint)l.Length) l[slot - 2] = next;
    }
    /// <summary>Storage for <paramref name="count"/> link slots, all unlinked.</summary>
    public void ResetLinks(int count)
    {
        Link0 = Link1 = null;
        Links = count > 2 ? new DecodedBlock?[count - 2] : [];
    }
    /// <summary>The interpreter's successors in the same linear page: the fall-through (<see cref="NextFall"/>)
    /// and the last other target (<see cref="NextOther"/>), so that the run loop goes from one interpreted block
    /// to the next without the jump-cache lookup (X86Vcpu.NextBlock).</summary>
    [FieldOffset(80)] public DecodedBlock? NextFall;
    [FieldOffset(88)] public DecodedBlock? NextOther;

    /// <summary>Invalidates the block: holders look its address up again.</summary>
    public void Drop() => Valid = false;

    /// <summary>The block ends with a near CALL (<see cref="EndsWithCall"/>) or with a RET that returns from none of its
    /// own (followed) CALLs (<see cref="EndsWithReturn"/>): what the interpreter's return-address prediction pushes and
    /// pops. A block that follows a CALL into its callee and ends at the callee's RET is balanced, and is neither.</summary>
    [FieldOffset(36)] public readonly byte Ends;
    public const byte EndsWithCall = 1, EndsWithReturn = 2;

    public DecodedBlock(DecodedInsn[] insns, int count, ulong phys, ulong ip, int bitness)
    {
        Insns = insns; Count = count; Phys = phys; Ip = ip; Bitness = bitness;
        bool followedCall = false;
        for (int k = 0; k < count; k++)
        {
            LastByte = Math.Max(LastByte, insns[k].I.IP + insns[k].Length - 1);
            if (k < count - 1 && insns[k].Op == Mnemonic.Call) followedCall = true;
        }
        if (count > 0)
        {
            var last = insns[count - 1].Op;
            if (last == Mnemonic.Call) Ends = EndsWithCall;
            else if (last == Mnemonic.Ret && !followedCall) Ends = EndsWithReturn;
        }
    }
}

/// <summary>Iced code reader over host memory of one guest page (or a small spill buffer).</summary>
internal sealed unsafe class PointerCodeReader : CodeReader
{
    public byte* Ptr;
    public int Pos;
    public int Limit;

    public override int ReadByte() => Pos < Limit ? Ptr[Pos++] : -1;
}
