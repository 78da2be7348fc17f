using System.Buffers.Binary;
using System.Text;

namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>Compares the host's result of a case with the engine's: fault vector, registers,
/// defined flags, the x87/MMX/SSE state and the data page.</summary>
internal static class OracleComparer
{
    /// <summary>Returns null when they agree, else what differs.</summary>
    public static string? Compare(OracleCase c, OracleResult host, OracleResult engine)
    {
        if (engine.EngineError != null) return "engine: " + engine.EngineError;
        if (HostVariance.OptionalAlignmentCheck(c, host, engine)) return null;
        var sb = new StringBuilder();
        if (host.Vector != engine.Vector)
            sb.Append($"  vector: host {VectorName(host.Vector)}, engine {VectorName(engine.Vector)}\n");
        if (host.Rip != engine.Rip) sb.Append($"  rip: host {host.Rip:x}, engine {engine.Rip:x}\n");
        for (int i = 0; i < 16; i++)
            if (host.Gpr[i] != engine.Gpr[i])
                sb.Append($"  {Gpr.Names[i]}: host {host.Gpr[i]:x16}, engine {engine.Gpr[i]:x16} (was {c.Gpr[i]:x16})\n");

        ulong undefined = c.UndefinedAtEnd;
        if (host.Vector != OracleLayout.NoFault)
        {
            undefined = c.Steps.Length > 0 ? c.Steps.Aggregate(0UL, (a, s) => a | s.UndefinedBefore) | c.UndefinedAtEnd : 0;
            foreach (var s in c.Steps)
                if (s.Ip == host.Rip) { undefined = s.UndefinedBefore; break; }
        }
        // A store through a register that holds the code page's address rewrites the case's own
        // code, and the instructions that then run are not the generated ones: which flags they
        // leave undefined (AF after a shift, say) cannot be told from the case, so none of the six
        // status flags is compared. The rewritten code page itself is compared below.
        bool rewritten = CodeRewritten(c, host);
        if (rewritten) undefined |= OracleLayout.StatusFlags;
        ulong mask = OracleLayout.ComparedFlags & ~undefined;
        if ((host.Rflags & mask) != (engine.Rflags & mask))
            sb.Append($"  rflags: host {host.Rflags & mask:x}, engine {engine.Rflags & mask:x} (compared bits {mask:x}, was {c.Rflags:x})\n");

        if (c.UsesFx) CompareFx(c, host.Fx, engine.Fx, rewritten, sb);

        int diffs = 0;
        for (int i = 0; i < OracleLayout.Page; i++)
        {
            if (host.Data[i] == engine.Data[i]) continue;
            if (diffs++ < 8)
                sb.Append($"  data[{OracleLayout.Data + (ulong)i:x}]: host {host.Data[i]:x2}, engine {engine.Data[i]:x2} (was {c.Data[i]:x2})\n");
        }
        if (diffs > 8) sb.Append($"  ... {diffs} data bytes differ\n");

        diffs = 0;
        for (int i = 0; i < OracleLayout.Page; i++)
        {
            if (host.Code[i] == engine.Code[i]) continue;
            if (diffs++ < 8)
                sb.Append($"  code[{OracleLayout.Code + (ulong)i:x}]: host {host.Code[i]:x2}, engine {engine.Code[i]:x2}\n");
        }
        if (diffs > 8) sb.Append($"  ... {diffs} code bytes differ\n");
        return sb.Length == 0 ? null : sb.ToString();
    }

    /// <summary>True when the case's stores changed its own instructions on the host.</summary>
    internal static bool CodeRewritten(OracleCase c, OracleResult host) =>
        !host.Code.AsSpan(0, c.Code.Length).SequenceEqual(c.Code);

    static void CompareFx(OracleCase c, byte[] h, byte[] e, bool rewritten, StringBuilder sb)
    {
        // Rewritten code may end with an instruction that leaves C0/C2/C3 undefined.
        ushort fswMask = (c.FxMask & FxCompare.X87ConditionCodes) != 0 && !rewritten ? (ushort)0xffff : unchecked((ushort)~0x4500);
        bool approximate = c.Instructions.Any(i => X87Tolerance.IsApproximate(i.Mnemonic));
        if (approximate) fswMask &= unchecked((ushort)~X87Tolerance.FswIgnored);
        Field("fcw", BinaryPrimitives.ReadUInt16LittleEndian(h), BinaryPrimitives.ReadUInt16LittleEndian(e));
        Field("fsw", BinaryPrimitives.ReadUInt16LittleEndian(h.AsSpan(2)) & fswMask, BinaryPrimitives.ReadUInt16LittleEndian(e.AsSpan(2)) & fswMask);
        Field("ftw", h[4], e[4]);
        Field("mxcsr", BinaryPrimitives.ReadUInt32LittleEndian(h.AsSpan(24)), BinaryPrimitives.ReadUInt32LittleEndian(e.AsSpan(24)));
        for (int i = 0; i < 8; i++)
        {
            var hs = h.AsSpan(32 + 16 * i, 10);
            var es = e.AsSpan(32 + 16 * i, 10);
            // Empty x87 registers hold no value worth comparing.
            if (!hs.SequenceEqual(es) && (h[4] & e[4] & (1 << Physical(h, i))) != 0 && !(approximate && X87Tolerance.Within(hs, es)))
                sb.Append($"  st{i}/mm{i}: host {Hex(hs)}, engine {Hex(es)}\n");
        }
        for (int i = 0; i < 16; i++)
        {
            var hs = h.AsSpan(160 + 16 * i, 16);
            var es = e.AsSpan(160 + 16 * i, 16);
            if (!hs.SequenceEqual(es) && !(HostVariance.DotProductLanes(c, i) is int w and > 0 && HostVariance.SameUpToNaNs(hs, es, w)))
                sb.Append($"  xmm{i}: host {Hex(hs)}, engine {Hex(es)}\n");
        }

        void Field(string name, long hv, long ev)
        {
            if (hv != ev) sb.Append($"  {name}: host {hv:x}, engine {ev:x}\n");
        }
    }

    static int Physical(byte[] fx, int st) => ((BinaryPrimitives.ReadUInt16LittleEndian(fx.AsSpan(2)) >> 11) + st) & 7;

    static string Hex(ReadOnlySpan<byte> s)
    {
        var sb = new StringBuilder();
        for (int i = s.Length - 1; i >= 0; i--) sb.Append(s[i].ToString("x2"));
        return sb.ToString();
    }

    public static string VectorName(uint v) => v switch
    {
        OracleLayout.NoFault => "none",
        OracleLayout.Timeout => "timeout",
        0 => "#DE", 1 => "#DB", 3 => "#BP", 6 => "#UD", 7 => "#NM", 12 => "#SS", 13 => "#GP", 14 => "#PF",
        16 => "#MF", 17 => "#AC", 19 => "#XM",
        _ => "vector " + v,
    };
}
