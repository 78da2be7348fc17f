namespace XenSharp.Cpu;

public enum VcpuExitReason
{
    /// <summary>IN/OUT (or one iteration of INS/OUTS): <see cref="VcpuExit.Port"/>, size, direction, data.</summary>
    Io,
    /// <summary>An access to guest-physical memory that is not RAM.</summary>
    Mmio,
    /// <summary>VMCALL or VMMCALL; RIP already points past it.</summary>
    Hypercall,
    /// <summary>RDMSR of an MSR the engine does not own; answer with <see cref="IVcpu.CompleteExit"/>.</summary>
    RdMsr,
    /// <summary>WRMSR of an MSR the engine does not own; <see cref="IVcpu.CompleteExit"/> with fault=true raises #GP.</summary>
    WrMsr,
    /// <summary>HLT with no interrupt pending.</summary>
    Hlt,
    /// <summary>Triple fault.</summary>
    Shutdown,
    /// <summary><see cref="IVcpu.RequestExit"/> was called.</summary>
    Preempted,
    /// <summary>A debug event the hypervisor asked for (<see cref="IX86Vcpu.InterceptDebug"/>):
    /// <see cref="VcpuExit.Port"/> = vector (1 for #DB, 3 for INT3), <see cref="VcpuExit.Data"/> = DR6
    /// status bits of the event, <see cref="VcpuExit.Address"/> = RIP.</summary>
    Debug,
    /// <summary>An exception or software interrupt the hypervisor takes itself (<see cref="IX86Vcpu.InterceptTraps"/>):
    /// <see cref="VcpuExit.Port"/> = vector, <see cref="VcpuExit.Data"/> = error code when <see cref="VcpuExit.Size"/>
    /// is 1, <see cref="VcpuExit.Address"/> = CR2 for a page fault, <see cref="VcpuExit.IsWrite"/> set for INT n,
    /// INT3 and INTO. RIP is the return address the IDT delivery would have pushed.</summary>
    Exception,
    /// <summary>SYSCALL under <see cref="IX86Vcpu.InterceptTraps"/>, with no register changed; RIP points past it.</summary>
    Syscall,
    /// <summary>The engine met something it cannot execute; <see cref="VcpuExit.Message"/> says what.</summary>
    InternalError,
    /// <summary>An instruction fetch from RAM that <see cref="IGuestMemory.MayExecute"/> refused:
    /// <see cref="VcpuExit.Address"/> = the guest-physical address fetched. RIP is the instruction's and nothing of it
    /// has run; the next <see cref="IVcpu.Run"/> fetches it again.</summary>
    FetchDenied,
    /// <summary>An instruction completed under <see cref="IX86Vcpu.MonitorTrap"/>; RIP is the next one.</summary>
    MonitorTrap,
}

/// <summary>Why <see cref="IVcpu.Run"/> returned, with the data of that exit (KVM's kvm_run).</summary>
public struct VcpuExit
{
    public VcpuExitReason Reason;
    /// <summary>I/O port, or MSR index for RdMsr/WrMsr.</summary>
    public uint Port;
    /// <summary>Guest-physical address of an MMIO access.</summary>
    public ulong Address;
    /// <summary>Access size in bytes (1, 2, 4, 8).</summary>
    public int Size;
    public bool IsWrite;
    /// <summary>Value written (OUT, MMIO write, WRMSR).</summary>
    public ulong Data;
    /// <summary>Hlt: the vCPU halted with RFLAGS.IF clear, so no interrupt can end the halt (only NMI, INIT or SMI).</summary>
    public bool InterruptsDisabled;
    public string? Message;
    /// <summary>Io and Mmio exits of a REP string instruction under <see cref="IX86Vcpu.BatchStringIo"/>: the
    /// iterations this exit covers (Xen's ioreq count), 0 for one ordinary access. The hypervisor answers with
    /// <see cref="IVcpu.CompleteExit"/> giving how many it did (at most this), and the engine retires those.</summary>
    public uint Count;
    /// <summary>With <see cref="Count"/>: <see cref="Data"/> is the guest-physical address of the first element in RAM
    /// that the device reads (a write) or fills (a read), Xen's data_is_ptr; all elements lie in that page. Otherwise
    /// Data is the one value written <see cref="Count"/> times (REP STOS).</summary>
    public bool DataIsPointer;
    /// <summary>With <see cref="Count"/>: EFLAGS.DF was set, so the port's or MMIO's and the buffer's addresses go down
    /// by <see cref="Size"/> each iteration (Xen's df).</summary>
    public bool Backward;
}

/// <summary>General-purpose registers (KVM's kvm_regs).</summary>
public struct Registers
{
    public ulong Rax, Rbx, Rcx, Rdx, Rsi, Rdi, Rsp, Rbp;
    public ulong R8, R9, R10, R11, R12, R13, R14, R15;
    public ulong Rip, Rflags;
}

/// <summary>A segment register with its hidden part (KVM's kvm_segment).</summary>
public struct Segment
{
    public ulong Base;
    public uint Limit;
    public ushort Selector;
    /// <summary>Type (4 bits), S, DPL, P, AVL, L, D/B, G packed as in the descriptor's
    /// attribute bits 40..55 with the limit nibble removed (VMX access-rights layout).</summary>
    public ushort Attributes;
}

public struct DescriptorTable
{
    public ulong Base;
    public ushort Limit;
}

/// <summary>Segment, control and system registers (KVM's kvm_sregs).</summary>
public struct SpecialRegisters
{
    public Segment Cs, Ds, Es, Fs, Gs, Ss, Tr, Ldt;
    public DescriptorTable Gdt, Idt;
    public ulong Cr0, Cr2, Cr3, Cr4, Cr8;
    public ulong Efer;
    public ulong ApicBase;
}
