using System.Buffers.Binary;
using CsCheck;

namespace XenSharp.Toolstack.Tests.Fuzz;

/// <summary>One fuzz case: which seed, how many mutations, and the seed of the random choices that make them.</summary>
internal readonly record struct Mutation(int Seed, int Count, int Random);

/// <summary>
/// Mutates the files of a seed corpus as fuzzers do: bit flips, byte and field overwrites with
/// interesting values (0, -1, sign bits, huge sizes and offsets, the file's own length), truncations,
/// deletions, duplications, insertions of dictionary tokens and splices with other seeds. Headers and
/// trailers are where the fields are, so positions favour the first 128 bytes and the first and last few KiB of a file.
/// </summary>
internal sealed class Mutator(IReadOnlyList<(string Name, byte[] Bytes)> corpus, IReadOnlyList<byte[]>? tokens = null)
{
    public IReadOnlyList<(string Name, byte[] Bytes)> Corpus { get; } = corpus;

    /// <summary>Cases: a seed and up to <paramref name="maxMutations"/> mutations of it (CsCheck shrinks both).</summary>
    public Gen<Mutation> Cases(int maxMutations = 8) =>
        Gen.Select(Gen.Int[0, Corpus.Count - 1], Gen.Int[0, maxMutations], Gen.Int, (s, n, r) => new Mutation(s, n, r));

    public string Print(Mutation m) => $"{Corpus[m.Seed].Name} with {m.Count} mutations (random {m.Random})";

    private static readonly ulong[] Interesting =
    [
        0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
        0x100000000, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFF0, 0x40000000,
    ];

    public byte[] Apply(Mutation m)
    {
        var r = new Random(m.Random);
        var data = new List<byte>(Corpus[m.Seed].Bytes);
        for (int i = 0; i < m.Count; i++) MutateOnce(data, r);
        return [.. data];
    }

    private static int Position(List<byte> d, Random r)
    {
        if (d.Count == 0) return 0;
        const int header = 128, edge = 4096;
        return r.Next(4) switch
        {
            0 => r.Next(Math.Min(d.Count, header)),
            1 => r.Next(Math.Min(d.Count, edge)),
            2 => Math.Max(0, d.Count - 1 - r.Next(Math.Min(d.Count, edge))),
            _ => r.Next(d.Count),
        };
    }

    private void MutateOnce(List<byte> d, Random r)
    {
        int op = r.Next(10);
        if (d.Count == 0 && op < 7) op = 7;
        int pos = Position(d, r);
        switch (op)
        {
            case 0: // bit flip
                d[pos] ^= (byte)(1 << r.Next(8));
                break;
            case 1: // random byte
                d[pos] = (byte)r.Next(256);
                break;
            case 2:
            case 3: // a field of 1, 2, 4 or 8 bytes, aligned as headers align them, set to an interesting value
            {
                int width = 1 << r.Next(4);
                pos &= ~(width - 1);
                ulong v = r.Next(5) == 0 ? (ulong)(d.Count + r.Next(-16, 17)) : Interesting[r.Next(Interesting.Length)];
                if (r.Next(4) == 0) v = unchecked(v + (ulong)r.Next(-4, 5));
                Span<byte> b = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(b, v);
                for (int i = 0; i < width && pos + i < d.Count; i++) d[pos + i] = b[i];
                break;
            }
            case 4: // truncate
                d.RemoveRange(pos, d.Count - pos);
                break;
            case 5: // delete a range
                d.RemoveRange(pos, Math.Min(d.Count - pos, 1 + r.Next(r.Next(2) == 0 ? 8 : 512)));
                break;
            case 6: // duplicate a range
            {
                int n = Math.Min(d.Count - pos, 1 + r.Next(64));
                d.InsertRange(Position(d, r), d.GetRange(pos, n));
                break;
            }
            case 7: // insert a token or random bytes
            {
                byte[] ins;
                if (tokens is { Count: > 0 } && r.Next(3) != 0) ins = tokens[r.Next(tokens.Count)];
                else { ins = new byte[1 + r.Next(16)]; r.NextBytes(ins); }
                d.InsertRange(pos, ins);
                break;
            }
            default: // splice: this seed's head, another's tail
            {
                var other = Corpus[r.Next(Corpus.Count)].Bytes;
                int from = other.Length == 0 ? 0 : r.Next(other.Length);
                int take = Math.Min(other.Length - from, r.Next(2) == 0 ? 64 : other.Length);
                d.RemoveRange(pos, d.Count - pos);
                d.AddRange(other.AsSpan(from, take).ToArray());
                break;
            }
        }
    }
}
