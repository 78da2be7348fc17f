using System.Diagnostics;
using System.Runtime.InteropServices;
using XenSharp.Public;
using XenSharp.Public.ArchX86;
using XenSharp.Public.Hvm;
using XenSharp.Public.Io;

namespace XenSharp.Public.Tests;

/// <summary>
/// Pins every ABI struct's size and field offsets to what the C compiler computes from the installed
/// Xen headers (/usr/include/xen). The expected numbers recorded here were produced by that C program;
/// when gcc and the headers are present the test also recompiles it and compares live.
/// </summary>
public class LayoutTests
{
    // (C type, C# type, (C field, C# field, offset from the headers)..., size from the headers)
    private static readonly (string C, Type Cs, int Size, (string CField, string CsField, int Offset)[] Fields)[] Layouts =
    [
        ("struct vcpu_time_info", typeof(VcpuTimeInfo), 32, [("version", "Version", 0), ("tsc_timestamp", "TscTimestamp", 8),
            ("system_time", "SystemTime", 16), ("tsc_to_system_mul", "TscToSystemMul", 24), ("tsc_shift", "TscShift", 28), ("flags", "Flags", 29)]),
        ("struct vcpu_info", typeof(VcpuInfo), 64, [("evtchn_upcall_pending", "EvtchnUpcallPending", 0), ("evtchn_upcall_mask", "EvtchnUpcallMask", 1),
            ("evtchn_pending_sel", "EvtchnPendingSel", 8), ("arch", "Arch", 16), ("time", "Time", 32)]),
        ("struct shared_info", typeof(SharedInfo), 3136, [("vcpu_info", "VcpuInfo", 0), ("evtchn_pending", "EvtchnPending", 0x800),
            ("evtchn_mask", "EvtchnMask", 0xA00), ("wc_version", "WcVersion", 0xC00), ("wc_sec", "WcSec", 0xC04), ("wc_nsec", "WcNsec", 0xC08),
            ("wc_sec_hi", "WcSecHi", 0xC0C), ("arch", "Arch", 0xC10)]),
        ("struct cpu_user_regs", typeof(CpuUserRegs), 200, [("r15", "R15", 0), ("rax", "Rax", 80), ("rdi", "Rdi", 112), ("error_code", "ErrorCode", 120),
            ("rip", "Rip", 128), ("cs", "Cs", 136), ("saved_upcall_mask", "SavedUpcallMask", 140), ("rflags", "Rflags", 144), ("rsp", "Rsp", 152),
            ("ss", "Ss", 160), ("es", "Es", 168), ("ds", "Ds", 176), ("fs", "Fs", 184), ("gs", "Gs", 192)]),
        ("struct vcpu_guest_context", typeof(VcpuGuestContext), 5168, [("fpu_ctxt", "FpuCtxt", 0), ("flags", "Flags", 512), ("user_regs", "UserRegs", 520),
            ("trap_ctxt", "TrapCtxt", 720), ("ldt_base", "LdtBase", 4816), ("gdt_frames", "GdtFrames", 4832), ("gdt_ents", "GdtEnts", 4960),
            ("kernel_ss", "KernelSs", 4968), ("ctrlreg", "Ctrlreg", 4984), ("debugreg", "Debugreg", 5048), ("event_callback_eip", "EventCallbackEip", 5112),
            ("vm_assist", "VmAssist", 5136), ("fs_base", "FsBase", 5144), ("gs_base_kernel", "GsBaseKernel", 5152), ("gs_base_user", "GsBaseUser", 5160)]),
        ("struct arch_shared_info", typeof(ArchSharedInfo), 48, [("max_pfn", "MaxPfn", 0), ("p2m_generation", "P2mGeneration", 40)]),
        ("struct multicall_entry", typeof(MulticallEntry), 64, [("op", "Op", 0), ("result", "Result", 8), ("args", "Args", 16)]),
        ("struct xen_memory_reservation", typeof(XenMemoryReservation), 32, [("extent_start", "ExtentStart", 0), ("nr_extents", "NrExtents", 8),
            ("extent_order", "ExtentOrder", 16), ("mem_flags", "MemFlags", 20), ("domid", "Domid", 24)]),
        ("struct xen_add_to_physmap", typeof(XenAddToPhysmap), 24, [("domid", "Domid", 0), ("size", "Size", 2), ("space", "Space", 4), ("idx", "Idx", 8), ("gpfn", "Gpfn", 16)]),
        ("struct xen_memory_exchange", typeof(XenMemoryExchange), 72, [("in", "In", 0), ("out", "Out", 32), ("nr_exchanged", "NrExchanged", XenMemoryExchange.OffsetNrExchanged)]),
        ("struct xen_add_to_physmap_batch", typeof(XenAddToPhysmapBatch), 32, [("domid", "Domid", 0), ("space", "Space", 2), ("size", "Size", 4),
            ("u.foreign_domid", "ForeignDomid", 6), ("idxs", "Idxs", 8), ("gpfns", "Gpfns", 16), ("errs", "Errs", 24)]),
        ("struct xen_remove_from_physmap", typeof(XenRemoveFromPhysmap), 16, [("domid", "Domid", 0), ("gpfn", "Gpfn", 8)]),
        ("struct xen_memory_map", typeof(XenMemoryMap), 16, [("nr_entries", "NrEntries", 0), ("buffer", "Buffer", 8)]),
        ("struct xen_machphys_mapping", typeof(XenMachphysMapping), 24, [("v_start", "VStart", 0), ("v_end", "VEnd", 8), ("max_mfn", "MaxMfn", 16)]),
        ("struct xen_machphys_mfn_list", typeof(XenMachphysMfnList), 24, [("max_extents", "MaxExtents", 0), ("extent_start", "ExtentStart", 8), ("nr_extents", "NrExtents", 16)]),
        ("struct xen_pod_target", typeof(XenPodTarget), 40, [("target_pages", "TargetPages", 0), ("tot_pages", "TotPages", 8),
            ("pod_cache_pages", "PodCachePages", 16), ("pod_entries", "PodEntries", 24), ("domid", "Domid", 32)]),
        ("struct evtchn_alloc_unbound", typeof(EvtchnAllocUnbound), 8, [("dom", "Dom", 0), ("remote_dom", "RemoteDom", 2), ("port", "Port", 4)]),
        ("struct evtchn_bind_interdomain", typeof(EvtchnBindInterdomain), 12, [("remote_dom", "RemoteDom", 0), ("remote_port", "RemotePort", 4), ("local_port", "LocalPort", 8)]),
        ("struct evtchn_bind_virq", typeof(EvtchnBindVirq), 12, [("virq", "Virq", 0), ("vcpu", "Vcpu", 4), ("port", "Port", 8)]),
        ("struct evtchn_bind_ipi", typeof(EvtchnBindIpi), 8, [("vcpu", "Vcpu", 0), ("port", "Port", 4)]),
        ("struct evtchn_status", typeof(EvtchnStatus), 24, [("dom", "Dom", 0), ("port", "Port", 4), ("status", "Status", 8), ("vcpu", "Vcpu", 12),
            ("u.interdomain.dom", "InterdomainDom", 16), ("u.interdomain.port", "InterdomainPort", 20), ("u.virq", "Virq", 16)]),
        ("struct evtchn_bind_vcpu", typeof(EvtchnBindVcpu), 8, [("port", "Port", 0), ("vcpu", "Vcpu", 4)]),
        ("struct evtchn_init_control", typeof(EvtchnInitControl), 24, [("control_gfn", "ControlGfn", 0), ("offset", "Offset", 8), ("vcpu", "Vcpu", 12), ("link_bits", "LinkBits", 16)]),
        ("struct evtchn_expand_array", typeof(EvtchnExpandArray), 8, [("array_gfn", "ArrayGfn", 0)]),
        ("struct evtchn_set_priority", typeof(EvtchnSetPriority), 8, [("port", "Port", 0), ("priority", "Priority", 4)]),
        ("struct evtchn_fifo_control_block", typeof(EvtchnFifoControlBlock), 72, [("ready", "Ready", 0), ("head", "Head", 8)]),
        ("struct grant_entry_v1", typeof(GrantEntryV1), 8, [("flags", "Flags", 0), ("domid", "Domid", 2), ("frame", "Frame", 4)]),
        ("union grant_entry_v2", typeof(GrantEntryV2), 16, [("hdr.flags", "Flags", 0), ("hdr.domid", "Domid", 2), ("full_page.frame", "Frame", 8),
            ("sub_page.page_off", "SubPageOff", 4), ("sub_page.length", "SubPageLength", 6), ("transitive.trans_domid", "TransDomid", 4), ("transitive.gref", "TransGref", 8)]),
        ("struct gnttab_map_grant_ref", typeof(GnttabMapGrantRef), 32, [("host_addr", "HostAddr", 0), ("flags", "Flags", 8), ("ref", "Ref", 12), ("dom", "Dom", 16),
            ("status", "Status", 18), ("handle", "Handle", 20), ("dev_bus_addr", "DevBusAddr", 24)]),
        ("struct gnttab_unmap_grant_ref", typeof(GnttabUnmapGrantRef), 24, [("host_addr", "HostAddr", 0), ("dev_bus_addr", "DevBusAddr", 8), ("handle", "Handle", 16), ("status", "Status", 20)]),
        ("struct gnttab_setup_table", typeof(GnttabSetupTable), 24, [("dom", "Dom", 0), ("nr_frames", "NrFrames", 4), ("status", "Status", 8), ("frame_list", "FrameList", 16)]),
        ("struct gnttab_copy", typeof(GnttabCopy), 40, [("source", "Source", 0), ("dest", "Dest", 16), ("len", "Len", 32), ("flags", "Flags", 34), ("status", "Status", 36)]),
        ("struct gnttab_copy_ptr", typeof(GnttabCopyPtr), 16, [("u", "RefOrGmfn", 0), ("domid", "Domid", 8), ("offset", "Offset", 10)]),
        ("struct gnttab_query_size", typeof(GnttabQuerySize), 16, [("dom", "Dom", 0), ("nr_frames", "NrFrames", 4), ("max_nr_frames", "MaxNrFrames", 8), ("status", "Status", 12)]),
        ("struct gnttab_set_version", typeof(GnttabSetVersion), 4, [("version", "Version", 0)]),
        ("struct gnttab_get_status_frames", typeof(GnttabGetStatusFrames), 16, [("nr_frames", "NrFrames", 0), ("dom", "Dom", 4), ("status", "Status", 6), ("frame_list", "FrameList", 8)]),
        ("struct gnttab_get_version", typeof(GnttabGetVersion), 8, [("dom", "Dom", 0), ("version", "Version", 4)]),
        ("struct sched_shutdown", typeof(SchedShutdown), 4, [("reason", "Reason", 0)]),
        ("struct sched_poll", typeof(SchedPoll), 24, [("ports", "Ports", 0), ("nr_ports", "NrPorts", 8), ("timeout", "Timeout", 16)]),
        ("struct sched_remote_shutdown", typeof(SchedRemoteShutdown), 8, [("domain_id", "DomainId", 0), ("reason", "Reason", 4)]),
        ("struct sched_watchdog", typeof(SchedWatchdog), 8, [("id", "Id", 0), ("timeout", "Timeout", 4)]),
        ("struct vcpu_runstate_info", typeof(VcpuRunstateInfo), 48, [("state", "State", 0), ("state_entry_time", "StateEntryTime", 8), ("time", "Time", 16)]),
        ("struct vcpu_set_singleshot_timer", typeof(VcpuSetSingleshotTimer), 16, [("timeout_abs_ns", "TimeoutAbsNs", 0), ("flags", "Flags", 8)]),
        ("struct vcpu_register_vcpu_info", typeof(VcpuRegisterVcpuInfo), 16, [("mfn", "Mfn", 0), ("offset", "Offset", 8), ("rsvd", "Rsvd", 12)]),
        ("struct xen_feature_info", typeof(XenFeatureInfo), 8, [("submap_idx", "SubmapIdx", 0), ("submap", "Submap", 4)]),
        ("struct xen_hvm_param", typeof(XenHvmParam), 16, [("domid", "Domid", 0), ("index", "Index", 4), ("value", "Value", 8)]),
        ("struct xen_hvm_pagetable_dying", typeof(XenHvmPagetableDying), 16, [("domid", "Domid", 0), ("gpa", "Gpa", 8)]),
        ("struct xen_hvm_get_time", typeof(XenHvmGetTime), 8, [("now", "Now", 0)]),
        ("struct xen_dm_op", typeof(XenDmOp), 32, [("op", "Op", 0), ("pad", "Pad", 4), ("u", "U", 8)]),
        ("struct xen_dm_op_buf", typeof(XenDmOpBuf), 16, [("h", "H", 0), ("size", "Size", 8)]),
        ("struct xen_dm_op_set_pci_intx_level", typeof(XenDmOpSetPciIntxLevel), 6, [("domain", "Domain", 0), ("bus", "Bus", 2), ("device", "Device", 3), ("intx", "Intx", 4), ("level", "Level", 5)]),
        ("struct xen_dm_op_set_isa_irq_level", typeof(XenDmOpSetIsaIrqLevel), 2, [("isa_irq", "IsaIrq", 0), ("level", "Level", 1)]),
        ("struct xen_dm_op_set_pci_link_route", typeof(XenDmOpSetPciLinkRoute), 2, [("link", "Link", 0), ("isa_irq", "IsaIrq", 1)]),
        ("struct xen_dm_op_nr_vcpus", typeof(XenDmOpNrVcpus), 4, [("vcpus", "Vcpus", 0)]),
        ("struct xen_dm_op_create_ioreq_server", typeof(XenDmOpCreateIoreqServer), 6, [("handle_bufioreq", "HandleBufioreq", 0), ("id", "Id", 4)]),
        ("struct xen_dm_op_get_ioreq_server_info", typeof(XenDmOpGetIoreqServerInfo), 24, [("id", "Id", 0), ("flags", "Flags", 2), ("bufioreq_port", "BufioreqPort", 4), ("ioreq_gfn", "IoreqGfn", 8), ("bufioreq_gfn", "BufioreqGfn", 16)]),
        ("struct xen_dm_op_ioreq_server_range", typeof(XenDmOpIoreqServerRange), 24, [("id", "Id", 0), ("type", "Type", 4), ("start", "Start", 8), ("end", "End", 16)]),
        ("struct xen_dm_op_set_ioreq_server_state", typeof(XenDmOpSetIoreqServerState), 4, [("id", "Id", 0), ("enabled", "Enabled", 2)]),
        ("struct xen_dm_op_track_dirty_vram", typeof(XenDmOpTrackDirtyVram), 16, [("nr", "Nr", 0), ("first_pfn", "FirstPfn", 8)]),
        ("struct xen_dm_op_modified_memory", typeof(XenDmOpModifiedMemory), 8, [("nr_extents", "NrExtents", 0), ("opaque", "Opaque", 4)]),
        ("struct xen_dm_op_modified_memory_extent", typeof(XenDmOpModifiedMemoryExtent), 16, [("nr", "Nr", 0), ("first_pfn", "FirstPfn", 8)]),
        ("struct xen_dm_op_set_mem_type", typeof(XenDmOpSetMemType), 16, [("nr", "Nr", 0), ("mem_type", "MemType", 4), ("pad", "Pad", 6), ("first_pfn", "FirstPfn", 8)]),
        ("struct xen_dm_op_inject_msi", typeof(XenDmOpInjectMsi), 16, [("data", "Data", 0), ("addr", "Addr", 8)]),
        ("vm_event_request_t", typeof(VmEventSt), 400, [("version", "Version", 0), ("flags", "Flags", 4), ("reason", "Reason", 8),
            ("vcpu_id", "VcpuId", 12), ("altp2m_idx", "Altp2mIdx", 16), ("u.mem_access", "MemAccess", 24),
            ("u.software_breakpoint", "SoftwareBreakpoint", 24), ("data.regs.x86", "Regs", 56)]),
        ("struct vm_event_regs_x86", typeof(VmEventRegsX86), 344, [("rax", "Rax", 0), ("rflags", "Rflags", 128), ("rip", "Rip", 152),
            ("cr0", "Cr0", 160), ("msr_efer", "MsrEfer", 216), ("gdtr_base", "GdtrBase", 240), ("vmtrace_pos", "VmtracePos", 256),
            ("cs_base", "CsBase", 264), ("fs_base", "FsBase", 280), ("cs", "Cs", 296), ("shadow_gs", "ShadowGs", 320),
            ("gdtr_limit", "GdtrLimit", 328), ("cs_sel", "CsSel", 330), ("gs_sel", "GsSel", 340)]),
        ("struct vm_event_mem_access", typeof(VmEventMemAccess), 32, [("gfn", "Gfn", 0), ("offset", "Offset", 8), ("gla", "Gla", 16), ("flags", "Flags", 24)]),
        ("struct vm_event_debug", typeof(VmEventDebug), 24, [("gfn", "Gfn", 0), ("pending_dbg", "PendingDbg", 8), ("insn_length", "InsnLength", 16), ("type", "Type", 20)]),
        ("struct xen_mem_access_op", typeof(XenMemAccessOp), 32, [("op", "Op", 0), ("access", "Access", 1), ("domid", "Domid", 2), ("nr", "Nr", 4),
            ("pfn", "Pfn", 8), ("pfn_list", "PfnList", 16), ("access_list", "AccessList", 24)]),
        ("struct xen_domctl_vm_event_op", typeof(XenDomctlVmEventOp), 12, [("op", "Op", 0), ("mode", "Mode", 4), ("u.enable.port", "Port", 8)]),
        ("struct xen_domctl_monitor_op", typeof(XenDomctlMonitorOp), 24, [("op", "Op", 0), ("event", "Event", 4), ("u.mov_to_cr.index", "Index", 8),
            ("u.mov_to_cr.sync", "Sync", 9), ("u.mov_to_cr.bitmask", "Bitmask", 16)]),
        ("struct xen_dm_op_remote_shutdown", typeof(XenDmOpRemoteShutdown), 4, [("reason", "Reason", 0)]),
        ("struct xen_dm_op_relocate_memory", typeof(XenDmOpRelocateMemory), 24, [("size", "Size", 0), ("src_gfn", "SrcGfn", 8), ("dst_gfn", "DstGfn", 16)]),
        ("struct xen_dm_op_pin_memory_cacheattr", typeof(XenDmOpPinMemoryCacheattr), 24, [("start", "Start", 0), ("end", "End", 8), ("type", "Type", 16)]),
        ("struct xen_dm_op_set_irq_level", typeof(XenDmOpSetIrqLevel), 8, [("irq", "Irq", 0), ("level", "Level", 4)]),
        ("struct xen_dm_op_destroy_ioreq_server", typeof(XenDmOpDestroyIoreqServer), 4, [("id", "Id", 0)]),
        ("struct ioreq", typeof(IoreqSlot), 32, [("addr", "Addr", 0), ("data", "Data", 8), ("count", "Count", 16), ("size", "Size", 20), ("vp_eport", "VpEport", 24), ("type", "Type", 31)]),
        ("struct buffered_iopage", typeof(BufferedIopage), 4096, [("read_pointer", "ReadPointer", 0), ("write_pointer", "WritePointer", 4)]),
        ("struct vcpu_hvm_x86_32", typeof(VcpuHvmX86_32), 120, [("eip", "Eip", 32), ("efer", "Efer", 56), ("cs_base", "CsBase", 64), ("cs_limit", "CsLimit", 84), ("cs_ar", "CsAr", 104), ("tr_ar", "TrAr", 112)]),
        ("struct vcpu_hvm_x86_64", typeof(VcpuHvmX86_64), 112, [("rip", "Rip", 64), ("efer", "Efer", 104)]),
        ("struct vcpu_hvm_context", typeof(VcpuHvmContext), 128, [("mode", "Mode", 0), ("cpu_regs", "X86_32", 8)]),
        ("struct hvm_start_info", typeof(HvmStartInfo), 56, [("magic", "Magic", 0), ("nr_modules", "NrModules", 12), ("modlist_paddr", "ModlistPaddr", 16),
            ("cmdline_paddr", "CmdlinePaddr", 24), ("rsdp_paddr", "RsdpPaddr", 32), ("memmap_paddr", "MemmapPaddr", 40), ("memmap_entries", "MemmapEntries", 48)]),
        ("struct hvm_modlist_entry", typeof(HvmModlistEntry), 32, [("paddr", "Paddr", 0), ("size", "Size", 8), ("cmdline_paddr", "CmdlinePaddr", 16)]),
        ("struct hvm_memmap_table_entry", typeof(HvmMemmapTableEntry), 24, [("addr", "Addr", 0), ("size", "Size", 8), ("type", "Type", 16)]),
        ("struct xencons_interface", typeof(XenconsInterface), 3088, [("in", "In", 0), ("out", "Out", 1024), ("in_cons", "InCons", 3072), ("in_prod", "InProd", 3076),
            ("out_cons", "OutCons", 3080), ("out_prod", "OutProd", 3084)]),
        ("struct blkif_request_segment", typeof(BlkifRequestSegment), 8, [("gref", "Gref", 0), ("first_sect", "FirstSect", 4), ("last_sect", "LastSect", 5)]),
        ("struct blkif_request", typeof(BlkifRequest), 112, [("operation", "Operation", 0), ("nr_segments", "NrSegments", 1), ("handle", "Handle", 2), ("id", "Id", 8),
            ("sector_number", "SectorNumber", 16), ("seg", "Seg", 24)]),
        ("struct blkif_request_discard", typeof(BlkifRequestDiscard), 32, [("flag", "Flag", 1), ("handle", "Handle", 2), ("id", "Id", 8), ("sector_number", "SectorNumber", 16), ("nr_sectors", "NrSectors", 24)]),
        ("struct blkif_request_indirect", typeof(BlkifRequestIndirect), 64, [("indirect_op", "IndirectOp", 1), ("nr_segments", "NrSegments", 2), ("id", "Id", 8),
            ("sector_number", "SectorNumber", 16), ("handle", "Handle", 24), ("indirect_grefs", "IndirectGrefs", 28)]),
        ("struct blkif_response", typeof(BlkifResponse), 16, [("id", "Id", 0), ("operation", "Operation", 8), ("status", "Status", 10)]),
        ("struct netif_tx_request", typeof(NetifTxRequest), 12, [("gref", "Gref", 0), ("offset", "Offset", 4), ("flags", "Flags", 6), ("id", "Id", 8), ("size", "Size", 10)]),
        ("struct netif_extra_info", typeof(NetifExtraInfo), 8, [("type", "Type", 0), ("flags", "Flags", 1), ("u.gso.size", "GsoSize", 2), ("u.gso.type", "GsoType", 4), ("u.gso.features", "GsoFeatures", 6)]),
        ("struct netif_tx_response", typeof(NetifTxResponse), 4, [("id", "Id", 0), ("status", "Status", 2)]),
        ("struct netif_rx_request", typeof(NetifRxRequest), 8, [("id", "Id", 0), ("gref", "Gref", 4)]),
        ("struct netif_rx_response", typeof(NetifRxResponse), 8, [("id", "Id", 0), ("offset", "Offset", 2), ("flags", "Flags", 4), ("status", "Status", 6)]),
        ("struct xen_sysctl", typeof(XenSysctl), 136, [("cmd", "Cmd", 0), ("interface_version", "InterfaceVersion", 4), ("u", "U", 8)]),
        ("struct xen_domctl", typeof(XenDomctl), 144, [("cmd", "Cmd", 0), ("interface_version", "InterfaceVersion", 4), ("domain", "Domain", 8), ("u", "U", 16)]),
        ("struct xenctl_bitmap", typeof(XenctlBitmap), 16, [("bitmap", "Bitmap", 0), ("nr_bits", "NrBits", 8)]),
        ("struct xen_domctl_getdomaininfo", typeof(XenDomctlGetdomaininfo), 112, [("domain", "Domain", 0), ("flags", "Flags", 4),
            ("tot_pages", "TotPages", 8), ("max_pages", "MaxPages", 16), ("outstanding_pages", "OutstandingPages", 24), ("shr_pages", "ShrPages", 32),
            ("paged_pages", "PagedPages", 40), ("shared_info_frame", "SharedInfoFrame", 48), ("cpu_time", "CpuTime", 56),
            ("nr_online_vcpus", "NrOnlineVcpus", 64), ("max_vcpu_id", "MaxVcpuId", 68), ("ssidref", "Ssidref", 72), ("handle", "Handle", 76),
            ("cpupool", "Cpupool", 92), ("gpaddr_bits", "GpaddrBits", 96), ("arch_config.emulation_flags", "EmulationFlags", 104),
            ("arch_config.misc_flags", "MiscFlags", 108)]),
        ("struct xen_domctl_getvcpuinfo", typeof(XenDomctlGetvcpuinfo), 24, [("vcpu", "Vcpu", 0), ("online", "Online", 4), ("blocked", "Blocked", 5),
            ("running", "Running", 6), ("cpu_time", "CpuTime", 8), ("cpu", "Cpu", 16)]),
        ("struct xen_domctl_vcpuaffinity", typeof(XenDomctlVcpuaffinity), 40, [("vcpu", "Vcpu", 0), ("flags", "Flags", 4),
            ("cpumap_hard", "CpumapHard", 8), ("cpumap_soft", "CpumapSoft", 24)]),
        ("struct xen_domctl_shadow_op", typeof(XenDomctlShadowOp), 40, [("op", "Op", 0), ("mode", "Mode", 4), ("mb", "Mb", 8),
            ("dirty_bitmap", "DirtyBitmap", 16), ("pages", "Pages", 24), ("stats.fault_count", "FaultCount", 32), ("stats.dirty_count", "DirtyCount", 36)]),
        ("struct xen_domctl_getpageframeinfo3", typeof(XenDomctlGetpageframeinfo3), 16, [("num", "Num", 0), ("array", "Array", 8)]),
        ("struct xen_domctl_vcpucontext", typeof(XenDomctlVcpucontext), 16, [("vcpu", "Vcpu", 0), ("ctxt", "Ctxt", 8)]),
        ("struct xen_domctl_hvmcontext_partial", typeof(XenDomctlHvmcontextPartial), 24, [("type", "Type", 0), ("instance", "Instance", 4),
            ("bufsz", "Bufsz", 8), ("buffer", "Buffer", 16)]),
        ("struct xen_mc", typeof(XenMc), 152, [("cmd", "Cmd", 0), ("interface_version", "InterfaceVersion", 4), ("u", "U", 8)]),
        ("struct xen_mc_msrinject", typeof(XenMcMsrinject), 144, [("mcinj_cpunr", "McinjCpunr", 0), ("mcinj_flags", "McinjFlags", 4),
            ("mcinj_count", "McinjCount", 8), ("mcinj_domid", "McinjDomid", 12), ("mcinj_msr", "McinjMsr", 16)]),
        ("struct mcinfo_msr", typeof(McinfoMsr), 16, [("reg", "Reg", 0), ("value", "Value", 8)]),
        ("struct xen_mc_physcpuinfo", typeof(XenMcPhyscpuinfo), 16, [("ncpus", "Ncpus", 0), ("info", "Info", 8)]),
        ("struct xen_mc_inject_v2", typeof(XenMcInjectV2), 24, [("flags", "Flags", 0), ("cpumap", "Cpumap", 8)]),
        ("struct xen_domctl_nodeaffinity", typeof(XenDomctlNodeaffinity), 16, [("nodemap", "Nodemap", 0)]),
        ("struct xen_domctl_scheduler_op", typeof(XenDomctlSchedulerOp), 24, [("sched_id", "SchedId", 0), ("cmd", "Cmd", 4),
            ("u.credit.weight", "Weight", 8), ("u.credit.cap", "Cap", 10)]),
        ("struct xen_sysctl_readconsole", typeof(XenSysctlReadconsole), 24, [("clear", "Clear", 0), ("incremental", "Incremental", 1),
            ("index", "Index", 4), ("buffer", "Buffer", 8), ("count", "Count", 16)]),
        ("struct xen_sysctl_physinfo", typeof(XenSysctlPhysinfo), 112, [("threads_per_core", "ThreadsPerCore", 0), ("cores_per_socket", "CoresPerSocket", 4),
            ("nr_cpus", "NrCpus", 8), ("max_cpu_id", "MaxCpuId", 12), ("nr_nodes", "NrNodes", 16), ("max_node_id", "MaxNodeId", 20), ("cpu_khz", "CpuKhz", 24),
            ("capabilities", "Capabilities", 28), ("arch_capabilities", "ArchCapabilities", 32), ("total_pages", "TotalPages", 40), ("free_pages", "FreePages", 48),
            ("scrub_pages", "ScrubPages", 56), ("outstanding_pages", "OutstandingPages", 64), ("max_mfn", "MaxMfn", 72), ("hw_cap", "HwCap", 80)]),
        ("struct xen_sysctl_cpu_hotplug", typeof(XenSysctlCpuHotplug), 8, [("cpu", "Cpu", 0), ("op", "Op", 4)]),
        ("struct xen_sysctl_pcitopoinfo", typeof(XenSysctlPcitopoinfo), 24, [("num_devs", "NumDevs", 0), ("devs", "Devs", 8), ("nodes", "Nodes", 16)]),
        ("struct xen_sysctl_tbuf_op", typeof(XenSysctlTbufOp), 48, [("cmd", "Cmd", 0), ("cpu_mask", "CpuMask", 8), ("evt_mask", "EvtMask", 24),
            ("buffer_mfn", "BufferMfn", 32), ("size", "Size", 40)]),
        ("struct xen_sysctl_debug_keys", typeof(XenSysctlDebugKeys), 16, [("keys", "Keys", 0), ("nr_keys", "NrKeys", 8)]),
        ("struct xen_sysctl_sched_id", typeof(XenSysctlSchedId), 4, [("sched_id", "SchedId", 0)]),
        ("struct xen_sysctl_getdomaininfolist", typeof(XenSysctlGetdomaininfolist), 24, [("first_domain", "FirstDomain", 0), ("max_domains", "MaxDomains", 4),
            ("buffer", "Buffer", 8), ("num_domains", "NumDomains", 16)]),
        ("struct xen_sysctl_cpupool_op", typeof(XenSysctlCpupoolOp), 40, [("op", "Op", 0), ("cpupool_id", "CpupoolId", 4), ("sched_id", "SchedId", 8),
            ("domid", "Domid", 12), ("cpu", "Cpu", 16), ("n_dom", "NDom", 20), ("cpumap", "Cpumap", 24)]),
        ("struct xen_sysctl_scheduler_op", typeof(XenSysctlSchedulerOp), 32, [("cpupool_id", "CpupoolId", 0), ("sched_id", "SchedId", 4), ("cmd", "Cmd", 8),
            ("u.sched_credit", "Credit", 16), ("u.sched_credit2.ratelimit_us", "Credit", 16)]),
        ("struct xen_sysctl_credit_schedule", typeof(XenSysctlCreditSchedule), 12, [("tslice_ms", "TsliceMs", 0), ("ratelimit_us", "RatelimitUs", 4),
            ("vcpu_migr_delay_us", "VcpuMigrDelayUs", 8)]),
        ("struct xen_sysctl_cputopoinfo", typeof(XenSysctlCputopoinfo), 16, [("num_cpus", "NumCpus", 0), ("cputopo", "Cputopo", 8)]),
        ("struct xen_sysctl_cputopo", typeof(XenSysctlCputopo), 12, [("core", "Core", 0), ("socket", "Socket", 4), ("node", "Node", 8)]),
        ("struct xen_sysctl_numainfo", typeof(XenSysctlNumainfo), 24, [("num_nodes", "NumNodes", 0), ("meminfo", "Meminfo", 8), ("distance", "Distance", 16)]),
        ("struct xen_sysctl_meminfo", typeof(XenSysctlMeminfo), 16, [("memsize", "Memsize", 0), ("memfree", "Memfree", 8)]),
        ("struct xsd_sockmsg", typeof(XsdSockmsg), 16, [("type", "Type", 0), ("req_id", "ReqId", 4), ("tx_id", "TxId", 8), ("len", "Len", 12)]),
        ("struct xenstore_domain_interface", typeof(XenstoreDomainInterface), 2076, [("req", "Req", 0), ("rsp", "Rsp", 1024), ("req_cons", "ReqCons", 2048),
            ("rsp_prod", "RspProd", 2060), ("server_features", "ServerFeatures", 2064), ("connection", "Connection", 2068), ("error", "Error", 2072)]),
        ("struct xen_hypfs_direntry", typeof(XenHypfsDirentry), 12, [("type", "Type", 0), ("encoding", "Encoding", 1), ("pad", "Pad", 2),
            ("content_len", "ContentLen", 4), ("max_write_len", "MaxWriteLen", 8)]),
        ("struct xen_flask_op", typeof(XenFlaskOp), 40, [("cmd", "Cmd", 0), ("interface_version", "InterfaceVersion", 4), ("u", "U", 8)]),
        ("struct xen_flask_load", typeof(XenFlaskLoad), 16, [("buffer", "Buffer", 0), ("size", "Size", 8)]),
        ("struct xen_flask_sid_context", typeof(XenFlaskSidContext), 16, [("sid", "Sid", 0), ("size", "Size", 4), ("context", "Context", 8)]),
        ("struct xen_flask_access", typeof(XenFlaskAccess), 32, [("ssid", "Ssid", 0), ("tclass", "Tclass", 8), ("req", "Req", 12),
            ("allowed", "Allowed", 16), ("audit_deny", "AuditDeny", 24), ("seqno", "Seqno", 28)]),
        ("struct xen_flask_transition", typeof(XenFlaskTransition), 16, [("ssid", "Ssid", 0), ("tclass", "Tclass", 8), ("newsid", "Newsid", 12)]),
        ("struct xen_flask_boolean", typeof(XenFlaskBoolean), 24, [("bool_id", "BoolId", 0), ("enforcing", "Enforcing", 4), ("pending", "Pending", 5),
            ("new_value", "NewValue", 6), ("commit", "Commit", 7), ("size", "Size", 8), ("name", "Name", 16)]),
        ("struct xen_flask_hash_stats", typeof(XenFlaskHashStats), 16, [("entries", "Entries", 0), ("max_chain_len", "MaxChainLen", 12)]),
        ("struct xen_flask_peersid", typeof(XenFlaskPeersid), 8, [("evtchn", "Evtchn", 0), ("sid", "Sid", 4)]),
        ("struct xen_flask_relabel", typeof(XenFlaskRelabel), 8, [("domid", "Domid", 0), ("sid", "Sid", 4)]),
    ];

