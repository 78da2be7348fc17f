using System.Runtime.CompilerServices;
using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>Finding (or decoding) the block at CS:RIP and running it.</summary>
internal unsafe partial class X86Vcpu
{
    private const int MaxBlockInsns = 64;
    /// <summary>Jump-cache slots: user code (flushed by every CR3 write), and the kernel's, which stays across
    /// them and holds a Linux kernel's working set of blocks (8,192 slots thrashed on fork and exec).</summary>
    private const int UserJumpCacheSize = 8192, SupJumpCacheSize = 32768;
    private const int CodePageFilterBits = 4096;

    /// <summary>A jump-cache slot; it holds only while its epoch is the cache's, so a flush is one increment.</summary>
    private struct JumpEntry
    {
        public DecodedBlock? Block;
        public uint Epoch;
    }

    /// <summary>RIP-to-block shortcuts, one cache per privilege (CPL 3 and the rest) with the
    /// linear pages their blocks came from as bit filters: INVLPG of a page no cached block came
    /// from (the commonest case: data pages) leaves the caches alone.</summary>
    private sealed class JumpCache
    {
        public readonly JumpEntry[] Entries;
        public readonly int Mask;

        public JumpCache(int size)
        {
            Entries = new JumpEntry[size];
            Mask = size - 1;
        }

        public uint Epoch = 1;
        /// <summary>Bit (vpn mod 4096) per 4 KiB page and (lin >> 21 mod 4096) per large page.</summary>
        public readonly ulong[] Pages = new ulong[CodePageFilterBits / 64], LargePages = new ulong[CodePageFilterBits / 64];
        /// <summary>A block came through a 1 GiB page.</summary>
        public bool Huge;

        /// <summary>Code-fetch translations (linear page to guest-physical page) valid in the same
        /// epoch: a jump-cache miss on a page seen since the last flush needs no page walk. Adding
        /// one notes its page in the filters, so every block the cache takes is covered by them.</summary>
        private const int FetchSlots = 1024;
        /// <summary>One slot's fields side by side: a lookup, made by every compiled hop into another page, then waits
        /// for one cache line rather than one per field.</summary>
        private struct FetchSlot
        {
            public uint Epoch;
            public ulong Vpn, Phys;
        }
        private readonly FetchSlot[] _fetch = new FetchSlot[FetchSlots];

        public bool TryFetch(ulong lin, out ulong phys)
        {
            ulong vpn = lin >> 12;
            ref FetchSlot f = ref _fetch[(int)(vpn & (FetchSlots - 1))];
            bool hit = f.Epoch == Epoch && f.Vpn == vpn;
            phys = hit ? f.Phys | (lin & 0xFFF) : 0;
            return hit;
        }

        /// <summary>Notes again a translation this epoch already proved: a block found in the jump cache in the
        /// current epoch came from <paramref name="phys"/> through the page of <paramref name="lin"/>, which the
        /// filters hold since its lookup.</summary>
        public void Refetch(ulong lin, ulong phys)
        {
            ulong vpn = lin >> 12;
            _fetch[(int)(vpn & (FetchSlots - 1))] = new FetchSlot { Epoch = Epoch, Vpn = vpn, Phys = phys & ~0xFFFUL };
        }

        public void AddFetch(ulong lin, ulong phys, int leaf)
        {
            Refetch(lin, phys);
            Note(lin, leaf);
        }

        /// <summary>Lets go of the blocks no lookup can return any more (a past epoch's, or dropped): the slots
        /// would otherwise keep aged-out blocks, and their compiled code, alive for as long as nothing reuses them.</summary>
        public void Sweep()
        {
            for (int i = 0; i < Entries.Length; i++)
            {
                ref JumpEntry e = ref Entries[i];
                if (e.Block is { } b && (e.Epoch != Epoch || !b.Valid))
                    e.Block = null;
            }
        }

        public void Flush()
        {
            if (++Epoch == 0)
            {
                Array.Clear(Entries);
                Array.Clear(_fetch);
                Epoch = 1;
            }
            Array.Clear(Pages);
            Array.Clear(LargePages);
            Huge = false;
        }

        /// <summary>Records the page a code fetch went through (<paramref name="leaf"/> as
        /// <see cref="X86Vcpu._lastWalkLeaf"/>: 0 4 KiB, 1 2 MiB, 2 1 GiB, 3 4 MiB).</summary>
        public void Note(ulong lin, int leaf)
        {
            switch (leaf)
            {
                case 0: Set(Pages, lin >> 12); break;
                case 1: Set(LargePages, lin >> 21); break;
                case 3: Set(LargePages, (lin >> 21) & ~1UL); Set(LargePages, (lin >> 21) | 1); break;
                default: Huge = true; break;
            }
        }

        public bool MayHold(ulong lin) => Huge || Test(Pages, lin >> 12) || Test(LargePages, lin >> 21);

        private static void Set(ulong[] bits, ulong n) => bits[(n >> 6) & (CodePageFilterBits / 64 - 1)] |= 1UL << (int)(n & 63);

        private static bool Test(ulong[] bits, ulong n) => (bits[(n >> 6) & (CodePageFilterBits / 64 - 1)] & (1UL << (int)(n & 63))) != 0;
    }

