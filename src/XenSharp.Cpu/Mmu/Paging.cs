using System.Runtime.CompilerServices;

namespace XenSharp.Cpu;

internal enum Access { Read, Write, Fetch }

internal unsafe partial class X86Vcpu
{
    private const ulong PteP = 1, PteRw = 2, PteUs = 4, PteA = 0x20, PteD = 0x40, PtePs = 0x80, PteG = 0x100;
    private const ulong PteNx = 1UL << 63;
    private const ulong AddrMask52 = 0x000F_FFFF_FFFF_F000UL;
    /// <summary>Physical address width the engine reports (CPUID 0x80000008) and enforces.</summary>
    internal const int MaxPhysAddr = 46;
    private const ulong ReservedHigh = ((1UL << 52) - 1) & ~((1UL << MaxPhysAddr) - 1);

    internal bool PagingEnabled => (Cr0 & 0x80000000) != 0;

    private byte* PhysPtr(ulong pa, bool write)
    {
        byte* page = _mem.GetPage(pa >> 12, write);
        return page == null ? null : page + (pa & 0xFFF);
    }

    /// <summary>Reads (and updates A/D in) one paging-structure entry; null entry pointer means not RAM. In an
    /// instruction's walk (<paramref name="engineWalk"/>) a table in a page that is paged out stops the instruction
    /// with an MMIO read exit at the entry (see <see cref="IGuestMemory.IsPaged"/>).</summary>
    private ulong ReadPte(ulong pa, bool wide, out byte* ptr, bool engineWalk)
    {
        ptr = PhysPtr(pa, true) ;
        if (ptr == null)
        {
            byte* ro = PhysPtr(pa, false);
            if (ro == null && engineWalk && _mem.IsPaged(pa >> 12)) return MmioRead(pa, wide ? 8 : 4);
            return ro == null ? 0 : (wide ? *(ulong*)ro : *(uint*)ro);
        }
        return wide ? Volatile.Read(ref *(ulong*)ptr) : Volatile.Read(ref *(uint*)ptr);
    }

    private static void SetPteBits(byte* ptr, bool wide, ulong bits)
    {
        if (ptr == null) return;
        if (wide) Interlocked.Or(ref *(long*)ptr, (long)bits);
        else Interlocked.Or(ref *(int*)ptr, (int)bits);
    }

