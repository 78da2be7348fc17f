using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>Hand-picked edge cases the random generator reaches only by luck: division
/// overflow, shift and rotate counts at the operand width, zero sources for bit scans, REP with
/// DF set over overlapping buffers, ENTER nesting, CMPXCHG16B alignment and the like. They run
/// through the same comparison as the generated cases.</summary>
internal static class DirectedCases
{
    const ulong D = OracleLayout.Data;

    static readonly (string Name, Action<Assembler> Body, Action<OracleCase>? Setup)[] list =
    [
        ("idiv INT64_MIN/-1 (#DE)", a => a.idiv(rcx), c => { c.Gpr[Gpr.Rax] = 1UL << 63; c.Gpr[Gpr.Rdx] = ulong.MaxValue; c.Gpr[Gpr.Rcx] = ulong.MaxValue; }),
        ("idiv INT32_MIN/-1 (#DE)", a => a.idiv(ecx), c => { c.Gpr[Gpr.Rax] = 0x8000_0000; c.Gpr[Gpr.Rdx] = 0xffff_ffff; c.Gpr[Gpr.Rcx] = 0xffff_ffff; }),
        ("idiv INT16_MIN/-1 (#DE)", a => a.idiv(cx), c => { c.Gpr[Gpr.Rax] = 0x0000; c.Gpr[Gpr.Rdx] = 0x8000; c.Gpr[Gpr.Rcx] = 0xffff; }),
        ("idiv INT8_MIN/-1 (#DE)", a => a.idiv(cl), c => { c.Gpr[Gpr.Rax] = 0xff80; c.Gpr[Gpr.Rcx] = 0xff; }),
        ("idiv -7/2", a => a.idiv(rcx), c => { c.Gpr[Gpr.Rax] = unchecked((ulong)-7L); c.Gpr[Gpr.Rdx] = ulong.MaxValue; c.Gpr[Gpr.Rcx] = 2; }),
        ("div quotient overflow (#DE)", a => a.div(ecx), c => { c.Gpr[Gpr.Rdx] = 5; c.Gpr[Gpr.Rcx] = 5; }),
        ("div 8-bit by 1", a => a.div(cl), c => { c.Gpr[Gpr.Rax] = 0x00ff; c.Gpr[Gpr.Rcx] = 1; }),
        ("div 128-by-64", a => a.div(rcx), c => { c.Gpr[Gpr.Rax] = 0x0123456789abcdef; c.Gpr[Gpr.Rdx] = 0x10; c.Gpr[Gpr.Rcx] = 0xfedcba9876543210; }),
        ("mul 64 full", a => { a.mul(rcx); a.seto(bl); a.setc(bh); }, c => { c.Gpr[Gpr.Rax] = ulong.MaxValue; c.Gpr[Gpr.Rcx] = ulong.MaxValue; }),
        ("imul 3-operand overflow", a => { a.imul(rax, rcx, 0x7fffffff); a.seto(bl); }, c => c.Gpr[Gpr.Rcx] = 0x1_0000_0001),
        ("imul 8-bit", a => { a.imul(cl); a.setc(bl); }, c => { c.Gpr[Gpr.Rax] = 0x80; c.Gpr[Gpr.Rcx] = 0xff; }),
        ("shl by 0 keeps flags", a => { a.stc(); a.shl(rax, cl); a.setc(bl); a.sets(bh); }, c => { c.Gpr[Gpr.Rcx] = 64; c.Gpr[Gpr.Rax] = 1UL << 63; }),
        ("shl 32-bit count masked", a => { a.shl(eax, cl); a.setc(bl); }, c => { c.Gpr[Gpr.Rcx] = 33; c.Gpr[Gpr.Rax] = 0xc000_0001; }),
        ("shr by 1 OF", a => { a.shr(eax, 1); a.seto(bl); a.setc(bh); }, c => c.Gpr[Gpr.Rax] = 0x8000_0001),
        ("sar 8-bit by 7", a => { a.sar(al, 7); a.setc(bl); }, c => c.Gpr[Gpr.Rax] = 0x80),
        ("sar 8-bit by 31", a => { a.sar(al, cl); a.setc(bl); a.setz(bh); }, c => { c.Gpr[Gpr.Rax] = 0x40; c.Gpr[Gpr.Rcx] = 31; }),
        ("rcl 8-bit by 9", a => { a.stc(); a.rcl(al, 9); a.setc(bl); }, c => c.Gpr[Gpr.Rax] = 0x5a),
        ("rcr 16-bit by 17", a => { a.clc(); a.rcr(ax, cl); a.setc(bl); }, c => { c.Gpr[Gpr.Rax] = 0x8001; c.Gpr[Gpr.Rcx] = 17; }),
        ("rcl 64-bit by 1 OF", a => { a.stc(); a.rcl(rax, 1); a.seto(bl); a.setc(bh); }, c => c.Gpr[Gpr.Rax] = 0x4000_0000_0000_0000),
        ("rol 16-bit by 16", a => { a.rol(ax, 16); a.setc(bl); }, c => c.Gpr[Gpr.Rax] = 0x8001),
        ("ror 32-bit by 1 OF", a => { a.ror(eax, 1); a.seto(bl); a.setc(bh); }, c => c.Gpr[Gpr.Rax] = 1),
        ("shld 64 by 63", a => { a.shld(rax, rdx, 63); a.setc(bl); }, c => { c.Gpr[Gpr.Rax] = 3; c.Gpr[Gpr.Rdx] = 1UL << 63; }),
        ("shrd 32 by cl 31", a => { a.shrd(eax, edx, cl); a.setc(bl); }, c => { c.Gpr[Gpr.Rax] = 0xffff_fffe; c.Gpr[Gpr.Rdx] = 0x1234_5678; c.Gpr[Gpr.Rcx] = 31; }),
        ("shld 16 by 16", a => { a.shld(ax, dx, 16); a.setc(bl); }, c => { c.Gpr[Gpr.Rax] = 0x1234; c.Gpr[Gpr.Rdx] = 0xabcd; }),
        ("bsf zero source keeps destination", a => { a.bsf(rax, rcx); a.setz(bl); }, c => { c.Gpr[Gpr.Rax] = 0x1234; c.Gpr[Gpr.Rcx] = 0; }),
        ("bsr 32-bit zero-extends", a => a.bsr(eax, ecx), c => { c.Gpr[Gpr.Rax] = ulong.MaxValue; c.Gpr[Gpr.Rcx] = 0x8000_0000; }),
        ("bt memory with large bit offset", a => { a.bt(__qword_ptr[r15], rcx); a.setc(bl); }, c => c.Gpr[Gpr.Rcx] = 8 * 0x300 + 5),
        ("bts memory with negative bit offset", a => { a.bts(__dword_ptr[r15], ecx); a.setc(bl); }, c => c.Gpr[Gpr.Rcx] = unchecked((ulong)-100L)),
        ("lzcnt zero", a => { a.lzcnt(rax, rcx); a.setc(bl); a.setz(bh); }, c => c.Gpr[Gpr.Rcx] = 0),
        ("tzcnt 16-bit zero", a => { a.tzcnt(ax, cx); a.setc(bl); }, c => { c.Gpr[Gpr.Rcx] = 0xffff_0000; c.Gpr[Gpr.Rax] = ulong.MaxValue; }),
        ("popcnt all ones", a => a.popcnt(rax, rcx), c => c.Gpr[Gpr.Rcx] = ulong.MaxValue),
        ("rep movsb overlapping, DF=1", a => { a.std(); a.rep.movsb(); a.cld(); }, c => { c.Gpr[Gpr.Rsi] = D + 0x410; c.Gpr[Gpr.Rdi] = D + 0x418; c.Gpr[Gpr.Rcx] = 40; }),
        ("rep movsq forward overlapping", a => a.rep.movsq(), c => { c.Gpr[Gpr.Rsi] = D + 0x400; c.Gpr[Gpr.Rdi] = D + 0x408; c.Gpr[Gpr.Rcx] = 20; }),
        ("rep stosd rcx=0", a => a.rep.stosd(), c => { c.Gpr[Gpr.Rdi] = D + 0x400; c.Gpr[Gpr.Rcx] = 0; }),
        ("repe cmpsb stops at difference", a => { a.repe.cmpsb(); a.setz(bl); }, c => { c.Gpr[Gpr.Rsi] = D + 0x100; c.Gpr[Gpr.Rdi] = D + 0x100; c.Gpr[Gpr.Rcx] = 50; c.Data[0x120] ^= 1; }),
        ("repne scasb finds byte", a => a.repne.scasb(), c => { c.Gpr[Gpr.Rdi] = D + 0x200; c.Gpr[Gpr.Rcx] = 300; c.Gpr[Gpr.Rax] = c.Data[0x280]; }),
        ("rep stosb runs into unmapped page (#PF mid-string)", a => a.rep.stosb(), c => { c.Gpr[Gpr.Rdi] = D + 0xff0; c.Gpr[Gpr.Rcx] = 64; }),
        ("lodsw DF=1", a => { a.std(); a.lodsw(); a.lodsw(); a.cld(); }, c => c.Gpr[Gpr.Rsi] = D + 0x300),
        ("cmpxchg equal", a => { a.@lock.cmpxchg(__qword_ptr[r15], rcx); a.setz(bl); }, c => { c.Gpr[Gpr.Rax] = BitConverter.ToUInt64(c.Data, 0x800); c.Gpr[Gpr.Rcx] = 0x1111; }),
        ("cmpxchg not equal loads rax", a => { a.cmpxchg(__dword_ptr[r15], ecx); a.setz(bl); }, c => { c.Gpr[Gpr.Rax] = ~BitConverter.ToUInt64(c.Data, 0x800); }),
        ("cmpxchg8b", a => { a.cmpxchg8b(__qword_ptr[r15]); a.setz(bl); }, c => { c.Gpr[Gpr.Rax] = BitConverter.ToUInt32(c.Data, 0x800); c.Gpr[Gpr.Rdx] = BitConverter.ToUInt32(c.Data, 0x804); }),
        ("cmpxchg16b equal", a => { a.@lock.cmpxchg16b(__xmmword_ptr[r15]); a.setz(bl); }, c => { c.Gpr[Gpr.Rax] = BitConverter.ToUInt64(c.Data, 0x800); c.Gpr[Gpr.Rdx] = BitConverter.ToUInt64(c.Data, 0x808); }),
        ("cmpxchg16b misaligned (#GP)", a => a.cmpxchg16b(__xmmword_ptr[r15 + 8]), null),
        ("xadd memory", a => a.@lock.xadd(__word_ptr[r15 + 2], cx), c => c.Gpr[Gpr.Rcx] = 0xffff),
        ("xchg 32-bit zero-extends", a => a.xchg(eax, ecx), c => { c.Gpr[Gpr.Rax] = ulong.MaxValue; c.Gpr[Gpr.Rcx] = ulong.MaxValue - 1; }),
        ("cmov 32-bit false still zero-extends", a => { a.cmp(eax, eax); a.cmovne(ecx, edx); }, c => c.Gpr[Gpr.Rcx] = ulong.MaxValue),
        ("loop rcx=1 falls through", a => { var l = a.CreateLabel(); a.loop(l); a.inc(rbx); a.Label(ref l); a.nop(); }, c => c.Gpr[Gpr.Rcx] = 1),
        ("jrcxz taken", a => { var l = a.CreateLabel(); a.jrcxz(l); a.inc(rbx); a.Label(ref l); a.nop(); }, c => c.Gpr[Gpr.Rcx] = 0),
        ("jecxz ignores upper half", a => { a.db(0x67, 0xe3, 0x03); a.inc(rbx); a.nop(); }, c => c.Gpr[Gpr.Rcx] = 1UL << 32),
        ("loope exits on ZF=0", a => { var l = a.CreateLabel(); a.cmp(eax, 1); a.loope(l); a.inc(rbx); a.Label(ref l); a.nop(); }, c => c.Gpr[Gpr.Rcx] = 5),
        ("bswap 32 and 64", a => { a.bswap(eax); a.bswap(rcx); }, c => { c.Gpr[Gpr.Rax] = 0xaabb_ccdd_1122_3344; c.Gpr[Gpr.Rcx] = 0x0102_0304_0506_0708; }),
        ("movbe 16-bit store", a => a.movbe(__word_ptr[r15], cx), c => c.Gpr[Gpr.Rcx] = 0x1234),
        ("enter 32,3 and leave", a => { a.enter(32, 3); a.mov(rdx, rsp); a.leave(); }, c => c.Gpr[Gpr.Rbp] = D + 0x600),
        ("enter 0,0 and leave", a => { a.enter(0, 0); a.push(rax); a.leave(); }, c => c.Gpr[Gpr.Rbp] = D + 0x600),
        ("pushf/popf round trip", a => { a.stc(); a.std(); a.pushfq(); a.cld(); a.popfq(); a.pushfq(); a.pop(rax); }, null),
        ("popf cannot set IOPL or clear IF at CPL 3", a => { a.push(rcx); a.popfq(); a.pushfq(); a.pop(rax); }, c => c.Gpr[Gpr.Rcx] = 0x3cd5),
        ("push/pop 16-bit", a => { a.push(cx); a.pop(dx); }, c => c.Gpr[Gpr.Rcx] = 0xbeef),
        ("pop into rsp-relative memory", a => { a.push(rcx); a.pop(__qword_ptr[rsp]); a.pop(rax); }, c => c.Gpr[Gpr.Rcx] = 0x1234),
        ("lahf/sahf", a => { a.stc(); a.lahf(); a.xor(ah, 0xd5); a.sahf(); a.lahf(); }, null),
        ("cbw..cqo", a => { a.cbw(); a.cwde(); a.cdqe(); a.cqo(); a.mov(rbx, rdx); a.cwd(); a.cdq(); }, c => c.Gpr[Gpr.Rax] = 0x80),
        ("adcx/adox chains", a => { a.stc(); a.adcx(rax, rcx); a.adox(rbx, rdx); a.adcx(rax, rcx); a.seto(sil); a.setc(dil); }, c => { c.Gpr[Gpr.Rax] = ulong.MaxValue; c.Gpr[Gpr.Rcx] = 1; c.Gpr[Gpr.Rbx] = ulong.MaxValue; c.Gpr[Gpr.Rdx] = 1; }),
        ("bextr start beyond width", a => a.bextr(rax, rcx, rdx), c => { c.Gpr[Gpr.Rcx] = ulong.MaxValue; c.Gpr[Gpr.Rdx] = 0x0870; }),
        ("bzhi index above width", a => { a.bzhi(eax, ecx, edx); a.setc(bl); }, c => { c.Gpr[Gpr.Rcx] = ulong.MaxValue; c.Gpr[Gpr.Rdx] = 40; }),
        ("pdep/pext", a => { a.pdep(rax, rcx, rdx); a.pext(rbx, rcx, rdx); }, c => { c.Gpr[Gpr.Rcx] = 0x1234_5678_9abc_def0; c.Gpr[Gpr.Rdx] = 0xf0f0_0ff0_a5a5_5a5a; }),
        ("mulx", a => a.mulx(rax, rbx, rcx), c => { c.Gpr[Gpr.Rdx] = ulong.MaxValue; c.Gpr[Gpr.Rcx] = ulong.MaxValue; }),
        ("crc32 byte..qword", a => { a.crc32(eax, cl); a.crc32(eax, cx); a.crc32(eax, ecx); a.crc32(rax, rcx); }, c => c.Gpr[Gpr.Rcx] = 0x0123_4567_89ab_cdef),
        ("divss by zero masked", a => a.divss(xmm0, xmm1), c => { BitConverter.GetBytes(1f).CopyTo(c.Fx, 160); Array.Clear(c.Fx, 176, 16); }),
        ("divss by zero unmasked (#XM)", a => a.divss(xmm0, xmm1), c => { BitConverter.GetBytes(1f).CopyTo(c.Fx, 160); Array.Clear(c.Fx, 176, 16); BitConverter.GetBytes(0x1d80u).CopyTo(c.Fx, 24); }),
        ("cvtsd2si out of range gives indefinite", a => a.cvtsd2si(rax, xmm0), c => BitConverter.GetBytes(1e30).CopyTo(c.Fx, 160)),
        ("cvtss2si rounding mode up", a => a.cvtss2si(eax, xmm0), c => { BitConverter.GetBytes(2.5f).CopyTo(c.Fx, 160); BitConverter.GetBytes(0x5f80u).CopyTo(c.Fx, 24); }),
        ("addps denormal with FTZ and DAZ", a => a.addps(xmm0, xmm1), c => { BitConverter.GetBytes(1e-40f).CopyTo(c.Fx, 160); BitConverter.GetBytes(1e-40f).CopyTo(c.Fx, 176); BitConverter.GetBytes(0x9fc0u).CopyTo(c.Fx, 24); }),
        ("movaps misaligned (#GP)", a => a.movaps(xmm0, __xmmword_ptr[r15 + 4]), null),
        ("movups misaligned", a => a.movups(xmm0, __xmmword_ptr[r15 + 4]), null),
        ("sqrtsd negative gives default NaN", a => a.sqrtsd(xmm0, xmm1), c => BitConverter.GetBytes(-4.0).CopyTo(c.Fx, 176)),
        ("pshufb", a => a.pshufb(xmm0, xmm1), null),
        ("pcmpistri", a => a.pcmpistri(xmm0, xmm1, 0x0c), c => { "hello world\0\0\0\0\0"u8.ToArray().CopyTo(c.Fx, 160); "world\0\0\0\0\0\0\0\0\0\0\0"u8.ToArray().CopyTo(c.Fx, 176); }),
        ("aesenc/aesdec/aesimc", a => { a.aesenc(xmm0, xmm1); a.aesdeclast(xmm2, xmm3); a.aesimc(xmm4, xmm5); a.aeskeygenassist(xmm6, xmm7, 0x1b); }, null),
        ("pclmulqdq all selectors", a => { a.pclmulqdq(xmm0, xmm1, 0x00); a.pclmulqdq(xmm2, xmm3, 0x11); a.pclmulqdq(xmm4, xmm5, 0x01); a.pclmulqdq(xmm6, xmm7, 0x10); }, null),
        ("fld/fstp m80", a => { a.fld(__tword_ptr[r15]); a.fstp(__tword_ptr[r15 + 16]); }, null),
        ("fild/fistp m64", a => { a.fild(__qword_ptr[r15]); a.fistp(__qword_ptr[r15 + 16]); }, null),
        ("fdiv by zero masked", a => { a.fld1(); a.fldz(); a.fdivp(st1, st0); a.fstp(__qword_ptr[r15]); }, null),
        ("fsqrt -1 invalid", a => { a.fld1(); a.fchs(); a.fsqrt(); a.fstp(__tword_ptr[r15]); }, null),
        ("x87 stack overflow", a => { for (int i = 0; i < 9; i++) a.fld1(); }, null),
        ("fcomi sets EFLAGS", a => { a.fld1(); a.fldz(); a.fcomi(st0, st1); a.setb(al); a.setz(bl); a.setp(cl); }, null),
        ("frndint rounding modes", a => { a.fld(__qword_ptr[r15]); a.frndint(); a.fstp(__qword_ptr[r15 + 8]); }, c => { BitConverter.GetBytes(2.5).CopyTo(c.Data, 0x800); c.Fx[1] = 0x07; }),
        ("fadd in single precision control", a => { a.fld(__qword_ptr[r15]); a.fadd(__qword_ptr[r15 + 8]); a.fstp(__tword_ptr[r15 + 16]); }, c => { BitConverter.GetBytes(1.0).CopyTo(c.Data, 0x800); BitConverter.GetBytes(1e-10).CopyTo(c.Data, 0x808); c.Fx[1] = 0x00; }),
        // The store turns SUB CL,0DBh (80 E9 DB) into SHR CL,0DBh (C0 E9 DB), whose AF the SDM leaves
        // undefined (an AMD host sets it): flags cannot be told from the generated code, the
        // rewritten code page and the result of the instruction that really ran can.
        ("store rewrites the next instruction", a => { var l = a.CreateLabel(); a.mov(__byte_ptr[l], 0xc0); a.Label(ref l); a.sub(cl, 0xdb); a.setz(bl); },
            c => { c.Gpr[Gpr.Rcx] = 0x0a; c.Rflags = 0x2; }),
        // 64-bit mode: a non-canonical address faults with #SS when it refers to SS. Overrides other
        // than FS and GS are ignored, so RSP or RBP as the base register makes it #SS whatever CS,
        // DS, ES or SS override the instruction has, and FS or GS makes it #GP (as the host shows).
        ("fs:[rsp+rcx] non-canonical (#GP)", a => a.mov(rax, __qword_ptr.fs[rsp + rcx]), c => c.Gpr[Gpr.Rcx] = 1UL << 63),
        ("store gs:[rsp+8] non-canonical (#GP)", a => a.mov(__qword_ptr.gs[rsp + 8], rax), c => c.Gpr[Gpr.Rsp] = 0x7fff_ffff_fff8),
        ("movaps fs:[rbp] non-canonical (#GP)", a => a.movaps(xmm0, __xmmword_ptr.fs[rbp]), c => c.Gpr[Gpr.Rbp] = 0x8000_0000_0000),
        ("ds:[rbp+rcx] non-canonical (#SS)", a => a.mov(rax, __qword_ptr.ds[rbp + rcx]), c => c.Gpr[Gpr.Rcx] = 1UL << 63),
        ("es:[rsp+rcx] non-canonical (#SS)", a => a.mov(rax, __qword_ptr.es[rsp + rcx]), c => c.Gpr[Gpr.Rcx] = 1UL << 63),
        ("store cs:[rbp+8] non-canonical (#SS)", a => a.mov(__qword_ptr.cs[rbp + 8], rax), c => c.Gpr[Gpr.Rbp] = 0x7fff_ffff_fff8),
        ("[rbp+rcx] non-canonical (#SS)", a => a.mov(rax, __qword_ptr[rbp + rcx]), c => c.Gpr[Gpr.Rcx] = 1UL << 63),
        ("[rsp+rax] base rsp, index rax non-canonical (#SS)", a => a.add(__dword_ptr[rsp + rax], ecx), c => c.Gpr[Gpr.Rax] = 1UL << 62),
        ("ss:[rcx] non-canonical (#GP)", a => a.mov(rax, __qword_ptr.ss[rcx]), c => c.Gpr[Gpr.Rcx] = 1UL << 63),
        ("ss:[rcx+rbp] non-canonical (#GP)", a => a.mov(rax, __qword_ptr.ss[rcx + rbp]), c => c.Gpr[Gpr.Rbp] = 1UL << 63),
        ("movaps ss:[rdx] non-canonical (#GP)", a => a.movaps(xmm0, __xmmword_ptr.ss[rdx]), c => c.Gpr[Gpr.Rdx] = 0x8000_0000_0000),
        ("movaps ds:[rbp] non-canonical (#SS)", a => a.movaps(xmm0, __xmmword_ptr.ds[rbp]), c => c.Gpr[Gpr.Rbp] = 0x8000_0000_0000),
        ("ss:[rcx] string lodsq non-canonical (#GP)", a => { a.db(0x36); a.lodsq(); }, c => c.Gpr[Gpr.Rsi] = 1UL << 63),
        // HLE prefixes without HLE: the instructions run as if the prefixes were absent.
        ("xacquire lock add runs as lock add", a => { a.xacquire.@lock.add(__dword_ptr[r15], ecx); a.xrelease.@lock.add(__dword_ptr[r15 + 4], ecx); }, c => c.Gpr[Gpr.Rcx] = 3),
        ("xacquire xchg and xrelease mov", a => { a.xacquire.xchg(__qword_ptr[r15], rcx); a.xrelease.mov(__qword_ptr[r15 + 8], rdx); a.xrelease.mov(__byte_ptr[r15 + 16], 7); }, null),
        ("emms after mmx", a => { a.paddb(mm0, mm1); a.emms(); }, null),
        ("mmx makes tags valid", a => a.movq(mm3, rax), c => c.Gpr[Gpr.Rax] = 0x1234),
    ];

