using System.Runtime.InteropServices;

namespace XenSharp.Public.Migration;

/// <summary>The libxc migration stream (Xen's docs/specs/libxc-migration-stream.pandoc, versions 2 and 3): an image
/// header (big-endian), a domain header, then records of a type and a length, each padded to 8 bytes with zeroes.</summary>
public static class LibxcStream
{
    public const ulong IHDR_MARKER = 0xFFFFFFFFFFFFFFFF;
    /// <summary>"XENF".</summary>
    public const uint IHDR_IDENT = 0x58454E46;
    /// <summary>Version 3 adds the static data records (CPUID and MSR policies, STATIC_DATA_END); Xen 4.17 writes it.</summary>
    public const uint IHDR_VERSION = 3;
    public const ushort IHDR_OPT_LITTLE_ENDIAN = 0, IHDR_OPT_BIG_ENDIAN = 1;
    /// <summary>Bytes of the image header: marker, id, version, options, two reserved fields.</summary>
    public const int ImageHeaderSize = 24;

    public const uint DHDR_TYPE_X86_PV = 1, DHDR_TYPE_X86_HVM = 2, DHDR_TYPE_X86_HVM_NOT = 0;
    public const ushort PageShift = 12;

    // Record types.
    public const uint REC_TYPE_END = 0x00, REC_TYPE_PAGE_DATA = 0x01, REC_TYPE_X86_PV_INFO = 0x02,
        REC_TYPE_X86_PV_P2M_FRAMES = 0x03, REC_TYPE_X86_PV_VCPU_BASIC = 0x04, REC_TYPE_X86_PV_VCPU_EXTENDED = 0x05,
        REC_TYPE_X86_PV_VCPU_XSAVE = 0x06, REC_TYPE_SHARED_INFO = 0x07, REC_TYPE_X86_TSC_INFO = 0x08,
        REC_TYPE_HVM_CONTEXT = 0x09, REC_TYPE_HVM_PARAMS = 0x0A, REC_TYPE_TOOLSTACK = 0x0B,
        REC_TYPE_X86_PV_VCPU_MSRS = 0x0C, REC_TYPE_VERIFY = 0x0D, REC_TYPE_CHECKPOINT = 0x0E,
        REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST = 0x0F, REC_TYPE_STATIC_DATA_END = 0x10,
        REC_TYPE_X86_CPUID_POLICY = 0x11, REC_TYPE_X86_MSR_POLICY = 0x12;

    /// <summary>Type bits of a PAGE_DATA pfn entry (bits 60-63); the pfn is bits 0-51.</summary>
    public const int PAGE_DATA_TYPE_SHIFT = 60;
    public const ulong PAGE_DATA_PFN_MASK = (1UL << 52) - 1;
    public const ulong PAGE_DATA_TYPE_MASK = 0xFUL << PAGE_DATA_TYPE_SHIFT;
    public const ulong PAGE_DATA_TYPE_NOTAB = 0x0UL << 60, PAGE_DATA_TYPE_L1TAB = 0x1UL << 60,
        PAGE_DATA_TYPE_L2TAB = 0x2UL << 60, PAGE_DATA_TYPE_L3TAB = 0x3UL << 60, PAGE_DATA_TYPE_L4TAB = 0x4UL << 60,
        PAGE_DATA_TYPE_BROKEN = 0xDUL << 60,
        /// <summary>With L1TAB–L4TAB: the guest pinned the table (XEN_DOMCTL_PFINFO_LPINTAB).</summary>
        PAGE_DATA_TYPE_LPINTAB = 0x8UL << 60, PAGE_DATA_TYPE_LTAB_MASK = 0x7UL << 60, PAGE_DATA_TYPE_XALLOC = 0xEUL << 60, PAGE_DATA_TYPE_XTAB = 0xFUL << 60;

    /// <summary>libxc writes at most this many pages in one PAGE_DATA record (its batch size).</summary>
    public const int MaxBatchPages = 1024;
}

/// <summary>The domain header that follows the image header.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct LibxcDomainHeader
{
    public uint Type;
    public ushort PageShift;
    public ushort Reserved;
    /// <summary>The Xen release that wrote the stream.</summary>
    public uint XenMajor;
    public uint XenMinor;
}

/// <summary>Every record begins with this.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct MigrationRecordHeader
{
    public uint Type;
    /// <summary>Of the body, not counting the padding to 8 bytes.</summary>
    public uint Length;
}

/// <summary>The body of X86_TSC_INFO.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct X86TscInfo
{
    public uint Mode;
    public uint Khz;
    public ulong Nsec;
    public uint Incarnation;
    public uint Reserved;
}

/// <summary>One entry of HVM_PARAMS (after a count and a reserved word).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct HvmParamsEntry
{
    public ulong Index;
    public ulong Value;
}

/// <summary>One entry of X86_CPUID_POLICY (xen_cpuid_leaf_t).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct XenCpuidLeaf
{
    public uint Leaf, Subleaf, A, B, C, D;
}

/// <summary>The libxl migration stream (docs/specs/libxl-migration-stream.pandoc, version 2): a header
/// (big-endian), then records; LIBXC_CONTEXT is followed by the whole libxc stream.</summary>
public static class LibxlStream
{
    /// <summary>"LibxlFmt".</summary>
    public const ulong HDR_IDENT = 0x4C6962786C466D74;
    public const uint HDR_VERSION = 2;
    public const uint HDR_OPT_BIG_ENDIAN = 1, HDR_OPT_LEGACY = 2;
    public const int HeaderSize = 16;

    public const uint REC_TYPE_END = 0, REC_TYPE_LIBXC_CONTEXT = 1, REC_TYPE_EMULATOR_XENSTORE_DATA = 2,
        REC_TYPE_EMULATOR_CONTEXT = 3, REC_TYPE_CHECKPOINT_END = 4, REC_TYPE_CHECKPOINT_STATE = 5;

    /// <summary>The emulator sub-header's ids (emulator_id of EMULATOR_XENSTORE_DATA and EMULATOR_CONTEXT): qemu-xen
    /// is "Qemu Upstream".</summary>
    public const uint EMULATOR_UNKNOWN = 0, EMULATOR_QEMU_TRADITIONAL = 1, EMULATOR_QEMU_UPSTREAM = 2;

    /// <summary>The emulator sub-header: emulator_id and index, both 32-bit.</summary>
    public const int EmulatorHeaderSize = 8;
}

/// <summary>The file `xl save` writes (tools/xl/xl_saverestore.c): a magic line, a byte-order word, mandatory and
/// optional flags, then optional data (the domain's configuration), then the libxl stream.</summary>
public static class XlSaveFile
{
    /// <summary>32 bytes: "Xen saved domain, xl format\n \0 \r".</summary>
    public static ReadOnlySpan<byte> Magic => "Xen saved domain, xl format\n \0 \r"u8;
    public const uint BYTEORDER_VALUE = 0x01020304;
    /// <summary>The configuration is libxl's JSON, and the stream after it is migration v2.</summary>
    public const uint XL_MANDATORY_FLAG_JSON = 1, XL_MANDATORY_FLAG_STREAMV2 = 2;
    public const uint XL_MANDATORY_FLAG_ALL = XL_MANDATORY_FLAG_JSON | XL_MANDATORY_FLAG_STREAMV2;
    /// <summary>Magic, byteorder, mandatory flags, optional flags, optional data length.</summary>
    public const int HeaderSize = 32 + 16;
}
