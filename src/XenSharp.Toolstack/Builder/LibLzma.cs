using System.Runtime.InteropServices;

namespace XenSharp.Toolstack.Builder;

/// <summary>
/// The host's liblzma (xz-utils, part of every Debian system) for whole .xz streams: about a third less CPU than the
/// managed decoder for a kernel payload, which is on the path of every domain build from a bzImage. Optional: where
/// the library cannot be loaded, or it refuses the data, <see cref="XzContainer"/> decodes the stream and says what
/// is wrong with it.
/// </summary>
internal static partial class LibLzma
{
    private const int LZMA_OK = 0;
    /// <summary>Memory the decoder may use: a kernel payload's dictionary is at most a few tens of MiB.</summary>
    private const ulong MemLimit = 256UL << 20;

    [LibraryImport("liblzma.so.5")]
    private static unsafe partial int lzma_stream_buffer_decode(ref ulong memlimit, uint flags, nint allocator,
        byte* input, ref nuint inPos, nuint inSize, byte* output, ref nuint outPos, nuint outSize);

    private static bool s_missing;


    /// <summary>Decodes the single .xz stream in <paramref name="data"/> into exactly <paramref name="size"/> bytes, with
    /// its checks verified; null when liblzma is missing or the stream does not decode to that size.</summary>
    public static unsafe byte[]? TryDecode(byte[] data, long size)
    {
        if (s_missing || size <= 0 || size > PayloadDecompressor.MaxOutput) return null;
        var output = GC.AllocateUninitializedArray<byte>((int)size);
        ulong memlimit = MemLimit;
        nuint inPos = 0, outPos = 0;
        int ret;
        try
        {
            fixed (byte* i = data)
            fixed (byte* o = output)
                ret = lzma_stream_buffer_decode(ref memlimit, 0, 0, i, ref inPos, (nuint)data.Length, o, ref outPos, (nuint)output.Length);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            s_missing = true;
            return null;
        }
        return ret == LZMA_OK && outPos == (nuint)output.Length ? output : null;
    }
}
