namespace XenSharp.Hypervisor.X86;

/// <summary>
/// Fills the hypercall page a guest asks for through MSR 0x40000000: one 32-byte stub per hypercall,
/// `mov $nr, %eax; vmcall; ret` (vmmcall on AMD), padded with int3.
/// </summary>
internal static class HypercallPage
{
    public const int StubSize = 32;

    public static void Write(Span<byte> page, bool amd)
    {
        page.Fill(0xCC);
        for (int nr = 0; nr < page.Length / StubSize; nr++)
        {
            var stub = page.Slice(nr * StubSize, StubSize);
            stub[0] = 0xB8; // mov imm32, %eax
            BitConverter.TryWriteBytes(stub.Slice(1, 4), nr);
            stub[5] = 0x0F;
            stub[6] = 0x01;
            stub[7] = amd ? (byte)0xD9 : (byte)0xC1;
            stub[8] = 0xC3; // ret
        }
    }

    /// <summary>A 32-bit PV guest's page (Xen's ring-1 one): mov $nr, %eax; int $0x82; ret — and for
    /// HYPERVISOR_iret, which the guest jumps to, push %eax before it and no ret.</summary>
    public static void WritePvCompat(Span<byte> page)
    {
        page.Fill(0xCC);
        for (int nr = 0; nr < page.Length / StubSize; nr++)
        {
            var stub = page.Slice(nr * StubSize, StubSize);
            int i = 0;
            if (nr == Public.Xen.__HYPERVISOR_iret)
                stub[i++] = 0x50;               // push %eax
            stub[i++] = 0xB8;                   // mov $nr, %eax
            BitConverter.TryWriteBytes(stub.Slice(i, 4), nr);
            i += 4;
            stub[i++] = 0xCD;                   // int $0x82
            stub[i++] = (byte)Public.ArchX86.Pv.HYPERCALL_VECTOR_X86_32;
            if (nr != Public.Xen.__HYPERVISOR_iret)
                stub[i] = 0xC3;                 // ret
        }
    }

    /// <summary>A 64-bit PV guest's page: `push %rcx; push %r11; mov $nr, %eax; syscall; pop %r11; pop %rcx; ret`
    /// (SYSCALL from the guest kernel is the hypercall), except iret, which the guest jumps to with the return
    /// frame on its stack: `push %rcx; push %r11; push %rax; mov $nr, %eax; syscall` completes the iret_context.</summary>
    public static void WritePv(Span<byte> page)
    {
        page.Fill(0xCC);
        for (int nr = 0; nr < page.Length / StubSize; nr++)
        {
            var stub = page.Slice(nr * StubSize, StubSize);
            int i = 0;
            stub[i++] = 0x51;                   // push %rcx
            stub[i++] = 0x41; stub[i++] = 0x53; // push %r11
            if (nr == Public.Xen.__HYPERVISOR_iret)
                stub[i++] = 0x50;               // push %rax
            stub[i++] = 0xB8;                   // mov $nr, %eax
            BitConverter.TryWriteBytes(stub.Slice(i, 4), nr);
            i += 4;
            stub[i++] = 0x0F; stub[i++] = 0x05; // syscall
            if (nr == Public.Xen.__HYPERVISOR_iret)
                continue;
            stub[i++] = 0x41; stub[i++] = 0x5B; // pop %r11
            stub[i++] = 0x59;                   // pop %rcx
            stub[i] = 0xC3;                     // ret
        }
    }
}
