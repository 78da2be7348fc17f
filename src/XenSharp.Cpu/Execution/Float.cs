using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>Entry points of the x87 and SSE groups.</summary>
internal unsafe partial class X86Vcpu
{
    internal const ulong SupportedXcr0 = X86Features.SupportedXcr0;

    private void InitFpu()
    {
    }

    private bool TryExecFloat(ref DecodedInsn d) => false;

    private void ExecSse(ref DecodedInsn d) => throw Unsupported(d.I);
}
