using System.Runtime.InteropServices;
using XenSharp.Cpu;
using XenSharp.Public;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.Tests;

/// <summary>XEN_DOMCTL_gethvmcontext/sethvmcontext: a domain's vCPU and vLAPIC state as Xen's HVM save records,
/// loaded into another domain; a context that is cut short or malformed changes nothing.</summary>
[Trait("Feature", "xl save/restore")]
public class HvmContextTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private static List<(ushort Type, ushort Instance, byte[] Body)> Records(byte[] ctx)
    {
        var list = new List<(ushort, ushort, byte[])>();
        int o = 0;
        while (o < ctx.Length)
        {
            var d = MemoryMarshal.Read<HvmSaveDescriptor>(ctx.AsSpan(o));
            list.Add((d.Typecode, d.Instance, ctx.AsSpan(o + 8, (int)d.Length).ToArray()));
            o += 8 + (int)d.Length;
        }
        return list;
    }

    private static (Registers, SpecialRegisters) SomeState()
    {
        var code = new Segment { Selector = 0x10, Limit = 0xFFFFFFFF, Attributes = 0xA09B };
        var data = new Segment { Selector = 0x18, Limit = 0xFFFFFFFF, Attributes = 0xC093 };
        return (new Registers { Rip = 0x1234_5678, Rax = 1, Rbx = 0xB0B0, R15 = 0xF15, Rsp = 0x8000, Rflags = 0x202 },
            new SpecialRegisters
            {
                Cs = code, Ds = data, Es = data, Ss = data, Fs = data with { Base = 0xF5000 }, Gs = data with { Base = 0x65000 },
                Tr = new Segment { Selector = 0x20, Limit = 0x67, Attributes = 0x8B }, Ldt = new Segment { Attributes = 0x82 },
                Gdt = new DescriptorTable { Base = 0x5000, Limit = 0x2F }, Idt = new DescriptorTable { Base = 0x6000, Limit = 0xFFF },
                Cr0 = 0x80050033, Cr3 = 0x7000, Cr4 = 0x6A0, Efer = 0xD01,
            });
    }

    [Fact]
    public void ContextOfOneDomainLoadsIntoAnother()
    {
        var a = new Guest(_host, vcpus: 2);
        var (regs, sregs) = SomeState();
        _host.SetVcpuRegisters(a.Id, 0, regs, sregs);
        a.Vcpu(0).IsUp = true;
        a.Domain.Vcpus[0].Arch.Vlapic.Write(X86.Vlapic.TPR, 0x20);
        byte[] ctx = _host.GetHvmContext(a.Id);

        var records = Records(ctx);
        Assert.Equal(HvmSave.HEADER, records[0].Type);
        Assert.Equal(HvmSave.END, records[^1].Type);
        // A CPU record for the online vCPU only; LAPIC and LAPIC_REGS for both.
        Assert.Equal([(ushort)0], records.Where(r => r.Type == HvmSave.CPU).Select(r => r.Instance));
        Assert.Equal(2, records.Count(r => r.Type == HvmSave.LAPIC_REGS));
        var cpu = MemoryMarshal.Read<HvmHwCpu>(records.Single(r => r.Type == HvmSave.CPU).Body);
        Assert.Equal(0x1234_5678UL, cpu.Rip);
        Assert.Equal(0x7000UL, cpu.Cr3);
        Assert.Equal(0xA09Bu & 0xFF | 0xA00, cpu.CsArbytes); // Xen's packing: G/D/L/AVL in bits 8-11
        Assert.Equal(0x65000UL, cpu.GsBase);

        var b = new Guest(_host, vcpus: 2);
        Assert.False(b.Vcpu(0).IsUp && b.Vcpu(0).PendingContext is not null);
        _host.SetHvmContext(b.Id, ctx);
        Assert.True(b.Vcpu(0).IsUp);
        Assert.False(b.Vcpu(1).IsUp);
        var (r, s) = b.Vcpu(0).PendingContext!.Value;
        Assert.Equal(regs.Rip, r.Rip);
        Assert.Equal(regs.R15, r.R15);
        Assert.Equal(sregs.Cs.Attributes, s.Cs.Attributes);
        Assert.Equal(sregs.Gdt.Base, s.Gdt.Base);
        Assert.Equal(sregs.Efer, s.Efer);
        Assert.Equal(0x20u, b.Domain.Vcpus[0].Arch.Vlapic.Read(X86.Vlapic.TPR));
    }

    [Fact]
    public void TscAdjustTravelsInItsOwnRecord()
    {
        // The x86 engine, which has IA32_TSC_ADJUST: a TSC_ADJUST record for every vCPU, as Xen saves it, loaded
        // into the other domain's vCPU as kept.
        using var host = new XenHypervisor(new HypervisorOptions { MachineMemoryBytes = 256UL << 20, Pcpus = 1, EngineFactory = m => new X86Engine(m) });
        var a = new Guest(host, vcpus: 2);
        var (regs, sregs) = SomeState();
        host.SetVcpuRegisters(a.Id, 0, regs, sregs);
        a.Vcpu(0).IsUp = true;
        Assert.True(a.Domain.Vcpus[0].Engine!.TrySetMsr(0x3B, 0x5000));
        byte[] ctx = host.GetHvmContext(a.Id);
        Assert.Equal([0x5000L, 0L], Records(ctx).Where(r => r.Type == HvmSave.TSC_ADJUST).Select(r => MemoryMarshal.Read<long>(r.Body)));

        var b = new Guest(host, vcpus: 2);
        host.SetHvmContext(b.Id, ctx);
        Assert.True(b.Domain.Vcpus[0].Engine!.TryGetMsr(0x3B, out ulong adjust));
        Assert.Equal(0x5000UL, adjust);
    }

    [Fact]
    public void BadContextsAreRefusedAndChangeNothing()
    {
        var a = new Guest(_host, vcpus: 1);
        var (regs, sregs) = SomeState();
        _host.SetVcpuRegisters(a.Id, 0, regs, sregs);
        a.Vcpu(0).IsUp = true;
        byte[] ctx = _host.GetHvmContext(a.Id);

        var b = new Guest(_host, vcpus: 1);
        void Refused(byte[] bad, string why)
        {
            var e = Assert.Throws<HypervisorException>(() => _host.SetHvmContext(b.Id, bad));
            Assert.Equal(Errno.EINVAL, e.Errno);
            Assert.Contains(why, e.Message);
            Assert.Null(b.Vcpu(0).PendingContext);
        }
        Refused(ctx[..(ctx.Length - 8)], "truncated");
        var magic = (byte[])ctx.Clone();
        magic[8] ^= 1;
        Refused(magic, "magic");
        var vcpu = (byte[])ctx.Clone();
        int cpuAt = 8 + Marshal.SizeOf<HvmSaveHeader>();
        vcpu[cpuAt + 2] = 5; // the CPU record's instance
        Refused(vcpu, "vCPU 5");
        var length = (byte[])ctx.Clone();
        length[cpuAt + 4] ^= 0x10; // the CPU record's length
        Refused(length, "record type 2");
    }
}
