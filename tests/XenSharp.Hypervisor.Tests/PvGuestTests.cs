using System.Text;
using Iced.Intel;
using XenSharp.Cpu;
using XenSharp.Hypervisor.X86.Pv;
using XenSharp.Public;
using XenSharp.Public.ArchX86;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// A 64-bit PV kernel on the real x86 engine: in ring 3 on page tables the PV MMU validated, it makes hypercalls
/// with SYSCALL, takes a page fault through its trap table and returns with HYPERVISOR_iret, is refused a writable
/// mapping of its own page table, asks Xen's CPUID through the forced-emulation prefix, writes GS_BASE with WRMSR
/// (emulated), returns to itself with a native IRETQ on Xen's flat selectors, and powers off.
/// </summary>
[Trait("Feature", "x86/PV")]
public class PvGuestTests : IDisposable
{
    private readonly XenHypervisor _host = new(new HypervisorOptions { MachineMemoryBytes = 256UL << 20, Pcpus = 1 });
    public void Dispose() => _host.Dispose();

    // Page tables at PFNs 0x100-0x103; VA 0x400000 + i pages → PFN 0x200 + i: code, results, arguments, stack.
    private const ulong L4 = 0x100, L3 = 0x101, L2 = 0x102, L1 = 0x103, FirstPfn = 0x200;
    private const ulong Code = 0x400000, AfterFault = 0x400400, PfHandler = 0x400800;
    private const ulong Results = 0x401000, Traps = 0x402000, Message = 0x402100, Request = 0x402200, Reason = 0x402300;
    private const ulong StackTop = 0x407000, Unmapped = 0x800000;
    private const string Hello = "hello from a PV kernel\n";

