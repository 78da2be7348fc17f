using System.Reflection;
using System.Reflection.Emit;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu.Jit;

/// <summary>
/// One DynamicMethod holding the bodies of one or more compiled blocks, entered as
/// <c>(DecodedBlock block, X86Vcpu cpu, int body)</c> through its native code's address, which each block's
/// <see cref="DecodedBlock.Entry"/> carries with the block's body. A hop from block to block then reads that one
/// word and jumps: a delegate would add its own object, the closure it is bound to, and (made before .NET compiled
/// the method) a precode, each a cache line that kernel code run now and then finds cold.
/// </summary>
internal sealed unsafe class CompiledMethod
{
    /// <summary>DynamicMethod offers no public way to its code's address (ldftn refuses it); its method descriptor,
    /// which delegates are made from, does.</summary>
    private static readonly MethodInfo? s_descriptor =
        typeof(DynamicMethod).GetMethod("GetMethodDescriptor", BindingFlags.Instance | BindingFlags.NonPublic, Type.EmptyTypes);

    public readonly DynamicMethod Method;
    /// <summary>Bodies: block k of the batch compiled is body k.</summary>
    public readonly int Count;
    /// <summary>An exit of body <see cref="Body"/> that branches straight into body <see cref="Target"/> while the
    /// block in link slot <see cref="Slot"/> holds it: publishing links that slot to the target's block. The method
    /// holds no block itself, so that its live code keeps no dropped block alive.</summary>
    public readonly record struct WarmLink(int Body, int Slot, int Target);
    public readonly WarmLink[] WarmLinks;
    /// <summary>The native code, once <see cref="Prepare"/> has had .NET compile it.</summary>
    public nint Code { get; private set; }

    public CompiledMethod(DynamicMethod method, int count, WarmLink[] warmLinks)
    {
        Method = method;
        Count = count;
        WarmLinks = warmLinks;
    }

    /// <summary>Has .NET compile the method on this thread (a call with no vCPU returns at once), so that IL it
    /// rejects fails here rather than in a vCPU, and takes the compiled code's address.</summary>
    public void Prepare()
    {
        if (s_descriptor == null) throw new NotSupportedException("this .NET runtime gives no address for a DynamicMethod's code");
        var handle = (RuntimeMethodHandle)s_descriptor.Invoke(Method, BindingFlags.DoNotWrapExceptions, null, null, null)!;
        Enter(null!, null!, handle.GetFunctionPointer(), 0);
        // Asked again now that it is compiled: the address of the code itself, not of the stub that compiled it.
        Code = handle.GetFunctionPointer();
    }

    /// <summary>The entry word of body <paramref name="body"/>.</summary>
    public long EntryOf(int body) => (long)Code | (long)body << DecodedBlock.EntryBodyShift;

    /// <summary>Runs the block whose entry word is <paramref name="entry"/>.</summary>
    public static void Enter(DecodedBlock block, X86Vcpu cpu, long entry) =>
        Enter(block, cpu, (nint)(entry & DecodedBlock.EntryCodeMask), (int)((ulong)entry >> DecodedBlock.EntryBodyShift));

    private static void Enter(DecodedBlock block, X86Vcpu cpu, nint code, int body) =>
        ((delegate* managed<DecodedBlock, X86Vcpu, int, void>)code)(block, cpu, body);

    /// <summary>The parameters every compiled method takes.</summary>
    public static readonly Type[] Parameters = [typeof(DecodedBlock), typeof(X86Vcpu), typeof(int)];
}
