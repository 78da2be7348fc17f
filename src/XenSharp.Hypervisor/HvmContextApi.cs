using System.Runtime.InteropServices;
using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor;

/// <summary>XEN_DOMCTL_gethvmcontext and XEN_DOMCTL_sethvmcontext: a translated domain's vCPU and vLAPIC state as
/// the records of Xen's HVM save format (HEADER, CPU per online vCPU, LAPIC and LAPIC_REGS per vCPU, MTRR, VMCE_VCPU and
/// TSC_ADJUST per vCPU, CPU_XSAVE per online vCPU, the emulated platform's records, END), which save/restore carries in the libxc stream's HVM_CONTEXT record.</summary>
public sealed unsafe partial class XenHypervisor
{
    // MSRs a CPU record carries, read from and written to the engine.
    private const uint MsrSysenterCs = 0x174, MsrSysenterEsp = 0x175, MsrSysenterEip = 0x176, MsrPat = 0x277,
        MsrMtrrCap = 0xFE, MsrMtrrDefType = 0x2FF, MsrStar = 0xC0000081, MsrLstar = 0xC0000082, MsrCstar = 0xC0000083,
        MsrSfmask = 0xC0000084, MsrKernelGsBase = 0xC0000102, MsrTscAux = 0xC0000103;
    private static readonly uint[] MtrrFixedMsrs = [0x250, 0x258, 0x259, 0x268, 0x269, 0x26A, 0x26B, 0x26C, 0x26D, 0x26E, 0x26F];

    /// <summary>XEN_DOMCTL_gethvmcontext. The domain is held off the CPUs while it is read.</summary>
    public byte[] GetHvmContext(ushort domid)
    {
        var d = Guest(domid);
        var buffer = new MemoryStream();
        Services.PauseDomain(d);
        try
        {
            var header = new HvmSaveHeader
            {
                Magic = HvmSave.HVM_FILE_MAGIC, Version = HvmSave.HVM_FILE_VERSION, GtscKhz = (uint)(Time.TscHz / 1000),
            };
            if (d.Vcpus.Length > 0 && d.Vcpus[0].Cpuid is { } cpuid)
            {
                cpuid.Cpuid(1, 0, out uint eax, out _, out _, out _);
                header.Cpuid = eax;
            }
            Append(buffer, HvmSave.HEADER, 0, header);
            foreach (var v in d.Vcpus)
                if (v.IsUp && v.Engine is not null)
                    Append(buffer, HvmSave.CPU, (ushort)v.Id, SaveCpu(v));
            Span<byte> xsave = stackalloc byte[XsaveRecordLength];
            foreach (var v in d.Vcpus)
                if (v.IsUp && v.Engine is not null && SaveXsave(v.Engine, xsave))
                    AppendBytes(buffer, HvmSave.CPU_XSAVE, (ushort)v.Id, xsave);
            Span<byte> regs = stackalloc byte[1024];
            foreach (var v in d.Vcpus)
            {
                var lapic = v.Arch.Vlapic.Save(regs);
                Append(buffer, HvmSave.LAPIC, (ushort)v.Id, lapic);
                AppendBytes(buffer, HvmSave.LAPIC_REGS, (ushort)v.Id, regs);
            }
            foreach (var v in d.Vcpus)
                if (v.Engine is not null)
                    Append(buffer, HvmSave.MTRR, (ushort)v.Id, SaveMtrr(v.Engine));
            foreach (var v in d.Vcpus)
                Append(buffer, HvmSave.VMCE_VCPU, (ushort)v.Id, v.Arch.Vmce.Save());
            // struct hvm_tsc_adjust: IA32_TSC_ADJUST, for every vCPU as Xen saves it.
            foreach (var v in d.Vcpus)
                if (v.Engine is IX86Vcpu x)
                    Append(buffer, HvmSave.TSC_ADJUST, (ushort)v.Id, x.TscAdjustValue);
            d.Arch.Platform?.Save((type, instance, body) => AppendBytes(buffer, type, instance, body));
            AppendBytes(buffer, HvmSave.END, 0, []);
            return buffer.ToArray();
        }
        finally { Services.UnpauseDomain(d); }
    }