    [Fact]
    public void APvKernelRunsInRing3WithHypercallsTrapsAndIret()
    {
        ushort id = _host.CreateDomain(new DomainCreateConfig(DomainKind.Pv, 8 * 1024, 1));
        _host.PopulatePhysmap(id, 0, 1024);
        var d = _host.FindDomain(id)!;
        ulong Mfn(ulong pfn) => d.P2m.TryLookup(pfn, out uint m, out _) ? m : throw new InvalidOperationException();
        void Write<T>(ulong gpa, T value) where T : unmanaged =>
            _host.WriteGuestMemory(id, gpa, System.Runtime.InteropServices.MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)));
        ulong ReadVa(ulong va) => BitConverter.ToUInt64(Read(va, 8));
        byte[] Read(ulong va, int n)
        {
            var b = new byte[n];
            _host.ReadGuestMemory(id, (FirstPfn << 12) + (va - Code), b);
            return b;
        }

        const ulong P = 1, RW = 2;
        Write(L4 << 12, (Mfn(L3) << 12) | P | RW);
        Write(L3 << 12, (Mfn(L2) << 12) | P | RW);
        Write((L2 << 12) + 2 * 8, (Mfn(L1) << 12) | P | RW);
        for (ulong i = 0; i < 8; i++)
            Write((L1 << 12) + i * 8, (Mfn(FirstPfn + i) << 12) | P | RW);

        void Place(ulong va, byte[] bytes) => _host.WriteGuestMemory(id, (FirstPfn << 12) + (va - Code), bytes);
        Place(Code, Assemble(Code, a =>
        {
            a.mov(rbx, Results);
            a.mov(eax, Xen.__HYPERVISOR_set_trap_table); a.mov(rdi, Traps); a.syscall(); a.mov(__qword_ptr[rbx], rax);
            a.mov(eax, Xen.__HYPERVISOR_console_io); a.mov(edi, Xen.CONSOLEIO_write); a.mov(esi, Hello.Length); a.mov(rdx, Message);
            a.syscall(); a.mov(__qword_ptr[rbx + 8], rax);
            a.mov(rcx, Unmapped); a.mov(rax, __qword_ptr[rcx]);
            a.ud2();
        }));
        Place(AfterFault, Assemble(AfterFault, a =>
        {
            a.mov(rbx, Results);
            a.mov(__qword_ptr[rbx + 0x10], 1);
            a.mov(eax, Xen.__HYPERVISOR_mmu_update); a.mov(rdi, Request); a.mov(esi, 1); a.xor(edx, edx); a.mov(r10d, Xen.DOMID_SELF);
            a.syscall(); a.mov(__qword_ptr[rbx + 0x18], rax);
            a.mov(eax, 0x40000000); a.xor(ecx, ecx);
            a.db(0x0F, 0x0B, 0x78, 0x65, 0x6E, 0x0F, 0xA2); // Xen's forced-emulation prefix, then CPUID
            a.mov(rdi, Results); a.mov(__qword_ptr[rdi + 0x20], rbx);
            // WRMSR/RDMSR of GS_BASE from the kernel: emulated after the #GP ring 3 raises.
            a.mov(ecx, 0xC0000101); a.mov(eax, 0x12345000); a.xor(edx, edx); a.wrmsr();
            a.xor(eax, eax); a.rdmsr(); a.mov(__qword_ptr[rdi + 0x38], rax);
            // A native IRETQ to the kernel on Xen's flat selectors, which Xen's GDT holds.
            var back = a.CreateLabel();
            a.mov(rax, rsp); a.push(Pv.FLAT_KERNEL_SS); a.push(rax); a.pushfq(); a.push(Pv.FLAT_KERNEL_CS);
            a.lea(rax, __[back]); a.push(rax); a.iretq();
            a.Label(ref back);
            a.mov(__qword_ptr[rdi + 0x40], 1);
            a.mov(eax, Xen.__HYPERVISOR_sched_op); a.mov(edi, Sched.SCHEDOP_shutdown); a.mov(rsi, Reason); a.syscall();
            a.ud2();
        }));
        Place(PfHandler, Assemble(PfHandler, a =>
        {
            // The bounce frame: RCX, R11, error code, RIP, CS, RFLAGS, RSP, SS.
            a.mov(rbx, Results);
            a.mov(rax, __qword_ptr[rsp + 16]); a.mov(__qword_ptr[rbx + 0x28], rax);
            a.mov(rax, __qword_ptr[rsp + 32]); a.mov(__qword_ptr[rbx + 0x30], rax);
            a.mov(rax, AfterFault); a.mov(__qword_ptr[rsp + 24], rax);
            // Into an iret_context: RAX, R11, RCX, flags, then the frame from RIP up.
            a.mov(rax, __qword_ptr[rsp]); a.mov(rcx, __qword_ptr[rsp + 8]);
            a.mov(__qword_ptr[rsp], rcx); a.mov(__qword_ptr[rsp + 8], rax); a.mov(__qword_ptr[rsp + 16], 0);
            a.push(rax);
            a.mov(eax, Xen.__HYPERVISOR_iret); a.syscall();
            a.ud2();
        }));
        Write((FirstPfn + 2) << 12, new TrapInfo { Vector = 14, Cs = Pv.FLAT_KERNEL_CS, Address = PfHandler });
        Place(Message, Encoding.ASCII.GetBytes(Hello));
        // The refused request: the kernel's own L1 mapped writable.
        Write(((FirstPfn + 2) << 12) + 0x200, new MmuUpdate { Ptr = (Mfn(L1) << 12) + 8 * 8, Val = (Mfn(L1) << 12) | P | RW });
        Write(((FirstPfn + 2) << 12) + 0x300, (uint)Sched.SHUTDOWN_poweroff);

        var v = d.Vcpus[0];
        var sregs = new SpecialRegisters
        {
            Cs = PvTraps.KernelCs, Ss = PvTraps.KernelSs,
            Cr0 = 0x80050033, Cr4 = 0x620, Efer = 0x501, Cr3 = Mfn(L4) << 12,
            Tr = new Segment { Limit = 0x67, Attributes = 0x8B },
            Ldt = new Segment { Attributes = 0x82 },
        };
        _host.SetVcpuRegisters(id, 0, new Registers { Rip = Code, Rsp = StackTop, Rflags = 0x202 }, sregs);
        Assert.Equal(0, PvMm.NewBaseptr(v, Mfn(L4), user: false));

        ShutdownReason? reason = null;
        _host.DomainShutdown += (_, e) => { if (e.DomainId == id) reason = e.Reason; };
        _host.Unpause(id);
        Assert.True(TestHosts.WaitUntil(() => reason is not null, 60_000), "the guest did not finish");
        string log = Encoding.ASCII.GetString(_host.ReadConsoleHistory(id));
        Assert.True(reason == ShutdownReason.Poweroff, $"shut down with {reason}; console: {log}");

        Assert.Equal(0UL, ReadVa(Results));                             // set_trap_table
        Assert.True((long)ReadVa(Results + 8) >= 0, $"console_io gave {(long)ReadVa(Results + 8)}");
        Assert.Equal(1UL, ReadVa(Results + 0x10));                      // resumed after the fault
        Assert.Equal(4UL, ReadVa(Results + 0x28));                      // #PF error code: user, read, not present
        Assert.Equal((ulong)Pv.FLAT_KERNEL_CS & ~3UL, ReadVa(Results + 0x30) & 0xFFFF); // kernel context: RPL 0
        unsafe { Assert.Equal(Unmapped, v.VcpuInfo->Arch.Cr2); }
        Assert.Equal(unchecked((ulong)-Errno.EINVAL), ReadVa(Results + 0x18)); // its own L1, writable: refused
        Assert.Equal(0x566E6558UL, ReadVa(Results + 0x20) & 0xFFFF_FFFF);      // "XenV"
        Assert.Equal(0x12345000UL, ReadVa(Results + 0x38));               // GS_BASE written and read back
        Assert.Equal(1UL, ReadVa(Results + 0x40));                        // past the native IRETQ
        Assert.Contains(Hello.TrimEnd(), log);
    }

    /// <summary>What a PV kernel does natively and Xen emulates: MOV from CR0/CR3/CR4 (the guest's view), CLTS, port
    /// I/O and CLI/STI once physdev_op gave it IOPL 1 (a domain without ports reads all ones), and a direct write of
    /// an entry into its own L1 through a read-only mapping (writable page-table emulation) — while a direct write
    /// that would map that L1 writable is refused and comes back as the guest's page fault.</summary>
    [Fact]
    public void APvKernelsPrivilegedInstructionsAndDirectPageTableWritesAreEmulated()
    {
        ushort id = _host.CreateDomain(new DomainCreateConfig(DomainKind.Pv, 8 * 1024, 1));
        _host.PopulatePhysmap(id, 0, 1024);
        var d = _host.FindDomain(id)!;
        ulong Mfn(ulong pfn) => d.P2m.TryLookup(pfn, out uint m, out _) ? m : throw new InvalidOperationException();
        void Write<T>(ulong gpa, T value) where T : unmanaged =>
            _host.WriteGuestMemory(id, gpa, System.Runtime.InteropServices.MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)));
        ulong ReadPfn(ulong pfn, ulong offset)
        {
            var b = new byte[8];
            _host.ReadGuestMemory(id, (pfn << 12) + offset, b);
            return BitConverter.ToUInt64(b);
        }
        ulong ReadVa(ulong va) => ReadPfn(FirstPfn + ((va - Code) >> 12), va & 0xFFF);

        const ulong P = 1, RW = 2;
        const ulong L1View = 0x408000, Fresh = 0x409000;
        Write(L4 << 12, (Mfn(L3) << 12) | P | RW);
        Write(L3 << 12, (Mfn(L2) << 12) | P | RW);
        Write((L2 << 12) + 2 * 8, (Mfn(L1) << 12) | P | RW);
        for (ulong i = 0; i < 8; i++)
            Write((L1 << 12) + i * 8, (Mfn(FirstPfn + i) << 12) | P | RW);
        Write((L1 << 12) + 8 * 8, (Mfn(L1) << 12) | P); // the L1 itself, read-only

        void Place(ulong va, byte[] bytes) => _host.WriteGuestMemory(id, (FirstPfn << 12) + (va - Code), bytes);
        Place(Code, Assemble(Code, a =>
        {
            a.mov(rbx, Results);
            a.mov(rax, cr4); a.mov(__qword_ptr[rbx], rax);
            a.mov(rax, cr3); a.mov(__qword_ptr[rbx + 8], rax);
            a.clts();
            a.mov(rax, cr0); a.mov(__qword_ptr[rbx + 0x10], rax);
            a.mov(eax, Xen.__HYPERVISOR_physdev_op); a.mov(edi, 6); a.mov(rsi, Request); a.syscall(); // set_iopl(1)
            a.mov(__qword_ptr[rbx + 0x18], rax);
            a.xor(eax, eax); a.@in(al, (byte)0x80); a.mov(__qword_ptr[rbx + 0x20], rax);
            a.mov(al, 0x55); a.@out((byte)0x80, al);
            a.cli(); a.sti();
            // Map Fresh by writing the entry straight into the L1, then use the mapping.
            a.mov(rax, (Mfn(FirstPfn + 9) << 12) | P | RW); a.mov(rcx, L1View + 9 * 8); a.mov(__qword_ptr[rcx], rax);
            a.mov(rcx, Fresh); a.mov(__qword_ptr[rcx], 0x42);
            a.mov(__qword_ptr[rbx + 0x28], 1);
            // The L1 mapped writable: refused, a page fault for the guest.
            a.mov(rax, (Mfn(L1) << 12) | P | RW); a.mov(rcx, L1View + 10 * 8); a.mov(__qword_ptr[rcx], rax);
            a.mov(__qword_ptr[rbx + 0x30], 1); // never reached
            a.ud2();
        }));
        Place(PfHandler, Assemble(PfHandler, a =>
        {
            a.mov(rbx, Results);
            a.mov(rax, __qword_ptr[rsp + 16]); a.mov(__qword_ptr[rbx + 0x38], rax); // error code
            a.mov(eax, Xen.__HYPERVISOR_sched_op); a.mov(edi, Sched.SCHEDOP_shutdown); a.mov(rsi, Reason); a.syscall();
            a.ud2();
        }));
        Write(((FirstPfn + 2) << 12) + 0x200, 1u); // IOPL 1
        Write(((FirstPfn + 2) << 12) + 0x300, (uint)Sched.SHUTDOWN_poweroff);

        var v = d.Vcpus[0];
        var sregs = new SpecialRegisters
        {
            Cs = PvTraps.KernelCs, Ss = PvTraps.KernelSs,
            Cr0 = 0x80050033, Cr4 = 0x6A0, Efer = 0x501, Cr3 = Mfn(L4) << 12,
            Tr = new Segment { Limit = 0x67, Attributes = 0x8B },
            Ldt = new Segment { Attributes = 0x82 },
        };
        _host.SetVcpuRegisters(id, 0, new Registers { Rip = Code, Rsp = StackTop, Rflags = 0x202 }, sregs);
        Assert.Equal(0, PvMm.NewBaseptr(v, Mfn(L4), user: false));
        // The trap table as set_trap_table would leave it.
        v.Pv!.TrapTable[14] = new TrapInfo { Vector = 14, Cs = Pv.FLAT_KERNEL_CS, Address = PfHandler };

        ShutdownReason? reason = null;
        _host.DomainShutdown += (_, e) => { if (e.DomainId == id) reason = e.Reason; };
        _host.Unpause(id);
        Assert.True(TestHosts.WaitUntil(() => reason is not null, 60_000), "the guest did not finish");
        string log = Encoding.ASCII.GetString(_host.ReadConsoleHistory(id));
        Assert.True(reason == ShutdownReason.Poweroff, $"shut down with {reason}; console: {log}");

        Assert.Equal(0x660UL, ReadVa(Results));                          // CR4: Xen's visible bits
        Assert.Equal(Mfn(L4) << 12, ReadVa(Results + 8));                 // CR3: the machine frame of its L4
        Assert.Equal(0x80050033UL, ReadVa(Results + 0x10));               // CR0, TS clear after CLTS
        Assert.Equal(0UL, ReadVa(Results + 0x18));                        // set_iopl
        Assert.Equal(0xFFUL, ReadVa(Results + 0x20));                     // no ports: all ones
        Assert.Equal(1UL, ReadVa(Results + 0x28));                        // past the direct entry write
        Assert.Equal(0x42UL, ReadPfn(FirstPfn + 9, 0));                   // written through the new mapping
        Assert.Equal((Mfn(FirstPfn + 9) << 12) | P | RW | PvMm.PAGE_USER, ReadPfn(L1, 9 * 8) & ~(PvMm.PAGE_ACCESSED | PvMm.PAGE_DIRTY));
        Assert.Equal(0UL, ReadVa(Results + 0x30));                        // the refused write did not go on
        Assert.Equal(7UL, ReadVa(Results + 0x38));                        // #PF: present, write, user
        Assert.Equal(0UL, ReadPfn(L1, 10 * 8));                           // and the entry stayed empty
    }

    private static byte[] Assemble(ulong rip, Action<Assembler> body)
    {
        var a = new Assembler(64);
        body(a);
        var stream = new MemoryStream();
        a.Assemble(new StreamCodeWriter(stream), rip);
        return stream.ToArray();
    }
}