    private readonly JumpCache _jumpSup = new(SupJumpCacheSize), _jumpUser = new(UserJumpCacheSize);
    /// <summary>The engine's aging passes this vCPU's jump caches were swept after (<see cref="X86Engine.AgingPasses"/>).</summary>
    private int _sweptAgingPasses;
    private readonly PointerCodeReader _reader = new();
    private Decoder? _dec16, _dec32, _dec64;
    private readonly DecodedInsn[] _scratch = new DecodedInsn[MaxBlockInsns];
    private readonly byte* _spill = (byte*)System.Runtime.InteropServices.NativeMemory.AllocZeroed(32);

    /// <summary>The supervisor jump cache holds a block or translation reached through a non-global page.</summary>
    private bool _jumpSupNonGlobal;

    /// <summary>Drops the RIP-to-block shortcuts; when only non-global translations go (a CR3 write),
    /// supervisor entries reached through global pages (a kernel's text) stay.</summary>
    internal void FlushJumpCache(bool includeGlobal = true)
    {
        _jumpUser.Flush();
        if (Stats) S.JumpFlushUser++;
        if (includeGlobal || _jumpSupNonGlobal)
        {
            if (Stats) S.JumpFlushSup++;
            _jumpSup.Flush();
            _jumpSupNonGlobal = false;
        }
    }

    /// <summary>INVLPG: drops the shortcuts only when a cached block may have come through that page.</summary>
    internal void FlushJumpCachePage(ulong lin)
    {
        if (_jumpUser.MayHold(lin)) { _jumpUser.Flush(); if (Stats) S.JumpFlushUser++; }
        if (_jumpSup.MayHold(lin))
        {
            if (Stats) S.JumpFlushSup++;
            _jumpSup.Flush();
            _jumpSupNonGlobal = false;
        }
    }

    /// <summary>For compiled code leaving by a RET or an indirect branch (RIP already stored): the compiled
    /// block the run loop would find at RIP in the jump cache's current epoch (the same checks as
    /// <see cref="GetBlock"/>'s hit, and the same aging stamp), or null to return to the run loop.</summary>
    internal DecodedBlock? IndirectSuccessor()
    {
        ulong rip = Rip;
        var cache = Cpl == 3 ? _jumpUser : _jumpSup;
        ref JumpEntry e = ref cache.Entries[(int)(rip ^ (rip >> 13)) & cache.Mask];
        var b = e.Block;
        if (b == null || e.Epoch != cache.Epoch || b.Ip != rip || !b.Valid || b.Bitness != Bitness || b.CsBase != Seg[CS].Base) return null;
        if (b.Entry == 0) return null;
        if (Bitness != 64 && !WithinCsLimit(b)) return null;
        int age = _engine.CodeEpoch;
        if (b.LastRun != age) b.LastRun = age;
        return b;
    }

    /// <summary>For compiled code about to enter a linked successor in another linear page (its linear
    /// address): whether this vCPU's code-fetch translation of that page, made in the current
    /// epoch of its jump cache for the CPL (so with this CPL's rights, and dropped by the same CR3 writes and
    /// INVLPGs that drop jump-cache entries), leads to the successor's bytes. When the translation's slot went to
    /// another page, the jump cache holding the successor itself at RIP in the current epoch proves the same
    /// (its lookup translated the page in this epoch), and the slot is noted again; that check costs only here,
    /// not on every jump-cache hit of the run loop. Otherwise compiled code goes back to the run loop, which
    /// walks the page tables as for any jump-cache miss.</summary>
    internal bool LinkedPageHolds(ulong rip, DecodedBlock next)
    {
        var jc = Cpl == 3 ? _jumpUser : _jumpSup;
        if (jc.TryFetch(CodeLinear(rip), out ulong phys)) return phys == next.Phys;
        ref JumpEntry e = ref jc.Entries[(int)(rip ^ (rip >> 13)) & jc.Mask];
        if (e.Block != next || e.Epoch != jc.Epoch || next.Ip != rip) return false;
        jc.Refetch(CodeLinear(rip), next.Phys);
        return true;
    }

    /// <summary>For compiled code about to enter a linked successor that is one instruction running into the
    /// next linear page (<see cref="DecodedBlock.HasTail"/>): whether that page still leads to the tail's bytes,
    /// by the same proofs as <see cref="LinkedPageHolds"/> (the jump cache's lookup of such a block checked
    /// the tail's translation in the current epoch).</summary>
    internal bool LinkedTailHolds(DecodedBlock next)
    {
        var jc = Cpl == 3 ? _jumpUser : _jumpSup;
        ulong tail = (CodeLinear(next.Ip) | 0xFFF) + 1;
        if (jc.TryFetch(tail, out ulong phys)) return (phys & ~0xFFFUL) == next.TailPhys;
        ref JumpEntry e = ref jc.Entries[(int)(next.Ip ^ (next.Ip >> 13)) & jc.Mask];
        return e.Block == next && e.Epoch == jc.Epoch;
    }