    /// <summary>XEN_DOMCTL_sethvmcontext for a domain that has not run: loads every record, then brings up the vCPUs
    /// that had a CPU record (the others stay down, as in Xen). The whole context is checked before anything is
    /// loaded, so a bad one changes nothing; it fails with EINVAL naming the first bad record.</summary>
    public void SetHvmContext(ushort domid, ReadOnlySpan<byte> context)
    {
        var d = Guest(domid);
        // Per vCPU, indexed by the record's instance (checked against the vCPUs below): plain arrays rather than
        // dictionaries of these structs, whose generic code a daemon's first restore (a migration's downtime) would
        // otherwise compile.
        int n = d.Vcpus.Length;
        var cpus = new HvmHwCpu?[n];
        var lapics = new HvmHwLapic?[n];
        var lapicRegs = new byte[n][];
        var mtrrs = new HvmHwMtrr?[n];
        var xsaves = new byte[n][];
        var tscAdjusts = new long?[n];
        var vmces = new HvmVmceVcpu?[n];
        var platform = new List<(HvmSaveDescriptor Desc, byte[] Body)>();
        bool sawHeader = false, sawEnd = false;
        int offset = 0;
        while (!sawEnd)
        {
            if (context.Length - offset < sizeof(HvmSaveDescriptor))
                throw BadContext($"truncated at byte {offset}");
            var desc = MemoryMarshal.Read<HvmSaveDescriptor>(context[offset..]);
            offset += sizeof(HvmSaveDescriptor);
            if ((ulong)desc.Length > (ulong)(context.Length - offset))
                throw BadContext($"record type {desc.Typecode} of {desc.Length} bytes runs past the end");
            var body = context.Slice(offset, (int)desc.Length);
            offset += (int)desc.Length;
            if (!sawHeader && desc.Typecode != HvmSave.HEADER)
                throw BadContext("does not begin with a header record");
            bool perVcpu = desc.Typecode is HvmSave.CPU or HvmSave.CPU_XSAVE or HvmSave.LAPIC or HvmSave.LAPIC_REGS or HvmSave.MTRR
                or HvmSave.TSC_ADJUST or HvmSave.VMCE_VCPU;
            if (perVcpu && desc.Instance >= d.Vcpus.Length)
                throw BadContext($"record type {desc.Typecode} is for vCPU {desc.Instance}, the domain has {d.Vcpus.Length}");
            switch (desc.Typecode)
            {
                case HvmSave.HEADER:
                    var h = Exact<HvmSaveHeader>(body, desc);
                    if (h.Magic != HvmSave.HVM_FILE_MAGIC || h.Version != HvmSave.HVM_FILE_VERSION)
                        throw BadContext($"header magic {h.Magic:x} version {h.Version}, expected {HvmSave.HVM_FILE_MAGIC:x} version {HvmSave.HVM_FILE_VERSION}");
                    sawHeader = true;
                    break;
                case HvmSave.CPU: cpus[desc.Instance] = Exact<HvmHwCpu>(body, desc); break;
                case HvmSave.LAPIC: lapics[desc.Instance] = Exact<HvmHwLapic>(body, desc); break;
                case HvmSave.LAPIC_REGS:
                    if (body.Length != 1024) throw BadContext($"LAPIC_REGS of {body.Length} bytes, expected 1024");
                    lapicRegs[desc.Instance] = body.ToArray();
                    break;
                case HvmSave.MTRR: mtrrs[desc.Instance] = Exact<HvmHwMtrr>(body, desc); break;
                case HvmSave.TSC_ADJUST: tscAdjusts[desc.Instance] = Exact<long>(body, desc); break;
                case HvmSave.VMCE_VCPU:
                {
                    // Shorter records (older Xens') are zero-extended, as Xen's hvm_load_entry_zeroextend does.
                    if (body.Length > sizeof(HvmVmceVcpu)) throw BadContext($"VMCE_VCPU of {body.Length} bytes, at most {sizeof(HvmVmceVcpu)}");
                    HvmVmceVcpu vmce = default;
                    body.CopyTo(MemoryMarshal.AsBytes(new Span<HvmVmceVcpu>(ref vmce)));
                    if (!X86.Vmce.IsValid(vmce)) throw BadContext($"VMCE_VCPU of vCPU {desc.Instance} with MCA capabilities {vmce.Caps:x}");
                    vmces[desc.Instance] = vmce;
                    break;
                }
                case HvmSave.CPU_XSAVE:
                    if (body.Length < XsaveRecordLength) throw BadContext($"CPU_XSAVE of {body.Length} bytes, at least {XsaveRecordLength} expected");
                    ulong xcr0 = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(body[8..]);
                    uint mxcsr = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(body[(24 + 24)..]);
                    if ((xcr0 & 1) == 0 || (mxcsr & 0xFFFF0000) != 0)
                        throw BadContext($"CPU_XSAVE of vCPU {desc.Instance} with XCR0 0x{xcr0:x} and MXCSR 0x{mxcsr:x}");
                    xsaves[desc.Instance] = body.ToArray();
                    break;
                case HvmSave.END: sawEnd = true; break;
                case var t when d.Arch.Platform is not null && X86.HvmPlatform.IsPlatformRecord(t):
                    if (!X86.HvmPlatform.IsValidRecord(t, desc.Instance, body))
                        throw BadContext($"record type {t} instance {desc.Instance} of {body.Length} bytes");
                    platform.Add((desc, body.ToArray()));
                    break;
                default:
                    // Records of devices XenSharp does not emulate for PVH (PIC, IOAPIC, PIT, RTC, ...) are not ours to load.
                    break;
            }
        }

        lock (d.Lock)
            if (d.State == DomainRunState.Running && d.PauseCount == 0)
                throw new HypervisorException($"domain {domid} is running; its context can only be set while it is paused", Errno.EBUSY);
        foreach (var v in d.Vcpus)
        {
            if (lapics[v.Id] is { } lapic && lapicRegs[v.Id] is { } regs)
                v.Arch.Vlapic.Load(lapic, regs);
            if (mtrrs[v.Id] is { } mtrr && v.Engine is not null)
                LoadMtrr(v.Engine, mtrr);
            if (cpus[v.Id] is { } cpu)
            {
                LoadCpu(v, cpu);
                // The FXSAVE image of the CPU record with the reset XCR0, unless a CPU_XSAVE record says more (an
                // engine that keeps its FPU to itself keeps its own).
                if (v.Engine is { } e && !(xsaves[v.Id] is { } xs && LoadXsave(e, xs)))
                    e.TrySetFpuState(new ReadOnlySpan<byte>(cpu.FpuRegs, 512), 1);
            }
            if (vmces[v.Id] is { } vmce)
                v.Arch.Vmce.Load(vmce);
            // After the CPU record's TSC: the adjust value is loaded as kept, the counter stays where that put it.
            if (tscAdjusts[v.Id] is { } adjust && v.Engine is IX86Vcpu x)
                x.TscAdjustValue = adjust;
        }
        foreach (var (desc, body) in platform)
            if (X86.HvmPlatform.LoadsFirst(desc.Typecode))
                d.Arch.Platform!.TryLoad(desc.Typecode, desc.Instance, body);
        foreach (var (desc, body) in platform)
            if (!X86.HvmPlatform.LoadsFirst(desc.Typecode))
                d.Arch.Platform!.TryLoad(desc.Typecode, desc.Instance, body);
        foreach (var v in d.Vcpus)
            if (cpus[v.Id] is not null)
                Services.BringUp(v);
    }

