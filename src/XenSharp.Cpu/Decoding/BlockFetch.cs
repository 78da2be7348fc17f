using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>Finding (or decoding) the block at CS:RIP and running it.</summary>
internal unsafe partial class X86Vcpu
{
    private const int MaxBlockInsns = 64;
    private const int JumpCacheSize = 4096;
    private readonly DecodedBlock?[] _jumpSup = new DecodedBlock?[JumpCacheSize];
    private readonly DecodedBlock?[] _jumpUser = new DecodedBlock?[JumpCacheSize];
    private readonly PointerCodeReader _reader = new();
    private Decoder? _dec16, _dec32, _dec64;
    private readonly DecodedInsn[] _scratch = new DecodedInsn[MaxBlockInsns];
    private readonly byte* _spill = (byte*)System.Runtime.InteropServices.NativeMemory.AllocZeroed(32);

    internal void FlushJumpCache()
    {
        Array.Clear(_jumpSup);
        Array.Clear(_jumpUser);
    }

    private Decoder DecoderFor(int bitness) => bitness switch
    {
        64 => _dec64 ??= Decoder.Create(64, _reader, DecoderOptions.None),
        32 => _dec32 ??= Decoder.Create(32, _reader, DecoderOptions.None),
        _ => _dec16 ??= Decoder.Create(16, _reader, DecoderOptions.None),
    };

    internal ulong CodeLinear(ulong ip) => Bitness == 64 ? ip : (uint)(Seg[CS].Base + ip);

    private DecodedBlock GetBlock()
    {
        ulong rip = Rip;
        var cache = Cpl == 3 ? _jumpUser : _jumpSup;
        int slot = (int)(rip ^ (rip >> 12)) & (JumpCacheSize - 1);
        var b = cache[slot];
        if (b != null && b.Ip == rip && b.Valid && b.Bitness == Bitness) return b;
        b = LookupOrDecode(rip);
        if (b.Count > 0 && b.Valid) cache[slot] = b;
        return b;
    }

    private DecodedBlock LookupOrDecode(ulong rip)
    {
        ulong lin = CodeLinear(rip);
        ulong phys = Translate(lin, Access.Fetch, Cpl == 3);
        var b = _blocks.Lookup(phys, rip, Bitness);
        if (b != null && b.Valid) return b;

        byte* page = _mem.GetPage(phys >> 12, false);
        if (page == null)
            throw Exit(VcpuExitReason.InternalError, $"instruction fetch from non-RAM guest-physical 0x{phys:X}");

        var dec = DecoderFor(Bitness);
        _reader.Ptr = page;
        _reader.Pos = (int)(phys & 0xFFF);
        _reader.Limit = 4096;
        dec.IP = rip;
        int n = 0;
        bool cacheable = true;
        while (n < MaxBlockInsns)
        {
            int start = _reader.Pos;
            dec.Decode(out Instruction ins);
            if (ins.IsInvalid && dec.LastError == DecoderError.NoMoreBytes)
            {
                if (n > 0) break;
                // The instruction crosses into the next page: decode it alone from a spill buffer.
                int have = 4096 - start;
                for (int k = 0; k < have; k++) _spill[k] = page[start + k];
                ulong nextLin = CodeLinear(rip + (ulong)have);
                ulong nextPhys = Translate(nextLin, Access.Fetch, Cpl == 3);
                byte* next = _mem.GetPage(nextPhys >> 12, false);
                if (next == null)
                    throw Exit(VcpuExitReason.InternalError, $"instruction fetch from non-RAM guest-physical 0x{nextPhys:X}");
                for (int k = have; k < 15; k++) _spill[k] = next[k - have];
                _reader.Ptr = _spill; _reader.Pos = 0; _reader.Limit = 15;
                dec.IP = rip;
                dec.Decode(out ins);
                Fill(ref _scratch[0], ins, _spill);
                n = 1;
                cacheable = false;
                break;
            }
            Fill(ref _scratch[n], ins, page + start);
            n++;
            if (ins.IsInvalid || EndsBlock(ins)) break;
        }
        var insns = new DecodedInsn[n];
        Array.Copy(_scratch, insns, n);
        b = new DecodedBlock(insns, n, phys, rip, Bitness);
        if (cacheable)
        {
            _blocks.Add(b);
            DropWritableFrame(phys >> 12);
        }
        else b.Valid = false;
        return b;
    }

    private static bool EndsBlock(in Instruction ins)
    {
        var fc = ins.FlowControl;
        return fc != FlowControl.Next;
    }

    private void Fill(ref DecodedInsn d, in Instruction ins, byte* bytes)
    {
        d.I = ins;
        d.Op = ins.Mnemonic;
        d.Length = (byte)ins.Length;
        // Address size: the mode's default, flipped by a 0x67 prefix.
        bool a67 = false;
        for (int k = 0; k < ins.Length; k++)
        {
            byte p = bytes[k];
            if (p == 0x67) { a67 = true; continue; }
            if (p is 0x66 or 0xF2 or 0xF3 or 0xF0 or 0x26 or 0x2E or 0x36 or 0x3E or 0x64 or 0x65) continue;
            break;
        }
        d.AddrSize = (byte)(Bitness switch
        {
            64 => a67 ? 4 : 8,
            32 => a67 ? 2 : 4,
            _ => a67 ? 4 : 2,
        });
        d.OpSize = 0;
        if (ins.OpCount > 0)
        {
            var k0 = ins.Op0Kind;
            if (k0 == OpKind.Register) d.OpSize = (byte)ins.Op0Register.GetSize();
            else if (k0 == OpKind.Memory) d.OpSize = (byte)ins.MemorySize.GetSize();
        }
    }

    private void RunBlock()
    {
        CurIp = Rip;
        DecodedBlock b = GetBlock();
        var insns = b.Insns;
        int n = b.Count;
        bool single = Shadow || _replayCount > 0;
        if (single) { n = 1; Shadow = false; }
        for (int i = 0; i < n; i++)
        {
            ref DecodedInsn d = ref insns[i];
            CurIp = d.I.IP;
            Rip = d.I.NextIP;
            Execute(ref d);
            _retired++;
            if (Stop)
            {
                Stop = false;
                break;
            }
        }
        // The instruction that consumed MMIO results has completed.
        if (single) { _replayCount = 0; _replayIdx = 0; }
    }
}