    public static IEnumerable<object[]> Structs() => Layouts.Select(l => new object[] { l.C });

    [Theory]
    [MemberData(nameof(Structs))]
    public void StructMatchesHeaderNumbers(string cType)
    {
        var l = Layouts.Single(x => x.C == cType);
        Assert.Equal(l.Size, Marshal.SizeOf(l.Cs));
        foreach (var f in l.Fields)
            Assert.True(l.Offset(f.CsField) == f.Offset, $"{cType}.{f.CField}: C# offset {l.Offset(f.CsField)}, header {f.Offset}");
    }

    [Fact]
    public void RecordedNumbersMatchTheInstalledHeaders()
    {
        if (!File.Exists("/usr/include/xen/xen.h") || !HasGcc())
            return; // the recorded numbers above still pin the layouts
        var c = new System.Text.StringBuilder();
        c.AppendLine("#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>");
        foreach (var h in new[] { "xen.h", "memory.h", "event_channel.h", "grant_table.h", "sched.h", "vcpu.h", "version.h",
                     "hvm/hvm_op.h", "hvm/dm_op.h", "hvm/ioreq.h", "hvm/params.h", "hvm/hvm_vcpu.h", "arch-x86/hvm/start_info.h", "io/console.h", "io/xs_wire.h", "io/blkif.h", "io/netif.h", "domctl.h", "sysctl.h", "hypfs.h", "arch-x86/xen-mca.h", "vm_event.h", "xsm/flask_op.h" })
            c.AppendLine($"#include <xen/{h}>");
        c.AppendLine("int main(void) {");
        foreach (var l in Layouts)
        {
            c.AppendLine($"printf(\"%zu\\n\", sizeof({l.C}));");
            foreach (var f in l.Fields)
                c.AppendLine($"printf(\"%zu\\n\", offsetof({l.C}, {f.CField}));");
        }
        c.AppendLine("return 0; }");
        var dir = Directory.CreateTempSubdirectory("xenabi");
        try
        {
            File.WriteAllText(Path.Combine(dir.FullName, "abi.c"), c.ToString());
            var (rc, err) = Run("gcc", $"-D__XEN_TOOLS__ -o {dir.FullName}/abi {dir.FullName}/abi.c");
            Assert.True(rc == 0, err);
            var (rc2, output) = Run(Path.Combine(dir.FullName, "abi"), "");
            Assert.Equal(0, rc2);
            var numbers = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
            int i = 0;
            foreach (var l in Layouts)
            {
                Assert.True(numbers[i++] == l.Size, $"sizeof({l.C}) in C is {numbers[i - 1]}, recorded {l.Size}");
                foreach (var f in l.Fields)
                    Assert.True(numbers[i++] == f.Offset, $"offsetof({l.C}, {f.CField}) in C is {numbers[i - 1]}, recorded {f.Offset}");
            }
        }
        finally { dir.Delete(true); }
    }

    private static bool HasGcc() => Environment.GetEnvironmentVariable("PATH")!.Split(':').Any(p => File.Exists(Path.Combine(p, "gcc")));

    private static (int, string) Run(string file, string args)
    {
        using var p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        string o = p.StandardOutput.ReadToEnd(), e = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, o + e);
    }
}

internal static class LayoutExtensions
{
    public static int Offset(this (string C, Type Cs, int Size, (string, string, int)[] Fields) l, string field) =>
        (int)Marshal.OffsetOf(l.Cs, field);
}