    /// <summary>A frame as save carries it: RAM with a frame behind it, or a Xen page (shared info, grant frame)
    /// the guest placed in its physical space (the foreign mapping libxc's save reads it through).</summary>
    public bool TryReadSaveFrame(ushort domid, ulong gfn, Span<byte> page)
    {
        var d = Guest(domid);
        lock (d.Lock)
        {
            if (!d.P2m.TryLookup(gfn, out uint mfn, out var type) || type is not (P2mType.RamRw or P2mType.RamRo or P2mType.XenShared))
                return false;
            Frames.CopyOut(mfn, page);
            return true;
        }
    }

    private static HypervisorException BadContext(string what) => new($"invalid HVM context: {what}", Errno.EINVAL);

    private static T Exact<T>(ReadOnlySpan<byte> body, HvmSaveDescriptor desc) where T : unmanaged
    {
        if (body.Length != sizeof(T))
            throw BadContext($"record type {desc.Typecode} of {body.Length} bytes, expected {sizeof(T)}");
        return MemoryMarshal.Read<T>(body);
    }

    private static void Append<T>(MemoryStream s, ushort type, ushort instance, T value) where T : unmanaged =>
        AppendBytes(s, type, instance, MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)));

    private static void AppendBytes(MemoryStream s, ushort type, ushort instance, ReadOnlySpan<byte> body)
    {
        var desc = new HvmSaveDescriptor { Typecode = type, Instance = instance, Length = (uint)body.Length };
        s.Write(MemoryMarshal.AsBytes(new ReadOnlySpan<HvmSaveDescriptor>(in desc)));
        s.Write(body);
    }

    /// <summary>hvm_hw_cpu_xsave with the x87 and SSE components, the ones the engine has: xfeature_mask, xcr0,
    /// xcr0_accum, the 512-byte legacy region and the 64-byte XSAVE header.</summary>
    private const int XsaveRecordLength = 24 + 512 + 64;

    private static bool SaveXsave(IVcpu e, Span<byte> record)
    {
        record.Clear();
        if (!e.TryGetFpuState(record.Slice(24, 512), out ulong xcr0)) return false;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(record, xcr0);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(record[8..], xcr0);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(record[16..], xcr0);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(record[(24 + 512)..], xcr0 & 3);
        return true;
    }

    private static bool LoadXsave(IVcpu e, ReadOnlySpan<byte> record)
    {
        ulong xcr0 = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(record[8..]);
        if (!e.TrySetFpuState(record.Slice(24, 512), xcr0))
            throw BadContext($"CPU_XSAVE with XCR0 0x{xcr0:x} or an FPU state the CPU refuses");
        return true;
    }

    private HvmHwCpu SaveCpu(Vcpu v)
    {
        Registers r;
        SpecialRegisters s;
        var e = v.Engine!;
        if (v.PendingContext is { } pending)
            (r, s) = pending;
        else
        {
            e.GetRegisters(out r);
            e.GetSpecialRegisters(out s);
        }
        ulong Msr(uint index) => e.TryGetMsr(index, out ulong value) ? value : 0;
        var c = new HvmHwCpu
        {
            Rax = r.Rax, Rbx = r.Rbx, Rcx = r.Rcx, Rdx = r.Rdx, Rbp = r.Rbp, Rsi = r.Rsi, Rdi = r.Rdi, Rsp = r.Rsp,
            R8 = r.R8, R9 = r.R9, R10 = r.R10, R11 = r.R11, R12 = r.R12, R13 = r.R13, R14 = r.R14, R15 = r.R15,
            Rip = r.Rip, Rflags = r.Rflags,
            Cr0 = s.Cr0, Cr2 = s.Cr2, Cr3 = s.Cr3, Cr4 = s.Cr4, Dr6 = 0xFFFF0FF0, Dr7 = 0x400,
            CsSel = s.Cs.Selector, DsSel = s.Ds.Selector, EsSel = s.Es.Selector, FsSel = s.Fs.Selector,
            GsSel = s.Gs.Selector, SsSel = s.Ss.Selector, TrSel = s.Tr.Selector, LdtrSel = s.Ldt.Selector,
            CsLimit = s.Cs.Limit, DsLimit = s.Ds.Limit, EsLimit = s.Es.Limit, FsLimit = s.Fs.Limit, GsLimit = s.Gs.Limit,
            SsLimit = s.Ss.Limit, TrLimit = s.Tr.Limit, LdtrLimit = s.Ldt.Limit, IdtrLimit = s.Idt.Limit, GdtrLimit = s.Gdt.Limit,
            CsBase = s.Cs.Base, DsBase = s.Ds.Base, EsBase = s.Es.Base, FsBase = s.Fs.Base, GsBase = s.Gs.Base,
            SsBase = s.Ss.Base, TrBase = s.Tr.Base, LdtrBase = s.Ldt.Base, IdtrBase = s.Idt.Base, GdtrBase = s.Gdt.Base,
            CsArbytes = ToXenAttributes(s.Cs.Attributes), DsArbytes = ToXenAttributes(s.Ds.Attributes),
            EsArbytes = ToXenAttributes(s.Es.Attributes), FsArbytes = ToXenAttributes(s.Fs.Attributes),
            GsArbytes = ToXenAttributes(s.Gs.Attributes), SsArbytes = ToXenAttributes(s.Ss.Attributes),
            TrArbytes = ToXenAttributes(s.Tr.Attributes), LdtrArbytes = ToXenAttributes(s.Ldt.Attributes),
            SysenterCs = Msr(MsrSysenterCs), SysenterEsp = Msr(MsrSysenterEsp), SysenterEip = Msr(MsrSysenterEip),
            ShadowGs = Msr(MsrKernelGsBase),
            MsrLstar = Msr(MsrLstar), MsrStar = Msr(MsrStar), MsrCstar = Msr(MsrCstar), MsrSyscallMask = Msr(MsrSfmask),
            MsrEfer = s.Efer, MsrTscAux = Msr(MsrTscAux),
            Tsc = Time.ReadTsc(Time.NowNs),
            Flags = HvmSave.XEN_X86_FPU_INITIALISED,
        };
        if (!e.TryGetFpuState(new Span<byte>(c.FpuRegs, 512), out _))
        {
            // An engine that keeps its FPU to itself: the reset FXSAVE image (FCW 0x37F, MXCSR 0x1F80 and its mask).
            c.FpuRegs[0] = 0x7F; c.FpuRegs[1] = 0x03;
            c.FpuRegs[24] = 0x80; c.FpuRegs[25] = 0x1F;
            c.FpuRegs[28] = 0xFF; c.FpuRegs[29] = 0xFF;
        }
        return c;
    }

    private static void LoadCpu(Vcpu v, in HvmHwCpu c)
    {
        var r = new Registers
        {
            Rax = c.Rax, Rbx = c.Rbx, Rcx = c.Rcx, Rdx = c.Rdx, Rbp = c.Rbp, Rsi = c.Rsi, Rdi = c.Rdi, Rsp = c.Rsp,
            R8 = c.R8, R9 = c.R9, R10 = c.R10, R11 = c.R11, R12 = c.R12, R13 = c.R13, R14 = c.R14, R15 = c.R15,
            Rip = c.Rip, Rflags = c.Rflags | 2,
        };
        static Segment Seg(uint sel, ulong b, uint limit, uint ar) =>
            new() { Selector = (ushort)sel, Base = b, Limit = limit, Attributes = FromXenAttributes(ar) };
        var s = new SpecialRegisters
        {
            Cs = Seg(c.CsSel, c.CsBase, c.CsLimit, c.CsArbytes), Ds = Seg(c.DsSel, c.DsBase, c.DsLimit, c.DsArbytes),
            Es = Seg(c.EsSel, c.EsBase, c.EsLimit, c.EsArbytes), Fs = Seg(c.FsSel, c.FsBase, c.FsLimit, c.FsArbytes),
            Gs = Seg(c.GsSel, c.GsBase, c.GsLimit, c.GsArbytes), Ss = Seg(c.SsSel, c.SsBase, c.SsLimit, c.SsArbytes),
            Tr = Seg(c.TrSel, c.TrBase, c.TrLimit, c.TrArbytes), Ldt = Seg(c.LdtrSel, c.LdtrBase, c.LdtrLimit, c.LdtrArbytes),
            Gdt = new DescriptorTable { Base = c.GdtrBase, Limit = (ushort)c.GdtrLimit },
            Idt = new DescriptorTable { Base = c.IdtrBase, Limit = (ushort)c.IdtrLimit },
            Cr0 = c.Cr0, Cr2 = c.Cr2, Cr3 = c.Cr3, Cr4 = c.Cr4, Efer = c.MsrEfer,
            Cr8 = v.Arch.Vlapic.Read(X86.Vlapic.TPR) >> 4,
            ApicBase = v.Arch.Vlapic.ApicBase,
        };
        if (v.Engine is { } e)
        {
            e.TrySetMsr(MsrSysenterCs, c.SysenterCs);
            e.TrySetMsr(MsrSysenterEsp, c.SysenterEsp);
            e.TrySetMsr(MsrSysenterEip, c.SysenterEip);
            e.TrySetMsr(MsrKernelGsBase, c.ShadowGs);
            e.TrySetMsr(MsrLstar, c.MsrLstar);
            e.TrySetMsr(MsrStar, c.MsrStar);
            e.TrySetMsr(MsrCstar, c.MsrCstar);
            e.TrySetMsr(MsrSfmask, c.MsrSyscallMask);
            e.TrySetMsr(MsrTscAux, c.MsrTscAux);
        }
        v.PendingContext = (r, s);
        v.Initialised = true;
        v.Blocked = false;
    }

    private static HvmHwMtrr SaveMtrr(IVcpu e)
    {
        var m = new HvmHwMtrr();
        ulong Msr(uint index) => e.TryGetMsr(index, out ulong value) ? value : 0;
        m.MsrPatCr = Msr(MsrPat);
        for (int i = 0; i < HvmHwMtrr.MTRR_VCNT * 2; i++) m.MsrMtrrVar[i] = Msr(0x200u + (uint)i);
        for (int i = 0; i < HvmHwMtrr.NUM_FIXED_MSR; i++) m.MsrMtrrFixed[i] = Msr(MtrrFixedMsrs[i]);
        m.MsrMtrrCap = Msr(MsrMtrrCap);
        m.MsrMtrrDefType = Msr(MsrMtrrDefType);
        return m;
    }

    private static void LoadMtrr(IVcpu e, HvmHwMtrr m)
    {
        e.TrySetMsr(MsrPat, m.MsrPatCr);
        for (int i = 0; i < HvmHwMtrr.MTRR_VCNT * 2; i++) e.TrySetMsr(0x200u + (uint)i, m.MsrMtrrVar[i]);
        for (int i = 0; i < HvmHwMtrr.NUM_FIXED_MSR; i++) e.TrySetMsr(MtrrFixedMsrs[i], m.MsrMtrrFixed[i]);
        e.TrySetMsr(MsrMtrrDefType, m.MsrMtrrDefType);
    }

    // The engine keeps VMX access rights (type/S/DPL/P in bits 0-7, AVL/L/D/G in bits 12-15); Xen's
    // segment_attributes packs the upper four into bits 8-11.
    private static uint ToXenAttributes(ushort vmx) => (uint)((vmx & 0xFF) | ((vmx >> 4) & 0xF00));
    private static ushort FromXenAttributes(uint xen) => (ushort)((xen & 0xFF) | ((xen & 0xF00) << 4));
}