    private Decoder DecoderFor(int bitness) => bitness switch
    {
        64 => _dec64 ??= Decoder.Create(64, _reader, DecoderOptions.None),
        32 => _dec32 ??= Decoder.Create(32, _reader, DecoderOptions.None),
        _ => _dec16 ??= Decoder.Create(16, _reader, DecoderOptions.None),
    };

    internal ulong CodeLinear(ulong ip) => Bitness == 64 ? ip : (uint)(Seg[CS].Base + ip);

    /// <summary>The block at RIP; null when fetching it page-faulted (the fault in <see cref="Abort"/>).</summary>
    private DecodedBlock? GetBlock()
    {
        ulong rip = Rip;
        var cache = Cpl == 3 ? _jumpUser : _jumpSup;
        int slot = (int)(rip ^ (rip >> 13)) & cache.Mask;
        ref JumpEntry e = ref cache.Entries[slot];
        var b = e.Block;
        ulong csBase = Seg[CS].Base;
        int age = _engine.CodeEpoch;
        int aged = Volatile.Read(ref _engine.AgingPasses);
        if (aged != _sweptAgingPasses)
        {
            _sweptAgingPasses = aged;
            _jumpSup.Sweep();
            _jumpUser.Sweep();
            b = e.Block;
        }
        if (b != null && e.Epoch == cache.Epoch && b.Ip == rip && b.Valid && b.Bitness == Bitness && b.CsBase == csBase)
        {
            // Written once per aging epoch, so that vCPUs running the same code do not share a dirty line.
            if (b.LastRun != age) b.LastRun = age;
            return b;
        }
        // A slot left from a past epoch (a CR3 write, an INVLPG) still names the block it held: when the
        // RIP's page translates to where that block came from, it is the block the lookup would return.
        var stale = b != null && b.Ip == rip && b.Valid && !b.HasTail && b.Bitness == Bitness && b.CsBase == csBase ? b : null;
        b = LookupOrDecode(rip, stale);
        if (b == null) return null;
        b.LastRun = age;
        // Blocks are shared; the jump cache keeps CS-base-specific copies of the reference only.
        if (b.Count > 0 && b.Valid && b.CsBase == csBase)
        {
            // LookupOrDecode noted the page (and a non-global one) when it translated it this epoch.
            e.Block = b;
            e.Epoch = cache.Epoch;
        }
        return b;
    }

    /// <summary>A fetch the memory refused (<see cref="IGuestMemory.MayExecute"/>): the instruction at
    /// <paramref name="rip"/> has not started.</summary>
    private ExitSignal FetchDenied(ulong rip, ulong phys)
    {
        Rip = rip;
        _exit = default;
        _exit.Address = phys;
        return Exit(VcpuExitReason.FetchDenied);
    }

