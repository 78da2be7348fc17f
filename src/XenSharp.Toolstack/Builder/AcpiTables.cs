using System.Buffers.Binary;
using System.Text;

namespace XenSharp.Toolstack.Builder;

/// <summary>
/// The ACPI tables a PVH guest gets (as Xen's toolstack gives them): RSDP, XSDT and RSDT, a
/// revision 5 FADT without VGA, CMOS RTC or PM timer, FACS, a DSDT holding one Processor object per
/// vCPU and \_S5, and a MADT with one local APIC per vCPU (processor UID i, APIC ID 2·i). Poweroff
/// is the write of SLP_TYP=<see cref="S5SleepType"/> with SLP_EN to the PM1a control port.
/// </summary>
public static class AcpiTables
{
    public const ulong InfoPage = 0xFC000000;
    public const ulong TablesBase = 0xFC001000;
    public const uint LapicAddress = 0xFEE00000;
    public const ushort Pm1aEventPort = 0xB000, Pm1aControlPort = 0xB004, Gpe0Port = 0xAFE0;
    public const byte Pm1EventLength = 4, Pm1ControlLength = 2, Gpe0Length = 4;
    public const byte S5SleepType = 7;
    public const int SciInterrupt = 9;

    public const string OemId = "Xen", OemTableId = "HVM", CreatorId = "HVML";

    /// <summary>The tables laid out from <see cref="TablesBase"/>, and where the RSDP is.</summary>
    public sealed record Image(ulong Base, byte[] Bytes, ulong RsdpAddress, IReadOnlyDictionary<string, ulong> TableAddresses)
    {
        public ulong End => Base + (ulong)Bytes.Length;
    }

    public static Image Build(int onlineVcpus, int maxVcpus, ulong baseAddress = TablesBase)
    {
        if (maxVcpus < 1 || maxVcpus > 128 || onlineVcpus < 1 || onlineVcpus > maxVcpus)
            throw new ArgumentOutOfRangeException(nameof(maxVcpus));
        var buf = new MemoryStream();
        var addrs = new Dictionary<string, ulong>();

        ulong Place(string name, byte[] table, int align)
        {
            while (buf.Length % align != 0) buf.WriteByte(0);
            ulong at = baseAddress + (ulong)buf.Length;
            buf.Write(table);
            addrs[name] = at;
            return at;
        }

        ulong facs = Place("FACS", Facs(), 64);
        ulong dsdt = Place("DSDT", Dsdt(maxVcpus), 16);
        ulong fadt = Place("FACP", Fadt(facs, dsdt), 16);
        ulong madt = Place("APIC", Madt(onlineVcpus, maxVcpus), 16);
        ulong[] entries = [fadt, madt];
        ulong xsdt = Place("XSDT", Xsdt(entries), 16);
        ulong rsdt = Place("RSDT", Rsdt(entries), 16);
        ulong rsdp = Place("RSDP", Rsdp(rsdt, xsdt), 16);
        return new Image(baseAddress, buf.ToArray(), rsdp, addrs);
    }