    public static IEnumerable<string> Names => list.Select(x => x.Name);

    /// <summary>The random group a directed case belongs to, where it matters for exclusions.</summary>
    public static string? Group(string name)
    {
        var c = Build(name, 0);
        foreach (var i in c.Instructions)
        {
            var f = i.CpuidFeatures;
            if (f.Contains(CpuidFeature.FPU) || f.Contains(CpuidFeature.FPU387)) return "x87";
            if (f.Contains(CpuidFeature.AES)) return "aes";
            if (f.Contains(CpuidFeature.PCLMULQDQ)) return "pclmulqdq";
            if (f.Contains(CpuidFeature.SSSE3)) return "ssse3";
            if (i.Mnemonic is Mnemonic.Pcmpistri or Mnemonic.Pcmpistrm or Mnemonic.Pcmpestri or Mnemonic.Pcmpestrm) return "sse4.2";
            for (int n = 0; n < i.OpCount; n++)
                if (i.GetOpKind(n) == OpKind.Register && i.GetOpRegister(n).IsMM()) return "mmx";
        }
        return null;
    }

    public static OracleCase Build(string name, int seed)
    {
        var (n, body, setup) = list.Single(x => x.Name == name);
        var a = new Assembler(64);
        body(a);
        a.hlt();
        var w = new BytesCodeWriter();
        var res = a.Assemble(w, OracleLayout.Code);
        var code = w.Bytes.ToArray();
        var r = new Random(CaseGenerator.CaseSeed(seed, name, 0));
        var c = new OracleCase
        {
            Group = "directed", Index = 0, Code = code, Text = $"  [{n}]\n" + CaseGenerator.Disassemble(code),
            Steps = [], UndefinedAtEnd = 0, FxMask = FxCompare.None,
        };
        for (int i = 0; i < 16; i++) c.Gpr[i] = OperandFiller.Value(r);
        c.Gpr[Gpr.Rsp] = D + 0xc00;
        c.Gpr[Gpr.R15] = D + 0x800;
        c.Rflags = 2;
        r.NextBytes(c.Data);
        for (int i = 0; i < 16; i++) r.NextBytes(c.Fx.AsSpan(160 + 16 * i, 16));
        BitConverter.GetBytes((ushort)0x037f).CopyTo(c.Fx, 0);
        BitConverter.GetBytes(0x1f80u).CopyTo(c.Fx, 24);
        setup?.Invoke(c);
        (c.Steps, c.UndefinedAtEnd) = FlagSteps(code);
        c.UsesFx = OracleCase.TouchesFx(code);
        return c;
    }

    /// <summary>Undefined-flag tracking for a directed sequence, as for generated ones.</summary>
    internal static ((ulong, ulong)[], ulong) FlagSteps(byte[] code)
    {
        var d = Iced.Intel.Decoder.Create(64, new ByteArrayCodeReader(code));
        d.IP = OracleLayout.Code;
        var steps = new List<(ulong, ulong)>();
        ulong undef = 0;
        while (d.IP < OracleLayout.Code + (ulong)code.Length)
        {
            d.Decode(out var i);
            steps.Add((i.IP, undef));
            ulong written = CaseGenerator.MayLeaveFlagsUnchanged(i) ? 0 : UndefinedFlags.Written(i);
            undef = (undef & ~written) | UndefinedFlags.Of(i);
        }
        return (steps.ToArray(), undef);
    }

    sealed class BytesCodeWriter : CodeWriter
    {
        public readonly List<byte> Bytes = new();
        public override void WriteByte(byte value) => Bytes.Add(value);
    }
}
