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
}
