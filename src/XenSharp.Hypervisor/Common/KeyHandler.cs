using System.Globalization;
using XenSharp.Cpu;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// The hypervisor's debug keys (Xen's keyhandler.c), as `xl debug-keys` sends them through XEN_SYSCTL_debug_keys:
/// each key that has a handler prints its report into the console ring that `xl dmesg` reads; other keys are
/// ignored, as in Xen.
/// </summary>
internal static class KeyHandler
{
    private static readonly (char Key, string Description, Action<XenHypervisor, char> Handler)[] Table =
    [
        ('0', "dump Dom0 registers", DumpDom0Registers),
        ('d', "dump registers", DumpRegisters),
        ('e', "dump evtchn info", DumpEvtchn),
        ('g', "print grant table usage", DumpGrantTables),
        ('h', "show this message", ShowHandlers),
        ('m', "memory info", DumpMemory),
        ('q', "dump domain (and guest debug) info", DumpDomains),
        ('r', "dump run queues", DumpRunQueues),
        ('s', "dump softtsc stats", DumpSoftTsc),
    ];

    public static void Handle(XenHypervisor host, char key)
    {
        foreach (var (k, _, handler) in Table)
            if (k == key)
            {
                try { handler(host, key); }
                catch (Exception e) when (e is ObjectDisposedException or InvalidOperationException or HypervisorException)
                {
                    // A domain went away while being reported on: the report stops there, nothing else is affected.
                    host.Log($"'{key}' report cut short: {e.Message}");
                }
                return;
            }
    }

    private static void ShowHandlers(XenHypervisor host, char key)
    {
        host.Log($"'{key}' pressed -> showing installed handlers");
        foreach (var (k, description, _) in Table)
            host.Log($" key '{k}' (ascii '{(int)k:x2}') => {description}");
    }

    private static void DumpDomains(XenHypervisor host, char key)
    {
        host.Log($"'{key}' pressed -> dumping domain info (now = {host.Time.NowNs})");
        var all = host.AllDomains();
        foreach (var d in all)
        {
            host.Log($"General information for domain {d.DomainId}:");
            host.Log($"    refcnt=1 dying={(d.IsDying ? 2 : 0)} pause_count={d.PauseCount}");
            host.Log($"    nr_pages={d.TotPages} xenheap_pages={(d.IsHost ? 0 : 1)} shared_pages=0 paged_pages=0 dirty_cpus={{}} max_pages={d.MaxPages}");
            host.Log($"    handle={d.Handle} vm_assist={d.VmAssist:x8}");
            if (d.IsHost)
                continue;
            host.Log($"    tsc_mode={(int)d.TscMode} state={d.State.ToString().ToLowerInvariant()}");
            host.Log($"VCPU information and callbacks for domain {d.DomainId}:");
            var placement = host.GetVcpuSchedInfo(d.DomainId);
            foreach (var v in d.Vcpus)
            {
                int cpu = placement.FirstOrDefault(p => p.Vcpu == v.Id)?.Cpu ?? -1;
                unsafe
                {
                    byte pending = v.VcpuInfo is null ? (byte)0 : v.VcpuInfo->EvtchnUpcallPending;
                    byte mask = v.VcpuInfo is null ? (byte)0 : v.VcpuInfo->EvtchnUpcallMask;
                    host.Log($"    VCPU{v.Id}: CPU{cpu} [has={(v.IsRunning ? 'T' : 'F')}] poll={(v.PollPorts is null ? 0 : 1)} upcall_pend={pending:x2} upcall_mask={mask:x2} ");
                }
                host.Log($"    pause_count={v.PauseCount} pause_flags={(v.Blocked ? 1 : 0) | (v.IsUp ? 0 : 2):x}");
                host.Log(v.PeriodicPeriod > 0 ? $"    Periodic timer: period {v.PeriodicPeriod / 1000} us" : "    No periodic timer");
            }
        }
        // Xen lets each vCPU's kernel report too: VIRQ_DEBUG goes to every vCPU that bound it.
        foreach (var d in all)
        {
            if (d.IsHost || d.IsDying)
                continue;
            foreach (var v in d.Vcpus)
            {
                host.Log($"Notifying guest {d.DomainId}:{v.Id} (virq {Xen.VIRQ_DEBUG}, port {d.Evtchn.VirqPort(v.Id, Xen.VIRQ_DEBUG)})");
                d.Evtchn.SendVirq(v, Xen.VIRQ_DEBUG);
            }
        }
    }