    /// <summary>The block at <paramref name="rip"/>, decoded if no cached one holds; null when its fetch page-faulted,
    /// the fault recorded in <see cref="Abort"/> (other faults are thrown).</summary>
    private DecodedBlock? LookupOrDecode(ulong rip, DecodedBlock? stale = null)
    {
        if (Stats) { S.Lookups++; if (Cpl == 3) S.LookupsUser++; }
        if (Bitness == 64 && !Canonical(rip)) throw GP();
        if (Bitness != 64 && rip > Seg[CS].Limit) throw GP();
        ulong lin = CodeLinear(rip);
        var jc = Cpl == 3 ? _jumpUser : _jumpSup;
        if (!jc.TryFetch(lin, out ulong phys))
        {
            // The instruction at rip is the one an exit in this walk (a paged-out page table) restarts.
            CurIp = rip;
            if (!TranslateSoft(lin, Access.Fetch, Cpl == 3, out phys, out bool global)) return null;
            jc.AddFetch(lin, phys, _lastWalkLeaf);
            if (!global && jc == _jumpSup) _jumpSupNonGlobal = true;
        }
        if (stale != null && stale.Phys == phys)
        {
            if (Stats) S.Revalidated++;
            return stale;
        }
        var b = _blocks.Lookup(phys, rip, Bitness);
        if (b != null && b.Valid && (!b.HasTail || FetchTail(rip, phys) == b.TailPhys)) return b;

        if (Stats) S.Decodes++;
        if (!_mem.MayExecute(phys >> 12)) throw FetchDenied(rip, phys);
        byte* page = _mem.GetPage(phys >> 12, false);
        if (page == null && _mem.IsPaged(phys >> 12)) throw FetchDenied(rip, phys);
        if (page == null)
            throw Exit(VcpuExitReason.InternalError, $"instruction fetch from non-RAM guest-physical 0x{phys:X}");

        var dec = DecoderFor(Bitness);
        _reader.Ptr = page;
        _reader.Pos = (int)(phys & 0xFFF);
        _reader.Limit = 4096;
        dec.IP = rip;
        int n = 0;
        bool cacheable = true;
        ulong tailPhys = 0;
        bool hasTail = false;
        bool followed = false;
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
                ulong nextPhys = FetchTail(rip, phys);
                if (!_mem.MayExecute(nextPhys >> 12)) throw FetchDenied(rip, nextPhys & ~0xFFFUL);
                byte* next = _mem.GetPage(nextPhys >> 12, false);
                if (next == null && _mem.IsPaged(nextPhys >> 12)) throw FetchDenied(rip, nextPhys & ~0xFFFUL);
                if (next == null)
                    throw Exit(VcpuExitReason.InternalError, $"instruction fetch from non-RAM guest-physical 0x{nextPhys:X}");
                for (int k = have; k < 15; k++) _spill[k] = next[k - have];
                _reader.Ptr = _spill; _reader.Pos = 0; _reader.Limit = 15;
                dec.IP = rip;
                dec.Decode(out ins);
                Fill(ref _scratch[0], ins, _spill);
                n = 1;
                // Cached like any block, indexed under both frames; found again only while the tail's page maps
                // where it did (the jump cache holds it while neither page's translation is flushed).
                tailPhys = nextPhys;
                hasTail = true;
                cacheable = !ins.IsInvalid && ins.Length > have;
                break;
            }
            Fill(ref _scratch[n], ins, page + start);
            n++;
            if (ins.IsInvalid) break;
            if (EndsBlock(ins))
            {
                if (n == MaxBlockInsns || !FollowsInto(ins, rip, n)) break;
                // One compiled method runs on through the branch: no hop, no return to the run loop.
                _reader.Pos = (int)(ins.NearBranchTarget & 0xFFF);
                dec.IP = ins.NearBranchTarget;
                followed = true;
            }
        }
        var insns = new DecodedInsn[n];
        Array.Copy(_scratch, insns, n);
        b = new DecodedBlock(insns, n, phys, rip, Bitness) { CsBase = Seg[CS].Base, LastRun = _engine.CodeEpoch, HasTail = hasTail, TailPhys = tailPhys };
        int length = (int)(insns[n - 1].I.NextIP - rip);
        if (!cacheable) b.Valid = false;
        else
        {
            // Every vCPU's fast write path must stop bypassing the self-modifying-code check.
            if (followed ? _blocks.Add(b, CodeChunks(b)) : _blocks.Add(b, length))
                _engine.OnNewCodeFrame(phys >> 12);
            int inFirst = 4096 - (int)(phys & 0xFFF);
            if (hasTail && _blocks.AddTail(b, tailPhys >> 12, length - inFirst))
                _engine.OnNewCodeFrame(tailPhys >> 12);
        }
        return b;
    }

    /// <summary>The guest-physical page holding the bytes after the page of <paramref name="rip"/> (at
    /// <paramref name="phys"/>), translated for a fetch; noted in the jump cache's page filters like the first
    /// page, so that a flush of either page's translation drops the blocks that span them.</summary>
    private ulong FetchTail(ulong rip, ulong phys)
    {
        ulong nextLin = CodeLinear(rip + (ulong)(4096 - (int)(phys & 0xFFF)));
        var jc = Cpl == 3 ? _jumpUser : _jumpSup;
        if (jc.TryFetch(nextLin, out ulong nextPhys)) return nextPhys & ~0xFFFUL;
        CurIp = rip;
        nextPhys = Translate(nextLin, Access.Fetch, Cpl == 3, out bool global);
        jc.AddFetch(nextLin, nextPhys, _lastWalkLeaf);
        if (!global && jc == _jumpSup) _jumpSupNonGlobal = true;
        return nextPhys & ~0xFFFUL;
    }

    /// <summary>Whether the block being decoded (from <paramref name="rip"/>, <paramref name="n"/> instructions so
    /// far, the last <paramref name="ins"/>) goes on at the target of that direct JMP or CALL: in 64-bit code (an IP
    /// is its linear address, no CS limit), and in 32-bit code under a page-aligned CS base (an IP's page is then its
    /// linear page; a lookup under another CS base finds the block only where the same IP has the same physical
    /// address, so under a base with the same low 12 bits, aligned too; the run loop and the compiled hops check the
    /// highest byte of the block, <see cref="DecodedBlock.LastByte"/>, against the CS limit, and the interpreter
    /// stops at the first instruction past it, as it would at the branch's target), within the block's page (so through the translation and permissions it was fetched under,
    /// and invalidated with it by any write to the frame) and not back into the block itself, which stays a loop the
    /// compiled code runs as one.</summary>
    private bool FollowsInto(in Instruction ins, ulong rip, int n)
    {
        if (Bitness == 64)
        {
            if (ins.Op0Kind != OpKind.NearBranch64) return false;
            if (ins.Mnemonic != Mnemonic.Jmp && (ins.Mnemonic != Mnemonic.Call || ins.StackPointerIncrement != -8)) return false;
        }
        else
        {
            if (Bitness != 32 || (Seg[CS].Base & 0xFFF) != 0 || ins.Op0Kind != OpKind.NearBranch32) return false;
            if (ins.Mnemonic != Mnemonic.Jmp && (ins.Mnemonic != Mnemonic.Call || ins.StackPointerIncrement != -4)) return false;
        }
        ulong target = ins.NearBranchTarget;
        if ((target ^ rip) >> 12 != 0) return false;
        for (int k = 0; k < n; k++)
        {
            ref Instruction d = ref _scratch[k].I;
            if (target - d.IP < (ulong)d.Length) return false;
        }
        return true;
    }

    /// <summary>The 64-byte chunks of the block's page its instructions occupy, for a block decoded through
    /// branches (its bytes are not one run from its start).</summary>
    private static ulong CodeChunks(DecodedBlock b)
    {
        ulong mask = 0;
        int first = (int)(b.Phys & 0xFFF);
        for (int k = 0; k < b.Count; k++)
        {
            ref Instruction d = ref b.Insns[k].I;
            int off = first + (int)(long)(d.IP - b.Ip);
            int last = Math.Min(4095, off + d.Length - 1);
            for (int c = off >> 6; c <= last >> 6; c++) mask |= 1UL << c;
        }
        return mask;
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
        d.MemBytes = (ushort)Math.Max(1, ins.MemorySize.GetSize());
        if (ins.OpCount > 0)
        {
            var k0 = ins.Op0Kind;
            if (k0 == OpKind.Register) d.OpSize = (byte)ins.Op0Register.GetSize();
            else if (k0 == OpKind.Memory) d.OpSize = (byte)ins.MemorySize.GetSize();
        }
        ClassifyFast(ref d);
    }

    /// <summary>The form of <paramref name="op"/> in the run starting at <paramref name="add"/> (Add, Or, And, Sub,
    /// Xor, Cmp, Test), or <paramref name="other"/> for ADC and SBB.</summary>
    private static FastForm ByOp(AluOp op, FastForm add, FastForm other) => op switch
    {
        AluOp.Add => add,
        AluOp.Or => add + 1,
        AluOp.And => add + 2,
        AluOp.Sub => add + 3,
        AluOp.Xor => add + 4,
        AluOp.Cmp => add + 5,
        AluOp.Test => add + 6,
        _ => other,
    };

    private static bool IsGpr48(Register r) => r.IsGPR32() || r.IsGPR64();
    private static bool IsGpr816(Register r) => r.IsGPR8() || r.IsGPR16();

    /// <summary>Picks a fast form for the commonest full-width integer shapes.</summary>
    private static void ClassifyFast(ref DecodedInsn d)
    {
        d.Form = FastForm.None;
        d.MemSplit = false;
        d.MemStack = false;
        d.MemBase = d.MemIndex = 0xFF;
        d.SetHigh(0, false);
        d.SetHigh(1, false);
        ref Instruction i = ref d.I;
        int n = i.OpCount;
        bool hasMem = false;
        for (int k = 0; k < n; k++) if (i.GetOpKind(k) == OpKind.Memory) hasMem = true;
        if (hasMem)
        {
            var b = i.MemoryBase; var x = i.MemoryIndex;
            d.MemStack = i.MemorySegment is not (Register.FS or Register.GS) && b.GetFullRegister() is Register.RSP or Register.RBP;
            bool okBase = b == Register.None || b == Register.RIP || b == Register.EIP || (d.AddrSize == 8 ? b.IsGPR64() : d.AddrSize == 4 && b.IsGPR32());
            bool okIndex = x == Register.None || (d.AddrSize == 8 ? x.IsGPR64() : d.AddrSize == 4 && x.IsGPR32());
            if (!okBase || !okIndex || d.AddrSize == 2) return;
            if (b != Register.None && b != Register.RIP && b != Register.EIP) d.MemBase = (byte)b.GetFullRegister().GetNumber();
            if (x != Register.None) d.MemIndex = (byte)x.GetFullRegister().GetNumber();
            d.MemShift = (byte)System.Numerics.BitOperations.Log2((uint)i.MemoryIndexScale);
            d.MemSeg = (byte)(i.MemorySegment - Register.ES);
            d.MemSplit = true;
        }
        if (i.HasLockPrefix || i.HasRepPrefix || i.HasRepnePrefix) return;
        bool r0 = n > 0 && i.Op0Kind == OpKind.Register && IsGpr48(i.Op0Register);
        bool r1 = n > 1 && i.Op1Kind == OpKind.Register && IsGpr48(i.Op1Register);
        bool imm1 = n > 1 && i.Op1Kind is OpKind.Immediate8 or OpKind.Immediate16 or OpKind.Immediate8to16 or OpKind.Immediate8to32 or OpKind.Immediate8to64 or OpKind.Immediate32 or OpKind.Immediate32to64 or OpKind.Immediate64;
        // 8- and 16-bit GPR operands (AH..BH are bits 15:8 of their register).
        bool n0 = n > 0 && i.Op0Kind == OpKind.Register && IsGpr816(i.Op0Register);
        bool n1 = n > 1 && i.Op1Kind == OpKind.Register && IsGpr816(i.Op1Register);
        if (r0) d.R0 = (byte)i.Op0Register.GetFullRegister().GetNumber();
        if (r1) d.R1 = (byte)i.Op1Register.GetFullRegister().GetNumber();
        if (n0) { d.R0 = (byte)s_gpr[(int)i.Op0Register]; d.SetHigh(0, s_high[(int)i.Op0Register]); }
        if (n1) { d.R1 = (byte)s_gpr[(int)i.Op1Register]; d.SetHigh(1, s_high[(int)i.Op1Register]); }
        int alu = d.Op switch
        {
            Mnemonic.Add => (int)AluOp.Add, Mnemonic.Or => (int)AluOp.Or, Mnemonic.Adc => (int)AluOp.Adc, Mnemonic.Sbb => (int)AluOp.Sbb,
            Mnemonic.And => (int)AluOp.And, Mnemonic.Sub => (int)AluOp.Sub, Mnemonic.Xor => (int)AluOp.Xor, Mnemonic.Cmp => (int)AluOp.Cmp,
            Mnemonic.Test => (int)AluOp.Test, _ => -1,
        };
        bool memSplit = d.MemBase != 0xFF || d.MemIndex != 0xFF || i.MemoryBase is Register.None or Register.RIP or Register.EIP;
        if (alu >= 0 && r0 && n == 2)
        {
            if (r1 && i.Op0Register.GetSize() == i.Op1Register.GetSize()) { d.Form = ByOp((AluOp)alu, FastForm.AddRR, FastForm.AluRR); d.AluKind = (byte)alu; }
            else if (imm1) { d.Form = ByOp((AluOp)alu, FastForm.AddRI, FastForm.AluRI); d.AluKind = (byte)alu; d.Imm = i.GetImmediate(1) & Mask(d.OpSize); }
            else if (i.Op1Kind == OpKind.Memory && memSplit) { d.Form = FastForm.AluRM; d.AluKind = (byte)alu; }
            return;
        }
        if (alu >= 0 && n0 && n == 2)
        {
            if (n1 && i.Op0Register.GetSize() == i.Op1Register.GetSize()) { d.Form = FastForm.AluRRn; d.AluKind = (byte)alu; }
            else if (imm1) { d.Form = FastForm.AluRIn; d.AluKind = (byte)alu; d.Imm = i.GetImmediate(1) & Mask(d.OpSize); }
            else if (i.Op1Kind == OpKind.Memory && memSplit) { d.Form = FastForm.AluRMn; d.AluKind = (byte)alu; }
            return;
        }
        if (alu >= 0 && n == 2 && i.Op0Kind == OpKind.Memory && memSplit)
        {
            if (r1 && d.OpSize >= 4) { d.Form = FastForm.AluMR; d.AluKind = (byte)alu; }
            else if (imm1) { d.Form = FastForm.AluMI; d.AluKind = (byte)alu; d.Imm = i.GetImmediate(1) & Mask(d.OpSize); }
            return;
        }
        switch (d.Op)
        {
            case Mnemonic.Mov:
                if (r0 && r1) d.Form = FastForm.MovRR;
                else if (r0 && imm1) { d.Form = FastForm.MovRI; d.Imm = i.GetImmediate(1) & Mask(d.OpSize); }
                else if (r0 && n == 2 && i.Op1Kind == OpKind.Memory) d.Form = FastForm.MovRM;
                else if (r1 && i.Op0Kind == OpKind.Memory) { d.Form = FastForm.MovMR; d.OpSize = (byte)i.Op1Register.GetSize(); }
                else if (imm1 && n == 2 && i.Op0Kind == OpKind.Memory && memSplit) { d.Form = FastForm.MovMI; d.Imm = i.GetImmediate(1) & Mask(d.OpSize); }
                return;
            case Mnemonic.Movzx:
                if (r0 && i.Op1Kind == OpKind.Memory && memSplit) { d.Form = FastForm.MovzxRM; d.AluKind = (byte)i.MemorySize.GetSize(); }
                else if (r0 && n1) { d.Form = FastForm.MovxRR; d.AluKind = (byte)i.Op1Register.GetSize(); d.Imm = 0; }
                return;
            case Mnemonic.Movsx:
            case Mnemonic.Movsxd:
                if (r0 && (n1 || r1)) { d.Form = FastForm.MovxRR; d.AluKind = (byte)i.Op1Register.GetSize(); d.Imm = 1; }
                return;
            case Mnemonic.Shl:
            case Mnemonic.Sal:
            case Mnemonic.Shr:
            case Mnemonic.Sar:
            case Mnemonic.Rol:
            case Mnemonic.Ror:
                d.AluKind = (byte)(d.Op switch { Mnemonic.Shr => 1, Mnemonic.Sar => 2, Mnemonic.Rol => 3, Mnemonic.Ror => 4, _ => 0 });
                if (r0 && n == 2 && i.Op1Kind == OpKind.Immediate8)
                {
                    d.Form = FastForm.ShiftRI;
                    d.Imm = i.GetImmediate(1) & (d.OpSize == 8 ? 63UL : 31UL);
                }
                else if (r0 && n == 2 && i.Op1Kind == OpKind.Register && i.Op1Register == Register.CL) d.Form = FastForm.ShiftRC;
                return;
            case Mnemonic.Imul:
                if (r0 && r1 && n == 2) d.Form = FastForm.ImulRR;
                else if (r0 && r1 && n == 3 && i.Op2Kind is OpKind.Immediate8to32 or OpKind.Immediate8to64 or OpKind.Immediate32 or OpKind.Immediate32to64)
                {
                    d.Form = FastForm.ImulRRI;
                    d.Imm = i.GetImmediate(2);
                }
                return;
            case Mnemonic.Not: if (r0) d.Form = FastForm.NotR; return;
            case Mnemonic.Neg: if (r0) d.Form = FastForm.NegR; return;
            case Mnemonic.Nop: case Mnemonic.Prefetchnta: case Mnemonic.Prefetcht0: case Mnemonic.Prefetcht1:
            case Mnemonic.Prefetcht2: case Mnemonic.Prefetchw: case Mnemonic.Prefetch: case Mnemonic.Endbr32: case Mnemonic.Endbr64:
                d.Form = FastForm.Nop;
                return;
            case Mnemonic.Jmp:
                if (i.Op0Kind is OpKind.NearBranch32 or OpKind.NearBranch64) { d.Form = FastForm.JmpRel; d.Imm = i.NearBranchTarget; }
                return;
            case Mnemonic.Call:
                if (i.Op0Kind is OpKind.NearBranch32 or OpKind.NearBranch64) { d.Form = FastForm.CallRel; d.Imm = i.NearBranchTarget; d.AluKind = (byte)-i.StackPointerIncrement; }
                return;
            case Mnemonic.Ret:
                if (n == 0 && i.StackPointerIncrement >= 4) { d.Form = FastForm.RetNear; d.AluKind = (byte)i.StackPointerIncrement; }
                return;
            case Mnemonic.Inc: if (r0) d.Form = FastForm.IncR; return;
            case Mnemonic.Dec: if (r0) d.Form = FastForm.DecR; return;
            case Mnemonic.Lea: if (r0) d.Form = FastForm.Lea; return;
            case Mnemonic.Push:
                if (r0 && i.StackPointerIncrement == -d.OpSize) d.Form = FastForm.PushR;
                return;
            case Mnemonic.Pop:
                if (r0 && i.StackPointerIncrement == d.OpSize) d.Form = FastForm.PopR;
                return;
        }
        switch (s_cls[(int)d.Op])
        {
            case ClsJcc: d.Form = FastForm.Jcc; d.AluKind = (byte)i.ConditionCode; d.Imm = i.NearBranchTarget; break;
            case ClsCmov: if (r0 && r1) { d.Form = FastForm.CmovRR; d.AluKind = (byte)i.ConditionCode; } break;
            case ClsSet: if (n0 && d.OpSize == 1) { d.Form = FastForm.SetccR; d.AluKind = (byte)i.ConditionCode; } break;
        }
    }

    /// <summary>The block at RIP after the interpreted block <paramref name="prev"/> ran to its end, in the
    /// same jump-cache epoch and CPL class: a successor it remembers when that starts at RIP, else
    /// <see cref="GetBlock"/>'s, remembered when it lies in prev's linear page. The same page proves the
    /// translation: prev was entered through it in this epoch, and whatever drops it (CR3 writes, INVLPG, TLB
    /// flushes) also moves the epoch on; code writes and aging clear Valid.</summary>
    private DecodedBlock? NextBlock(DecodedBlock prev)
    {
        ulong rip = Rip;
        var s = prev.NextFall;
        if (s == null || s.Ip != rip) s = prev.NextOther;
        if (s != null && s.Ip == rip && s.Valid && s.Bitness == Bitness && s.CsBase == Seg[CS].Base)
        {
            int age = _engine.CodeEpoch;
            if (s.LastRun != age) s.LastRun = age;
            if (Stats) S.SuccessorHits++;
            return s;
        }
        s = GetBlock();
        if (s == null) return null;
        ulong csBase = Seg[CS].Base;
        if (s.Count > 0 && s.Valid && !s.HasTail && s.Bitness == prev.Bitness && s.CsBase == csBase && prev.CsBase == csBase
            && (s.Phys ^ prev.Phys) >> 12 == 0 && (CodeLinear(rip) ^ CodeLinear(prev.Ip)) >> 12 == 0)
        {
            ref DecodedInsn last = ref prev.Insns[prev.Count - 1];
            if (rip == last.I.NextIP) prev.NextFall = s; else prev.NextOther = s;
        }
        return s;
    }

    /// <summary>Lines of a block's instructions fetched ahead (the first 40 instructions cover nearly every block).</summary>
    private const int PrefetchInsnBytes = 40 * 64;

    /// <summary>Asks the host CPU for the cache lines the interpreter is about to read: the block's instructions, all
    /// at once rather than one line per instruction as it reaches them, and its remembered successors, one of which
    /// the next <see cref="NextBlock"/> reads. Code that runs now and then (an idle guest's timer interrupt, a few
    /// times a second) finds none of them in the cache after the host ran other work, and each line it then waits
    /// for in turn is most of what interpreting that code costs. A prefetch never faults, so an address the
    /// garbage collector has since moved costs nothing but the fetch.</summary>
    private static void Prefetch(DecodedBlock b, int n)
    {
        if (!System.Runtime.Intrinsics.X86.Sse.IsSupported)
            return;
        byte* p = (byte*)Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(b.Insns));
        int bytes = Math.Min(n * sizeof(DecodedInsn), PrefetchInsnBytes);
        for (int off = 0; off < bytes; off += 64)
            System.Runtime.Intrinsics.X86.Sse.Prefetch0(p + off);
        // The last instruction's end, which a prefetch from its start may not reach.
        System.Runtime.Intrinsics.X86.Sse.Prefetch0(p + bytes - 1);
        if (b.NextFall is { } f)
            System.Runtime.Intrinsics.X86.Sse.Prefetch0((void*)Unsafe.As<DecodedBlock, nint>(ref f));
        if (b.NextOther is { } o)
            System.Runtime.Intrinsics.X86.Sse.Prefetch0((void*)Unsafe.As<DecodedBlock, nint>(ref o));
    }

    /// <summary>Blocks run back to back before the run loop polls for events again.</summary>
    private const int ChainLimit = 32;

    /// <summary>A near CALL the interpreter ran as the last instruction of a block: the block, the return address, and
    /// the jump cache and epoch the block was found under.</summary>
    private struct ReturnEntry
    {
        public DecodedBlock? Block;
        public JumpCache? Cache;
        public ulong Rip;
        public uint Epoch;
    }

    /// <summary>Return-address prediction for interpreted code: a RET that comes back where the matching CALL said
    /// takes the return site as the calling block's fall-through successor (<see cref="NextBlock"/>), where the jump
    /// cache's lookup would have read a slot and a block gone cold since the call. A function called from many places
    /// defeats the RET block's own successor slots; an idle guest's timer interrupt runs mostly such code, once in a
    /// long while, and half of what a jump-cache lookup costs it is waiting for the slot's line. A mismatch (a RET
    /// with no CALL seen, a changed return address) takes the lookup as before.</summary>
    private readonly ReturnEntry[] _returns = new ReturnEntry[ReturnDepth];
    private int _returnTop;
    private const int ReturnDepth = 16;
    /// <summary>RETs whose return site came from the calling block (tests read it).</summary>
    internal long ReturnsPredicted;

    private void RunBlock()
    {
        if (PerInstructionChecks)
        {
            RunOneChecked();
            return;
        }
        // An STI or MOV SS shadow only matters to an event waiting to be delivered after the next instruction:
        // with none pending, the block runs as any other (an event raised meanwhile is taken at a later
        // boundary, as if it had arrived there), which spares a kernel's every local_irq_enable a trip
        // through the single-instruction path.
        bool single = _replayCount > 0 || (Shadow && EventPending());
        int chain = single ? 1 : ChainLimit;
        Shadow = false;
        _dbStep = false;
        _linkFrom = null;
        // The interpreted block just completed, and the jump cache (and its epoch) it was found under.
        DecodedBlock? prev = null;
        JumpCache? prevCache = null;
        uint prevEpoch = 0;
        do
        {
            CurIp = Rip;
            var cache = Cpl == 3 ? _jumpUser : _jumpSup;
            DecodedBlock? b = prev != null && cache == prevCache && cache.Epoch == prevEpoch ? NextBlock(prev) : GetBlock();
            if (b == null) return;
            prev = null;
            prevCache = cache;
            prevEpoch = cache.Epoch;
            if (Stats) StatDispatch(b);
            if (_linkFrom != null) LinkPending(b);
            var insns = b.Insns;
            int n = single ? 1 : b.Count;
            // Compiled code reads none of the decoded instructions.
            if (b.Entry == 0) Prefetch(b, n);
            if (Bitness != 64) n = InstructionsWithinCsLimit(b, n);
            // Compiled code runs whole blocks: not when the CS limit cuts the block.
            if (!single && n == b.Count && TryRunCompiled(b))
            {
                if (Stats) StatBackInRunLoop();
                if (Abort != 0) return;
                if (Stop)
                {
                    Stop = false;
                    break;
                }
                continue;
            }
            if (Stats) StatInterpreted(b, n, single);
            for (int i = 0; i < n; i++)
            {
                ref DecodedInsn d = ref insns[i];
                CurIp = d.I.IP;
                Rip = d.I.NextIP;
                if (d.Form != FastForm.None) ExecFast(ref d); else Execute(ref d);
                if (Abort != 0) return;
                _retired++;
                if (Stop)
                {
                    Stop = false;
                    chain = 0;
                    break;
                }
            }
            if (n == b.Count && !b.HasTail)
            {
                prev = b;
                if (b.Ends == DecodedBlock.EndsWithCall)
                {
                    _returnTop = (_returnTop + 1) & (ReturnDepth - 1);
                    _returns[_returnTop] = new ReturnEntry { Block = b, Cache = prevCache, Rip = insns[n - 1].I.NextIP, Epoch = prevEpoch };
                }
                else if (b.Ends == DecodedBlock.EndsWithReturn)
                {
                    ref ReturnEntry r = ref _returns[_returnTop];
                    _returnTop = (_returnTop - 1) & (ReturnDepth - 1);
                    if (r.Block != null && r.Rip == Rip && r.Cache == prevCache)
                    {
                        prev = r.Block;
                        prevEpoch = r.Epoch;
                        ReturnsPredicted++;
                    }
                    r.Block = null;
                }
            }
            // A block that set TF or armed a breakpoint hands the next one to the checked path.
        } while (--chain > 0 && !_exitRequested && !PerInstructionChecks);
        // The instruction that consumed MMIO results has completed.
        if (single) { _replayCount = 0; _replayIdx = 0; }
    }
}
