using System.Text;
using XenSharp.Cpu;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Tests;

/// <summary>Guest code run by the real x86 engine: the hypercall page, hypercalls through it, and shutdown.</summary>
[Trait("Feature", "x86/PVH")]
public class EngineTests : IDisposable
{
    private readonly XenHypervisor _host = new(new HypervisorOptions { MachineMemoryBytes = 256UL << 20, Pcpus = 1 });
    public void Dispose() => _host.Dispose();

    [Fact]
    public void ADestroyedDomainLeavesNoEngineBehind()
    {
        // Run the guest on the pCPU until it halts, so that the pCPU has a vCPU of it as its last one while it idles.
        ushort id = _host.CreateDomain(new DomainCreateConfig(DomainKind.Pvh, 1024, 1));
        _host.PopulatePhysmap(id, 0, 256);
        _host.WriteGuestMemory(id, 0x1000, [0xFA, 0xF4, 0xEB, 0xFC]); // cli; hlt; jmp back to the cli
        _host.SetVcpuRegisters(id, 0, new Registers { Rip = 0x1000, Rsp = 0x8000, Rflags = 2 }, PvhEntryState.Flat32());
        var engine = WeakEngine(id);
        _host.Unpause(id);
        Assert.True(TestHosts.WaitUntil(() => _host.GetDomainInfo(id).IsBlocked));
        _host.Destroy(id);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        Assert.False(engine.IsAlive, "the destroyed domain's vCPU engine (and its code caches) is still reachable");
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private WeakReference WeakEngine(ushort id) => new(_host.FindDomain(id)!.Vcpus[0].Engine);

    [Fact]
    public void GuestWritesThroughItsHypercallPageAndShutsDown()
    {
        ushort id = _host.CreateDomain(new DomainCreateConfig(DomainKind.Pvh, 1024, 1));
        _host.PopulatePhysmap(id, 0, 256);
        var code = new List<byte>();
        void Emit(params byte[] b) => code.AddRange(b);
        void Imm(uint v) => code.AddRange(BitConverter.GetBytes(v));
        const uint Base = 0x1000, Page = 0x2000;
        // Find the Xen leaves, then the hypercall MSR from base+2 (EBX).
        Emit(0xB8); Imm(0x40000002);             // mov eax, 0x40000002
        Emit(0x0F, 0xA2);                        // cpuid
        Emit(0x89, 0xD9);                        // mov ecx, ebx
        Emit(0xB8); Imm(Page);                   // mov eax, page
        Emit(0x31, 0xD2);                        // xor edx, edx
        Emit(0x0F, 0x30);                        // wrmsr
        // console_io(CONSOLEIO_write, 6, msg) - 32-bit ABI: ebx, ecx, edx
        Emit(0x31, 0xDB);                        // xor ebx, ebx
        Emit(0xB9); Imm(6);                      // mov ecx, 6
        Emit(0xBA); Imm(0x3000);                 // mov edx, msg
        Emit(0xE8); Imm(Page + 18 * 32 - (Base + (uint)code.Count + 4)); // call hypercall_page[18]
        Emit(0xA3); Imm(0x3200);                 // mov [0x3200], eax (the result)
        // sched_op(SCHEDOP_shutdown, &reason)
        Emit(0xBB); Imm(Sched.SCHEDOP_shutdown); // mov ebx, 2
        Emit(0xB9); Imm(0x3100);                 // mov ecx, &reason
        Emit(0xE8); Imm(Page + 29 * 32 - (Base + (uint)code.Count + 4)); // call hypercall_page[29]
        Emit(0xF4);                              // hlt
        _host.WriteGuestMemory(id, Base, code.ToArray());
        _host.WriteGuestMemory(id, 0x3000, Encoding.ASCII.GetBytes("hello\n"));
        _host.WriteGuestMemory(id, 0x3100, BitConverter.GetBytes(Sched.SHUTDOWN_reboot));
        _host.WriteGuestMemory(id, 0x3200, BitConverter.GetBytes(0xFFFFFFFFu));
        _host.SetVcpuRegisters(id, 0, new Registers { Rip = Base, Rsp = 0x8000, Rflags = 2 }, PvhEntryState.Flat32());

        ShutdownReason? reason = null;
        _host.DomainShutdown += (_, e) => { if (e.DomainId == id) reason = e.Reason; };
        _host.Unpause(id);
        Assert.True(TestHosts.WaitUntil(() => reason is not null), _host.ReadDmesg());
        Assert.Equal(ShutdownReason.Reboot, reason);
        Assert.Equal("hello\n", Encoding.ASCII.GetString(_host.ReadConsoleHistory(id)));
        var result = new byte[4];
        _host.ReadGuestMemory(id, 0x3200, result);
        Assert.Equal(0u, BitConverter.ToUInt32(result));
    }

    [Fact]
    [Trait("Feature", "Hypervisor emulated LAPIC")]
    public void BspStartsAnApWithInitSipiThroughTheLapicMmio()
    {
        ushort id = _host.CreateDomain(new DomainCreateConfig(DomainKind.Pvh, 2048, 2));
        _host.PopulatePhysmap(id, 0, 256);
        byte[] bsp =
        [
            0xC7, 0x05, 0x10, 0x03, 0xE0, 0xFE, 0x00, 0x00, 0x00, 0x02, // mov dword [0xFEE00310], 2 << 24 (APIC ID 2 = vCPU 1)
            0xC7, 0x05, 0x00, 0x03, 0xE0, 0xFE, 0x00, 0xC5, 0x00, 0x00, // mov dword [0xFEE00300], INIT assert, level
            0xC7, 0x05, 0x00, 0x03, 0xE0, 0xFE, 0x9A, 0x06, 0x00, 0x00, // mov dword [0xFEE00300], SIPI vector 0x9A
            0x80, 0x3D, 0x00, 0x05, 0x00, 0x00, 0x42,                   // wait: cmp byte [0x500], 0x42
            0x75, 0xF7,                                                 // jne wait
            0xBB, 0x02, 0x00, 0x00, 0x00,                               // mov ebx, SCHEDOP_shutdown
            0xB9, 0x00, 0x31, 0x00, 0x00,                               // mov ecx, &reason
            0xB8, 0x1D, 0x00, 0x00, 0x00,                               // mov eax, __HYPERVISOR_sched_op
            0x0F, 0x01, 0xC1,                                           // vmcall
            0xF4,                                                       // hlt
        ];
        // real mode: mov byte [0x500], 0x42; sti; hlt; jmp $-1 (a HLT with interrupts off would take the AP down, as in Xen)
        byte[] ap = [0xC6, 0x06, 0x00, 0x05, 0x42, 0xFB, 0xF4, 0xEB, 0xFD];
        _host.WriteGuestMemory(id, 0x1000, bsp);
        _host.WriteGuestMemory(id, 0x9A000, ap);
        _host.WriteGuestMemory(id, 0x3100, BitConverter.GetBytes(Sched.SHUTDOWN_poweroff));
        _host.SetVcpuRegisters(id, 0, new Registers { Rip = 0x1000, Rsp = 0x8000, Rflags = 2 }, PvhEntryState.Flat32());

        ShutdownReason? reason = null;
        _host.DomainShutdown += (_, e) => { if (e.DomainId == id) reason = e.Reason; };
        _host.Unpause(id);
        Assert.True(TestHosts.WaitUntil(() => reason is not null), _host.ReadDmesg());
        Assert.Equal(ShutdownReason.Poweroff, reason);
        Assert.Equal(2, _host.GetDomainInfo(id).OnlineVcpus);
    }
}