    private static void DumpEvtchn(XenHypervisor host, char key)
    {
        host.Log($"'{key}' pressed -> dumping event-channel info");
        foreach (var d in host.AllDomains())
        {
            host.Log($"Event channel information for domain {d.DomainId}:");
            var polling = d.Vcpus.Where(v => v.PollPorts is not null).Select(v => v.Id).ToList();
            host.Log($"Polling vCPUs: {{{string.Join(',', polling)}}}");
            var ops = d.Evtchn.Ops;
            foreach (var c in d.Evtchn.InUse().ToList())
            {
                string extra = c.State switch
                {
                    EvtchnState.Unbound => $" d={c.RemoteDom}",
                    EvtchnState.Interdomain => $" d={c.RemoteDom} p={c.RemotePort}",
                    EvtchnState.Virq => $" v={c.Virq}",
                    _ => "",
                };
                host.Log($"    {c.Port,4} [{(ops.IsPending(c) ? 1 : 0)}/{(ops.IsMasked(c) ? 1 : 0)}]: s={(int)c.State} n={c.NotifyVcpu} x={(c.HostCallback is null ? 0 : 1)}{extra}");
            }
        }
    }

    private static void DumpGrantTables(XenHypervisor host, char key)
    {
        host.Log($"gnttab_usage_print_all [ key '{key}' pressed");
        foreach (var d in host.AllDomains())
        {
            if (d.IsHost)
                continue;
            var gt = d.Gnttab;
            host.Log("      -------- active --------       -------- shared --------");
            host.Log("[ref] localdom mfn      pin          localdom gmfn     flags");
            host.Log($"grant-table for remote d{d.DomainId} (v{gt.Version})");
            host.Log($"  {gt.NrFrames} frames ({gt.MaxFrames} max), {gt.MaptrackEntries} maptrack entries");
            foreach (var g in gt.ActiveGrants())
                host.Log($"[0x{g.Ref:x3}]  {g.Grantee,5} 0x{g.Mfn:x6} 0x{(g.Readers << 8) | g.Writers:x8}      {g.Grantee,5} 0x{g.Frame:x6} 0x{g.Flags:x2}");
        }
        host.Log("gnttab_usage_print_all ] done");
    }

    private static void DumpMemory(XenHypervisor host, char key)
    {
        host.Log($"'{key}' pressed -> dumping memory info");
        host.Log("Physical memory information:");
        host.Log("    Xen heap: 0kB free");
        host.Log($"    Dom heap: {host.Frames.FreeFrames * 4}kB free");
    }

    private static void DumpRunQueues(XenHypervisor host, char key)
    {
        host.Log($"'{key}' pressed -> dumping run queues");
        host.Log("sched_smt_power_savings: disabled");
        host.Log($"NOW={host.Time.NowNs}");
        var infos = host.AllDomains().Where(d => !d.IsHost)
            .SelectMany(d => host.GetVcpuSchedInfo(d.DomainId)).ToList();
        foreach (var pool in host.ListCpupools())
        {
            host.Log($"Cpupool {pool.PoolId}:");
            host.Log($"Cpus: {CpuList.Format(pool.Cpus)}");
            host.Log($"Scheduler: {SchedulerDescription(pool.Scheduler)}");
            foreach (int cpu in pool.Cpus)
            {
                var cur = infos.FirstOrDefault(i => i.Running && i.Cpu == cpu);
                host.Log($"CPU[{cpu:d2}] current={(cur is null ? "IDLE" : $"d{cur.DomainId}v{cur.Vcpu}")}");
            }
            var runq = infos.Where(i => i.Online && !i.Running && !i.Blocked && host.GetDomainCpupool(i.DomainId) == pool.PoolId).ToList();
            host.Log("RUNQ:");
            for (int n = 0; n < runq.Count; n++)
                host.Log($"\t{n,3}: d{runq[n].DomainId}v{runq[n].Vcpu}");
        }
    }