    /// <summary>
    /// Walks the guest page tables. On failure <paramref name="pfError"/> holds the #PF error code.
    /// <paramref name="setBits"/> controls whether A/D bits are written (not for probing walks).
    /// </summary>
    internal bool TryWalk(ulong lin, Access access, bool user, bool setBits, out ulong phys, out uint pfError, out bool global,
        bool implicitSupervisor = false, bool checkSmap = true)
    {
        global = false;
        pfError = 0;
        if (!PagingEnabled)
        {
            phys = LongMode ? lin : lin & 0xFFFF_FFFF;
            _lastWalkLeaf = 0;
            return true;
        }
        bool write = access == Access.Write;
        bool fetch = access == Access.Fetch;
        bool nxe = (Efer & 0x800) != 0;
        uint baseErr = (write ? 2u : 0) | (user ? 4u : 0) | (fetch && (nxe || (Cr4 & 0x100000) != 0) ? 0x10u : 0);
        bool allowWrite = true, allowUser = true, noExec = false;
        ulong entry;
        byte* p0 = null, p1 = null, p2 = null, p3 = null;
        bool wide;
        int leafLevel;
        ulong pageMask;

        if ((Cr4 & 0x20) == 0)
        {
            // 2-level 32-bit paging.
            wide = false;
            ulong pdeAddr = (Cr3 & 0xFFFF_F000) + ((lin >> 22) & 0x3FF) * 4;
            entry = ReadPte(pdeAddr, false, out p1, setBits);
            if ((entry & PteP) == 0) goto NotPresent;
            allowWrite &= (entry & PteRw) != 0; allowUser &= (entry & PteUs) != 0;
            if ((entry & PtePs) != 0 && (Cr4 & 0x10) != 0)
            {
                leafLevel = 1;
                pageMask = 0x3F_FFFF;
                ulong pbase = (entry & 0xFFC0_0000) | (((entry >> 13) & 0xFF) << 32);
                phys = pbase | (lin & pageMask);
                goto Leaf;
            }
            SetPteBitsIf(setBits, p1, false, entry, PteA);
            ulong pteAddr = (entry & 0xFFFF_F000) + ((lin >> 12) & 0x3FF) * 4;
            entry = ReadPte(pteAddr, false, out p0, setBits);
            if ((entry & PteP) == 0) goto NotPresent;
            allowWrite &= (entry & PteRw) != 0; allowUser &= (entry & PteUs) != 0;
            leafLevel = 0; pageMask = 0xFFF;
            phys = (entry & 0xFFFF_F000) | (lin & 0xFFF);
            goto Leaf;
        }

        wide = true;
        ulong table;
        if (LongMode)
        {
            ulong pml4e = ReadPte((Cr3 & AddrMask52) + ((lin >> 39) & 0x1FF) * 8, true, out p3, setBits);
            if ((pml4e & PteP) == 0) { entry = pml4e; goto NotPresent; }
            if ((pml4e & PtePs) != 0 || (pml4e & ReservedHigh) != 0 || (!nxe && (pml4e & PteNx) != 0)) goto Reserved;
            allowWrite &= (pml4e & PteRw) != 0; allowUser &= (pml4e & PteUs) != 0; noExec |= nxe && (pml4e & PteNx) != 0;
            SetPteBitsIf(setBits, p3, true, pml4e, PteA);
            ulong pdpte = ReadPte((pml4e & AddrMask52) + ((lin >> 30) & 0x1FF) * 8, true, out p2, setBits);
            if ((pdpte & PteP) == 0) { entry = pdpte; goto NotPresent; }
            if ((pdpte & ReservedHigh) != 0 || (!nxe && (pdpte & PteNx) != 0)) goto Reserved;
            allowWrite &= (pdpte & PteRw) != 0; allowUser &= (pdpte & PteUs) != 0; noExec |= nxe && (pdpte & PteNx) != 0;
            if ((pdpte & PtePs) != 0)
            {
                if ((pdpte & 0x3FFF_E000) != 0) goto Reserved;
                entry = pdpte; p1 = p2; leafLevel = 2; pageMask = 0x3FFF_FFFF;
                phys = (pdpte & AddrMask52 & ~pageMask) | (lin & pageMask);
                goto Leaf;
            }
            SetPteBitsIf(setBits, p2, true, pdpte, PteA);
            table = pdpte & AddrMask52;
        }
        else
        {
            // PAE: the PDPTEs (read here rather than cached at CR3 load).
            ulong pdpte = ReadPte((Cr3 & 0xFFFF_FFE0) + ((lin >> 30) & 3) * 8, true, out _, setBits);
            if ((pdpte & PteP) == 0) { entry = pdpte; goto NotPresent; }
            table = pdpte & AddrMask52;
        }
        ulong pde = ReadPte(table + ((lin >> 21) & 0x1FF) * 8, true, out p1, setBits);
        if ((pde & PteP) == 0) { entry = pde; goto NotPresent; }
        if ((pde & ReservedHigh) != 0 || (!nxe && (pde & PteNx) != 0)) goto Reserved;
        allowWrite &= (pde & PteRw) != 0; allowUser &= (pde & PteUs) != 0; noExec |= nxe && (pde & PteNx) != 0;
        if ((pde & PtePs) != 0)
        {
            if ((pde & 0x1F_E000) != 0) goto Reserved;
            entry = pde; leafLevel = 1; pageMask = 0x1F_FFFF;
            phys = (pde & AddrMask52 & ~pageMask) | (lin & pageMask);
            goto Leaf;
        }
        SetPteBitsIf(setBits, p1, true, pde, PteA);
        entry = ReadPte((pde & AddrMask52) + ((lin >> 12) & 0x1FF) * 8, true, out p0, setBits);
        p1 = p0;
        if ((entry & PteP) == 0) goto NotPresent;
        if ((entry & ReservedHigh) != 0 || (!nxe && (entry & PteNx) != 0)) goto Reserved;
        allowWrite &= (entry & PteRw) != 0; allowUser &= (entry & PteUs) != 0; noExec |= nxe && (entry & PteNx) != 0;
        leafLevel = 0; pageMask = 0xFFF;
        phys = (entry & AddrMask52) | (lin & 0xFFF);

    Leaf:
        {
            byte* leafPtr = leafLevel == 0 && !wide ? p0 : p1;
            if (leafLevel == 0 && wide) leafPtr = p0;
            bool supervisor = !user;
            // Permission checks (SDM 4.6).
            if (user && !allowUser) { pfError = baseErr | 1; goto Fail; }
            if (write && !allowWrite && (user || (Cr0 & 0x10000) != 0)) { pfError = baseErr | 1; goto Fail; }
            if (fetch && noExec) { pfError = baseErr | 1; goto Fail; }
            if (supervisor && allowUser)
            {
                if (fetch && (Cr4 & 0x100000) != 0) { pfError = baseErr | 1; goto Fail; } // SMEP
                if (!fetch && checkSmap && (Cr4 & 0x200000) != 0 && (implicitSupervisor || (Rflags & AC) == 0)) { pfError = baseErr | 1; goto Fail; } // SMAP
            }
            global = (entry & PteG) != 0 && (Cr4 & 0x80) != 0;
            if (setBits)
            {
                ulong bits = PteA | (write ? PteD : 0);
                if ((entry & bits) != bits) SetPteBits(leafPtr, wide, bits);
            }
            _lastWalkWritable = allowWrite || (!user && (Cr0 & 0x10000) == 0);
            _lastWalkDirty = write || (entry & PteD) != 0;
            _lastWalkUser = allowUser;
            _lastWalkLeaf = leafLevel == 1 && !wide ? 3 : leafLevel;
            return true;
        }
    NotPresent:
        phys = 0;
        pfError = baseErr;
        goto Fail;
    Reserved:
        phys = 0;
        pfError = baseErr | 1 | 8;
    Fail:
        phys = 0;
        return false;
    }