    private static byte[] Header(string signature, int length, byte revision)
    {
        var t = new byte[length];
        Encoding.ASCII.GetBytes(signature).CopyTo(t, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(4), (uint)length);
        t[8] = revision;
        Pad(OemId, 6).CopyTo(t, 10);
        Pad(OemTableId, 8).CopyTo(t, 16);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(24), 0); // OEM revision
        Pad(CreatorId, 4).CopyTo(t, 28);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(32), 0); // creator revision
        return t;
    }

    private static byte[] Pad(string s, int n)
    {
        var b = new byte[n];
        Array.Fill(b, (byte)' ');
        Encoding.ASCII.GetBytes(s).CopyTo(b, 0);
        return b;
    }

    private static byte[] Seal(byte[] t, int checksumOffset = 9)
    {
        t[checksumOffset] = 0;
        t[checksumOffset] = Checksum(t);
        return t;
    }

    public static byte Checksum(ReadOnlySpan<byte> b)
    {
        byte sum = 0;
        foreach (byte x in b) sum += x;
        return (byte)(0 - sum);
    }

    private static byte[] Rsdp(ulong rsdt, ulong xsdt)
    {
        var t = new byte[36];
        Encoding.ASCII.GetBytes("RSD PTR ").CopyTo(t, 0);
        Pad(OemId, 6).CopyTo(t, 9);
        t[15] = 2; // ACPI 2.0+
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(16), (uint)rsdt);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(20), 36);
        BinaryPrimitives.WriteUInt64LittleEndian(t.AsSpan(24), xsdt);
        t[8] = Checksum(t.AsSpan(0, 20));
        t[32] = Checksum(t);
        return t;
    }

    private static byte[] Xsdt(ulong[] entries)
    {
        var t = Header("XSDT", 36 + 8 * entries.Length, 1);
        for (int i = 0; i < entries.Length; i++) BinaryPrimitives.WriteUInt64LittleEndian(t.AsSpan(36 + 8 * i), entries[i]);
        return Seal(t);
    }

    private static byte[] Rsdt(ulong[] entries)
    {
        var t = Header("RSDT", 36 + 4 * entries.Length, 1);
        for (int i = 0; i < entries.Length; i++) BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(36 + 4 * i), (uint)entries[i]);
        return Seal(t);
    }

    private static byte[] Facs()
    {
        var t = new byte[64];
        Encoding.ASCII.GetBytes("FACS").CopyTo(t, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(4), 64);
        t[32] = 2; // version
        return t;
    }

    /// <summary>FADT revision 5 (268 bytes).</summary>
    private static byte[] Fadt(ulong facs, ulong dsdt)
    {
        var t = Header("FACP", 268, 5);
        var s = t.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(s[36..], (uint)facs);
        BinaryPrimitives.WriteUInt32LittleEndian(s[40..], (uint)dsdt);
        BinaryPrimitives.WriteUInt16LittleEndian(s[46..], SciInterrupt);
        // SMI_CMD = 0: ACPI is always enabled, nothing to switch.
        BinaryPrimitives.WriteUInt32LittleEndian(s[56..], Pm1aEventPort);
        BinaryPrimitives.WriteUInt32LittleEndian(s[64..], Pm1aControlPort);
        BinaryPrimitives.WriteUInt32LittleEndian(s[80..], Gpe0Port);
        t[88] = Pm1EventLength;
        t[89] = Pm1ControlLength;
        t[92] = Gpe0Length;
        BinaryPrimitives.WriteUInt16LittleEndian(s[96..], 0x65); // C2 latency > 100: C2 unsupported
        BinaryPrimitives.WriteUInt16LittleEndian(s[98..], 0x3E9); // C3 latency > 1000: C3 unsupported
        // IAPC_BOOT_ARCH: VGA not present (bit 2), CMOS RTC not present (bit 5); no legacy devices, no 8042.
        BinaryPrimitives.WriteUInt16LittleEndian(s[109..], (1 << 2) | (1 << 5));
        // Flags: WBINVD, PROC_C1, PWR_BUTTON and SLP_BUTTON as control methods (none present).
        BinaryPrimitives.WriteUInt32LittleEndian(s[112..], (1 << 0) | (1 << 2) | (1 << 4) | (1 << 5));
        t[131] = 0; // FADT minor version
        BinaryPrimitives.WriteUInt64LittleEndian(s[132..], facs);
        BinaryPrimitives.WriteUInt64LittleEndian(s[140..], dsdt);
        Gas(s[148..], Pm1aEventPort, Pm1EventLength);
        Gas(s[172..], Pm1aControlPort, Pm1ControlLength);
        Gas(s[220..], Gpe0Port, Gpe0Length);
        return Seal(t);
    }

    /// <summary>A Generic Address Structure for an I/O port block.</summary>
    private static void Gas(Span<byte> g, ushort port, byte length)
    {
        g[0] = 1; // system I/O
        g[1] = (byte)(length * 8);
        g[2] = 0;
        g[3] = length switch { 1 => 1, 2 => 2, 4 => 3, _ => 0 };
        BinaryPrimitives.WriteUInt64LittleEndian(g[4..], port);
    }

    private static byte[] Madt(int online, int max)
    {
        int len = 44 + 8 * max;
        var t = Header("APIC", len, 3);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(36), LapicAddress);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(40), 0); // no dual 8259
        for (int i = 0; i < max; i++)
        {
            int o = 44 + 8 * i;
            t[o] = 0; // processor local APIC
            t[o + 1] = 8;
            t[o + 2] = (byte)i;            // ACPI processor UID = vCPU id
            t[o + 3] = (byte)(2 * i);      // APIC ID
            BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(o + 4), i < online ? 1u : 0u);
        }
        return Seal(t);
    }

    public static int ApicId(int vcpu) => 2 * vcpu;

    private static byte[] Dsdt(int maxVcpus)
    {
        var aml = new MemoryStream();
        // Scope (\_SB) { Processor (PRxx, i, 0, 0) {} ... }
        var sb = new MemoryStream();
        for (int i = 0; i < maxVcpus; i++)
        {
            var body = new MemoryStream();
            body.Write(Encoding.ASCII.GetBytes($"PR{i:X2}"));
            body.WriteByte((byte)i);                 // ProcID = MADT processor UID
            body.Write(new byte[4]);                 // PBLK address
            body.WriteByte(0);                       // PBLK length
            sb.WriteByte(0x5B); sb.WriteByte(0x83);  // ProcessorOp
            WritePkg(sb, body.ToArray());
        }
        var scope = new MemoryStream();
        scope.WriteByte((byte)'\\');
        scope.Write("_SB_"u8);
        scope.Write(sb.ToArray());
        aml.WriteByte(0x10); // ScopeOp
        WritePkg(aml, scope.ToArray());

        // Name (\_S5, Package (4) { S5SleepType, S5SleepType, 0, 0 })
        aml.WriteByte(0x08); // NameOp
        aml.WriteByte((byte)'\\');
        aml.Write("_S5_"u8);
        aml.WriteByte(0x12); // PackageOp
        WritePkg(aml, [4, 0x0A, S5SleepType, 0x0A, S5SleepType, 0x00, 0x00]);

        byte[] body2 = aml.ToArray();
        var t = Header("DSDT", 36 + body2.Length, 2);
        body2.CopyTo(t, 36);
        return Seal(t);
    }

    /// <summary>Writes a PkgLength (which counts its own bytes) followed by the contents.</summary>
    private static void WritePkg(Stream s, byte[] contents)
    {
        int n = contents.Length;
        if (n + 1 < 64) { s.WriteByte((byte)(n + 1)); }
        else
        {
            int extra = n + 2 < (1 << 12) ? 1 : n + 3 < (1 << 20) ? 2 : 3;
            int total = n + 1 + extra;
            s.WriteByte((byte)((extra << 6) | (total & 0x0F)));
            for (int i = 0; i < extra; i++) s.WriteByte((byte)(total >> (4 + 8 * i)));
        }
        s.Write(contents);
    }
}