    private static string SchedulerDescription(string name) => name switch
    {
        "credit" => "SMP Credit Scheduler (credit)",
        "credit2" => "SMP Credit Scheduler rev2 (credit2)",
        "rtds" => "SMP RTDS Scheduler (rtds)",
        "arinc653" => "ARINC 653 Scheduler (arinc653)",
        "null" => "null Scheduler (null)",
        _ => name,
    };

    private static void DumpSoftTsc(XenHypervisor host, char key)
    {
        host.Log($"'{key}' pressed -> dumping softtsc stats");
        host.Log("TSC marked as reliable, warp = 0 (count=0)");
        int emulated = 0;
        foreach (var d in host.AllDomains())
        {
            if (d.IsHost)
                continue;
            host.Log($"dom{d.DomainId}(hvm): mode={(int)d.TscMode},khz={host.Time.TscHz / 1000}");
            if (d.TscMode == TscMode.AlwaysEmulate)
                emulated++;
        }
        if (emulated == 0)
            host.Log("No domains have emulated TSC");
    }

    private static void DumpDom0Registers(XenHypervisor host, char key)
    {
        // Domain-0 is the host process: it has no vCPUs whose registers could be shown.
        host.Log($"'{key}' pressed -> dumping Dom0's registers");
    }

    private static void DumpRegisters(XenHypervisor host, char key)
    {
        host.Log($"'{key}' pressed -> dumping registers");
        host.Log("");
        foreach (var d in host.AllDomains())
        {
            if (d.IsHost || d.IsDying || d.Engine is null)
                continue;
            // A running vCPU's registers belong to its pCPU thread: hold the domain off the CPUs while reading them.
            host.Services.PauseDomain(d);
            try
            {
                foreach (var v in d.Vcpus)
                {
                    if (v.Engine is null)
                        continue;
                    v.Engine.GetRegisters(out var r);
                    v.Engine.GetSpecialRegisters(out var s);
                    host.Log($"*** Dumping guest state (d{d.DomainId}v{v.Id}): ***");
                    host.Log($"----[ Xen-{XenVersion.Major}.{XenVersion.Minor}{XenVersion.ExtraVersion}  x86_64  debug=n  Not tainted ]----");
                    host.Log($"RIP:    {s.Cs.Selector:x4}:[<{r.Rip:x16}>]");
                    host.Log($"RFLAGS: {r.Rflags:x16}   CONTEXT: hvm guest (d{d.DomainId}v{v.Id}){(v.IsUp ? "" : " offline")}");
                    host.Log($"rax: {r.Rax:x16}   rbx: {r.Rbx:x16}   rcx: {r.Rcx:x16}");
                    host.Log($"rdx: {r.Rdx:x16}   rsi: {r.Rsi:x16}   rdi: {r.Rdi:x16}");
                    host.Log($"rbp: {r.Rbp:x16}   rsp: {r.Rsp:x16}   r8:  {r.R8:x16}");
                    host.Log($"r9:  {r.R9:x16}   r10: {r.R10:x16}   r11: {r.R11:x16}");
                    host.Log($"r12: {r.R12:x16}   r13: {r.R13:x16}   r14: {r.R14:x16}");
                    host.Log($"r15: {r.R15:x16}   cr0: {s.Cr0:x16}   cr4: {s.Cr4:x16}");
                    host.Log($"cr3: {s.Cr3:x16}   cr2: {s.Cr2:x16}");
                    host.Log($"fsb: {s.Fs.Base:x16}   gsb: {s.Gs.Base:x16}   efer: {s.Efer:x16}");
                    host.Log($"ds: {s.Ds.Selector:x4}   es: {s.Es.Selector:x4}   fs: {s.Fs.Selector:x4}   gs: {s.Gs.Selector:x4}   ss: {s.Ss.Selector:x4}   cs: {s.Cs.Selector:x4}");
                }
            }
            finally
            {
                host.Services.UnpauseDomain(d);
            }
        }
    }
}
