using System.Buffers.Binary;

namespace XenSharp.Toolstack.Save;

/// <summary>
/// Where an x86 PV guest's save stream finds things, for a 64-bit guest and for a 32-bit (compat, PAE) one: the
/// fields of vcpu_guest_context that hold frame numbers, the shared_info arch fields that locate the guest's p2m,
/// the start_info fields that name its rings, and which page-table slots are Xen's (libxc leaves those out).
/// </summary>
internal sealed class X86PvLayout(bool is32)
{
    public bool Is32 { get; } = is32;

    /// <summary>The guest's word (an unsigned long), the width of its p2m entries.</summary>
    public int Width => Is32 ? 4 : 8;

    /// <summary>Page-table levels: 4, or 3 for PAE.</summary>
    public int Levels => Is32 ? 3 : 4;

    public int ContextSize => Is32 ? 2800 : 5168;

    // vcpu_guest_context: user_regs.edx (the suspend record's frame on vCPU 0), gdt_frames[16], gdt_ents, ctrlreg[8].
    private int EdxOffset => Is32 ? 524 : 616;
    private int GdtFramesOffset => Is32 ? 2640 : 4832;
    private int GdtEntsOffset => Is32 ? 2704 : 4960;
    private int CtrlregOffset => Is32 ? 2716 : 4984;

    // shared_info: arch.max_pfn, arch.pfn_to_mfn_frame_list_list, arch.p2m_cr3, arch.p2m_vaddr.
    private int ArchOffset => Is32 ? 2316 : 3088;
    public ulong MaxPfnField(ReadOnlySpan<byte> shinfo) => Word(shinfo, ArchOffset);
    public ulong FrameListList(ReadOnlySpan<byte> shinfo) => Word(shinfo, ArchOffset + Width);
    public ulong P2mCr3(ReadOnlySpan<byte> shinfo) => Word(shinfo, ArchOffset + 3 * Width);
    public ulong P2mVaddr(ReadOnlySpan<byte> shinfo) => Word(shinfo, ArchOffset + 4 * Width);

    // start_info: nr_pages, shared_info, flags, store_mfn, store_evtchn, console.domU.mfn, console.domU.evtchn.
    public const int StartInfoNrPages = 32;
    public int StartInfoSharedInfo => Is32 ? 36 : 40;
    public int StartInfoFlags => Is32 ? 40 : 48;
    public int StartInfoStoreMfn => Is32 ? 44 : 56;
    public int StartInfoConsoleMfn => Is32 ? 52 : 72;

    public ulong Word(ReadOnlySpan<byte> b, int offset) =>
        Is32 ? BinaryPrimitives.ReadUInt32LittleEndian(b[offset..]) : BinaryPrimitives.ReadUInt64LittleEndian(b[offset..]);

    public void SetWord(Span<byte> b, int offset, ulong value)
    {
        if (Is32) BinaryPrimitives.WriteUInt32LittleEndian(b[offset..], (uint)value);
        else BinaryPrimitives.WriteUInt64LittleEndian(b[offset..], value);
    }

    /// <summary>A CR3 value's frame (a 32-bit guest's is Xen's extended PAE format, the frame rotated by 12).</summary>
    public ulong Cr3ToFrame(ulong cr3) => Is32 ? (uint)((cr3 >> 12) | (cr3 << 20)) : cr3 >> 12;
    public ulong FrameToCr3(ulong frame) => Is32 ? (uint)((frame << 12) | (frame >> 20)) : frame << 12;

    /// <summary>Rewrites the frame numbers of a vCPU context (CR3, the user CR3 of a 64-bit guest, the GDT frames,
    /// and on vCPU 0 the suspend record in EDX) through <paramref name="map"/>, which throws for a frame it does not
    /// know.</summary>
    public void MapContextFrames(Span<byte> ctx, int vcpu, Func<ulong, string, ulong> map)
    {
        int cr3 = CtrlregOffset + 3 * Width, cr1 = CtrlregOffset + Width;
        SetWord(ctx, cr3, FrameToCr3(map(Cr3ToFrame(Word(ctx, cr3)), $"vCPU {vcpu}'s CR3")));
        if (!Is32 && Word(ctx, cr1) is var user and not 0)
            SetWord(ctx, cr1, map(user >> 12, $"vCPU {vcpu}'s user CR3") << 12);
        ulong ents = Word(ctx, GdtEntsOffset);
        for (int i = 0; i < (int)Math.Min(16, (ents + 511) / 512); i++)
            SetWord(ctx, GdtFramesOffset + i * Width, map(Word(ctx, GdtFramesOffset + i * Width), $"vCPU {vcpu}'s GDT frame {i}"));
        if (vcpu == 0)
            SetWord(ctx, EdxOffset, map(Word(ctx, EdxOffset), "the suspend record (vCPU 0's EDX)"));
    }

    public ulong SuspendRecord(ReadOnlySpan<byte> ctx) => Word(ctx, EdxOffset);

    /// <summary>The frame bits of a page-table entry (bits 12–51).</summary>
    public const ulong PteFrameMask = 0x000FFFFFFFFFF000;
    public const ulong PtePresent = 1;

    /// <summary>Whether slot <paramref name="index"/> of a table of <paramref name="level"/> holds Xen's mappings,
    /// not the guest's: a 64-bit L4's slots 256–271; a PAE L3's beyond the first four; a PAE L2's from the compat
    /// hypervisor area (0xF5800000) up.</summary>
    public bool IsXenSlot(int level, int index) => Is32
        ? (level == 3 && index >= 4) || (level == 2 && index >= (int)((0xF5800000UL >> 21) & 511))
        : level == 4 && index is >= 256 and <= 271;
}