    private bool _lastWalkWritable, _lastWalkDirty, _lastWalkUser;
    /// <summary>The last walk's page: 0 for 4 KiB, 1 for 2 MiB, 2 for 1 GiB, 3 for 4 MiB.</summary>
    private int _lastWalkLeaf;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SetPteBitsIf(bool set, byte* ptr, bool wide, ulong entry, ulong bits)
    {
        if (set && (entry & bits) != bits) SetPteBits(ptr, wide, bits);
    }

    /// <summary>Translates or raises #PF with the exact error code and CR2.</summary>
    internal ulong Translate(ulong lin, Access access, bool user, bool implicitSupervisor = false)
        => Translate(lin, access, user, out _, implicitSupervisor);

    /// <summary><see cref="Translate"/> with a page fault recorded in <see cref="Abort"/> rather than thrown: false then,
    /// and the caller returns at once. For the instruction fetch of a block not yet decoded, which faults once a page of
    /// every program Linux starts (demand paging of its text), where a thrown fault costs microseconds.</summary>
    internal bool TranslateSoft(ulong lin, Access access, bool user, out ulong phys, out bool global)
    {
        if (LongMode && !Canonical(lin)) throw GP();
        if (TryWalk(lin, access, user, true, out phys, out uint err, out global)) return true;
        Cr2 = lin;
        Fault(14, err);
        Abort = AbortFault;
        return false;
    }

    internal ulong Translate(ulong lin, Access access, bool user, out bool global, bool implicitSupervisor = false)
    {
        if (LongMode && !Canonical(lin)) throw GP();
        if (!TryWalk(lin, access, user, true, out ulong phys, out uint err, out global, implicitSupervisor))
        {
            Cr2 = lin;
            throw Fault(14, err);
        }
        return phys;
    }
}
