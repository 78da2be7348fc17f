using System.Buffers.Binary;
using Iced.Intel;

namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>Fixed guest addresses shared with tests/native/oracle.c: both sides run the same bytes
/// at the same linear addresses, so RIP values and pushed return addresses compare directly.</summary>
internal static class OracleLayout
{
    public const ulong Code = 0x1000_0000;
    public const ulong Data = 0x2000_0000;
    public const int Page = 4096;
    public const int CodeMax = 4080;
    public const uint NoFault = 0xffff_ffff;
    public const uint Timeout = 0xffff_fffe;

    /// <summary>Size of struct oracle_in / oracle_out in oracle.c.</summary>
    public const int InSize = 16 * 8 + 8 + 512 + 8 + CodeMax + Page;
    public const int OutSize = 16 * 8 + 8 + 8 + 512 + 4 + 4 + 8 + Page + Page;

    /// <summary>RFLAGS bits compared: CF PF AF ZF SF DF OF. RF, IF and the system bits differ
    /// between a user process and a bare guest for reasons unrelated to the instruction.</summary>
    public const ulong ComparedFlags = 0xcd5;

    /// <summary>CF PF AF ZF SF OF: the flags an instruction may leave undefined.</summary>
    public const ulong StatusFlags = 0x8d5;
}

/// <summary>Register names in encoding order, the order of every GPR array here.</summary>
internal static class Gpr
{
    public const int Rax = 0, Rcx = 1, Rdx = 2, Rbx = 3, Rsp = 4, Rbp = 5, Rsi = 6, Rdi = 7, R15 = 15;
    public static readonly string[] Names =
        ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
}

/// <summary>One generated test case: the initial machine state and the code to run.</summary>
internal sealed class OracleCase
{
    public required string Group;
    public required int Index;
    public ulong[] Gpr = new ulong[16];
    public ulong Rflags;
    /// <summary>FXSAVE image: x87, MMX, XMM0-15 and MXCSR.</summary>
    public byte[] Fx = new byte[512];
    public required byte[] Code;
    public byte[] Data = new byte[OracleLayout.Page];
    /// <summary>Disassembly, for failure messages.</summary>
    public required string Text;
    /// <summary>Per instruction: its address and the flags the SDM leaves undefined when execution stops before it.</summary>
    public required (ulong Ip, ulong UndefinedBefore)[] Steps;
    /// <summary>Flags undefined after the whole sequence.</summary>
    public ulong UndefinedAtEnd;
    /// <summary>Parts of the FXSAVE image to compare (x87 condition codes are undefined after most arithmetic).</summary>
    public FxCompare FxMask = FxCompare.All;
    /// <summary>Whether the code touches x87/MMX/SSE state: only then is that state loaded into the
    /// engine (FXRSTOR), saved back (FXSAVE) and compared, so that integer groups do not depend on
    /// the engine's FXSAVE support.</summary>
    public bool UsesFx;

    Instruction[]? decoded;

    /// <summary>The case's instructions (without the closing HLT).</summary>
    public Instruction[] Instructions => decoded ??= Decode(Code);

    static Instruction[] Decode(byte[] code)
    {
        var d = Iced.Intel.Decoder.Create(64, new ByteArrayCodeReader(code));
        d.IP = OracleLayout.Code;
        var list = new List<Instruction>();
        while (d.IP < OracleLayout.Code + (ulong)code.Length - 1)
        {
            d.Decode(out var i);
            list.Add(i);
        }
        return list.ToArray();
    }

    /// <summary>True when any instruction in <paramref name="code"/> uses x87, MMX or XMM state.</summary>
    public static bool TouchesFx(byte[] code)
    {
        var d = Iced.Intel.Decoder.Create(64, new Iced.Intel.ByteArrayCodeReader(code));
        d.IP = OracleLayout.Code;
        while (d.IP < OracleLayout.Code + (ulong)code.Length)
        {
            d.Decode(out var i);
            if (i.CpuidFeatures.Any(f => f is Iced.Intel.CpuidFeature.FPU or Iced.Intel.CpuidFeature.FPU387 or Iced.Intel.CpuidFeature.MMX))
                return true;
            for (int n = 0; n < i.OpCount; n++)
            {
                if (i.GetOpKind(n) != Iced.Intel.OpKind.Register) continue;
                var r = i.GetOpRegister(n);
                if (r.IsXMM() || r.IsMM() || r.IsST()) return true;
            }
            if (i.Mnemonic is Iced.Intel.Mnemonic.Ldmxcsr or Iced.Intel.Mnemonic.Stmxcsr) return true;
            if (i.MemorySize.IsPacked() || i.MemorySize.GetSize() >= 16) return true;
        }
        return false;
    }

    public void WriteTo(Span<byte> b)
    {
        b.Clear();
        for (int i = 0; i < 16; i++) BinaryPrimitives.WriteUInt64LittleEndian(b[(i * 8)..], Gpr[i]);
        BinaryPrimitives.WriteUInt64LittleEndian(b[128..], Rflags);
        Fx.CopyTo(b[136..]);
        BinaryPrimitives.WriteUInt32LittleEndian(b[648..], (uint)Code.Length);
        Code.CopyTo(b[656..]);
        Data.CopyTo(b[(656 + OracleLayout.CodeMax)..]);
    }
}

[Flags]
internal enum FxCompare
{
    None = 0,
    X87ConditionCodes = 1,
    All = X87ConditionCodes,
}

/// <summary>The state a case ended in, natively or in the engine.</summary>
internal sealed class OracleResult
{
    public ulong[] Gpr = new ulong[16];
    public ulong Rip;
    public ulong Rflags;
    public byte[] Fx = new byte[512];
    public uint Vector;
    public uint ErrorCode;
    public byte[] Data = new byte[OracleLayout.Page];
    /// <summary>The code page at the end: the case's code, 0xCC after it, and whatever its stores wrote there.</summary>
    public byte[] Code = new byte[OracleLayout.Page];
    /// <summary>Set when the engine could not run the case at all (exit reason, message).</summary>
    public string? EngineError;

    public static OracleResult Read(ReadOnlySpan<byte> b)
    {
        var r = new OracleResult();
        for (int i = 0; i < 16; i++) r.Gpr[i] = BinaryPrimitives.ReadUInt64LittleEndian(b[(i * 8)..]);
        r.Rip = BinaryPrimitives.ReadUInt64LittleEndian(b[128..]);
        r.Rflags = BinaryPrimitives.ReadUInt64LittleEndian(b[136..]);
        b.Slice(144, 512).CopyTo(r.Fx);
        r.Vector = BinaryPrimitives.ReadUInt32LittleEndian(b[656..]);
        r.ErrorCode = BinaryPrimitives.ReadUInt32LittleEndian(b[660..]);
        b.Slice(672, OracleLayout.Page).CopyTo(r.Data);
        b.Slice(672 + OracleLayout.Page, OracleLayout.Page).CopyTo(r.Code);
        return r;
    }
}
