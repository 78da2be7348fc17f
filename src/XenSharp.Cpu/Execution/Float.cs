using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>Entry point of the x87, SSE and state-save groups.</summary>
internal unsafe partial class X86Vcpu
{
    internal const ulong SupportedXcr0 = X86Features.SupportedXcr0;

    private bool TryExecFloat(ref DecodedInsn d) => TrySse(ref d) || TryX87(ref d) || TryStateSave(ref d);
}
