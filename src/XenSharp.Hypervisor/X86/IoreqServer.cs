using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using XenSharp.Public.Hvm;
using static XenSharp.Public.Hvm.Ioreq;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// One IOREQ server (Xen's ioreq_server, common/ioreq.c): a device model's claim on port, MMIO and PCI config ranges
/// of an HVM domain. It owns a synchronous ioreq page with a slot per vCPU, each with an event channel of the
/// domain bound by the device model, and optionally a buffered ioreq page with its own channel. An access it claims
/// is written to the vCPU's slot as STATE_IOREQ_READY and notified; the vCPU then waits until the device model writes
/// STATE_IORESP_READY and notifies back (or the server goes away, when reads give all ones).
/// </summary>
internal sealed unsafe class IoreqServer
{
    public const int RangePort = 0, RangeMemory = 1, RangePci = 2;
    /// <summary>How long a vCPU waits for one response before checking again whether the server or domain is gone.</summary>
    private const int WaitSliceMs = 50;

    private readonly Domain _d;
    private readonly object _lock = new();
    /// <summary>Serialises the producers of the buffered ring (the domain's vCPUs).</summary>
    private readonly object _bufLock = new();
    private readonly bool _bufAtomic;
    private readonly List<(ulong Start, ulong End)>[] _ranges = [[], [], []];
    private readonly uint[] _vcpuPorts;
    /// <summary>Per vCPU, the device model's shared word for the Domain-0 end of its port (0 for none): see
    /// <see cref="AttachDoorbell"/>.</summary>
    private readonly nint[] _doorbells;

    public IoreqServer(Domain d, ushort id, ushort dmDomain, byte handleBufioreq)
    {
        _d = d;
        Id = id;
        DmDomain = dmDomain;
        if (!d.Host.Frames.TryAllocate(d.DomainId, FrameType.XenShared, out uint mfn))
            throw new HypervisorException("out of memory for an ioreq page", Errno.ENOMEM);
        IoreqMfn = mfn;
        IoreqPage = (IoreqSlot*)d.Host.Frames.PageAddress(mfn);
        new Span<byte>(IoreqPage, 4096).Clear();
        _vcpuPorts = new uint[d.Vcpus.Length];
        _doorbells = new nint[d.Vcpus.Length];
        for (int i = 0; i < d.Vcpus.Length; i++)
        {
            long rc = d.Evtchn.AllocUnbound(dmDomain, out _vcpuPorts[i], Responded);
            if (rc < 0)
            {
                Destroy();
                throw new HypervisorException("no event channel for an ioreq server", (int)-rc);
            }
            IoreqPage[i].VpEport = _vcpuPorts[i];
        }
        if (handleBufioreq != 0)
        {
            _bufAtomic = handleBufioreq == IoreqServers.HVM_IOREQSRV_BUFIOREQ_ATOMIC;
            if (!d.Host.Frames.TryAllocate(d.DomainId, FrameType.XenShared, out uint bmfn))
            {
                Destroy();
                throw new HypervisorException("out of memory for a buffered ioreq page", Errno.ENOMEM);
            }
            BufIoreqMfn = bmfn;
            new Span<byte>((void*)d.Host.Frames.PageAddress(bmfn), 4096).Clear();
            long rc = d.Evtchn.AllocUnbound(dmDomain, out uint bport, null);
            if (rc < 0)
            {
                Destroy();
                throw new HypervisorException("no event channel for a buffered ioreq ring", (int)-rc);
            }
            BufIoreqPort = bport;
        }
    }

    public ushort Id { get; }
    public ushort DmDomain { get; }
    public bool Enabled { get; set; }
    public bool Destroyed { get => Volatile.Read(ref _destroyed); private set => Volatile.Write(ref _destroyed, value); }
    private bool _destroyed;
    public uint IoreqMfn { get; }
    /// <summary>The synchronous ioreq page: slot i is vCPU i's (what the device model maps).</summary>
    public IoreqSlot* IoreqPage { get; }
    public uint? BufIoreqMfn { get; private set; }
    public uint BufIoreqPort { get; private set; }
    public uint VcpuPort(int vcpu) => _vcpuPorts[vcpu];

    /// <summary>The device model notified one of the vCPU ports through the event channel: a response may be ready.
    /// A vCPU that waits on its doorbell is woken there too.</summary>
    private void Responded()
    {
        lock (_lock)
        {
            Monitor.PulseAll(_lock);
            foreach (nint bell in _doorbells)
                if (bell != 0)
                    Ring((uint*)bell);
        }
    }

    /// <summary>The bit a device model sets in a doorbell word as its notification (privcmd.h's
    /// PRIVCMD_EVTCHN_NOTIFIED).</summary>
    public const uint DoorbellNotified = 8;

    private static void Ring(uint* bell)
    {
        Interlocked.Or(ref *bell, DoorbellNotified);
        Futex.Wake(bell);
    }

    /// <summary>The vCPU whose port is <paramref name="port"/>, or -1.</summary>
    public int VcpuOfPort(uint port) => Array.IndexOf(_vcpuPorts, port);

    /// <summary>
    /// Lets the device model notify vCPU <paramref name="vcpu"/>'s port by memory: <paramref name="word"/> is a 32-bit
    /// word in memory shared with it, in which it sets <see cref="DoorbellNotified"/> and wakes futex waiters, as it
    /// would otherwise send EVTCHNOP_send on the Domain-0 end. The vCPU then sleeps on that word while it waits for a
    /// response, so that the device model wakes it with no thread in between. Until the returned handle is disposed
    /// (which must happen before the word is unmapped) the word stays readable.
    /// </summary>
    public IDisposable AttachDoorbell(int vcpu, nint word)
    {
        lock (_lock)
        {
            _doorbells[vcpu] = word;
            Monitor.PulseAll(_lock); // a vCPU waiting the old way moves over to the word
        }
        return new Doorbell(this, vcpu, word);
    }

    private sealed class Doorbell(IoreqServer server, int vcpu, nint word) : IDisposable
    {
        public void Dispose()
        {
            lock (server._lock)
                if (server._doorbells[vcpu] == word)
                    server._doorbells[vcpu] = 0;
        }
    }

    public long MapRange(int type, ulong start, ulong end, bool map)
    {
        if ((uint)type > RangePci || start > end)
            return -Errno.EINVAL;
        lock (_lock)
        {
            var list = _ranges[type];
            if (map)
            {
                if (list.Any(r => r.Start <= end && start <= r.End))
                    return -Errno.EEXIST;
                list.Add((start, end));
                return 0;
            }
            int at = list.FindIndex(r => r.Start <= start && end <= r.End);
            if (at < 0)
                return -Errno.ENOENT;
            // Take the range out, keeping what lies either side of it.
            var r = list[at];
            list.RemoveAt(at);
            if (r.Start < start)
                list.Add((r.Start, start - 1));
            if (end < r.End)
                list.Add((end + 1, r.End));
            return 0;
        }
    }

    public bool Claims(int type, ulong address) => Claims(type, address, address);

    /// <summary>One of the server's ranges of <paramref name="type"/> holds all of [first, last].</summary>
    public bool Claims(int type, ulong first, ulong last)
    {
        lock (_lock)
            foreach (var (s, e) in _ranges[type])
                if (first >= s && last <= e)
                    return true;
        return false;
    }

    /// <summary>Sends one access to the device model and waits for its answer; false when the server went away
    /// (or the domain is dying) before answering. A repeated access (<paramref name="count"/> &gt; 1, Xen's rep ioreq)
    /// gives in <paramref name="result"/> the iterations the device model did, which it may lower but not raise (Xen's
    /// hvmemul_do_io); none, or more than asked, crashes the domain and retires nothing.</summary>
    public bool Send(Vcpu v, uint type, ulong address, int size, bool read, ulong data, out ulong result,
        uint count = 1, bool dataIsPtr = false, bool df = false)
    {
        result = 0;
        ref var slot = ref IoreqPage[v.Id];
        lock (_lock)
        {
            if (Destroyed)
                return false;
            slot.Addr = address;
            slot.Data = read && !dataIsPtr ? 0 : data;
            slot.Count = count;
            slot.Size = (uint)size;
            slot.Type = (byte)type;
            Volatile.Write(ref slot.StateDir, (byte)(IoreqSlot.STATE_IOREQ_READY | (read ? IoreqSlot.DirRead : 0)
                | (dataIsPtr ? IoreqSlot.DataIsPtr : 0) | (df ? IoreqSlot.Df : 0)));
        }
        _d.Evtchn.Send(_vcpuPorts[v.Id]);
        if (!AwaitResponse(ref slot, v.Id))
            return false;
        if (count > 1)
        {
            uint done = Volatile.Read(ref slot.Count);
            Volatile.Write(ref slot.StateDir, IoreqSlot.STATE_IOREQ_NONE);
            if (done == 0 || done > count)
            {
                // Xen crashes a domain whose device model claims iterations it was not asked for.
                _d.Host.Log($"(d{_d.DomainId}) ioreq server {Id} answered {done} of {count} repeated accesses");
                _d.Host.ShutdownDomain(_d, XenSharp.Public.Sched.SHUTDOWN_crash);
                done = 0;
            }
            result = done;
            return true;
        }
        result = slot.Data;
        Volatile.Write(ref slot.StateDir, IoreqSlot.STATE_IOREQ_NONE);
        return true;
    }

    /// <summary>How long a vCPU spins on its slot before it sleeps: a device model that answers at once (a port it
    /// only latches) is back within microseconds, far sooner than a sleeping thread wakes.</summary>
    private const int SpinIterations = 64;

    /// <summary>Waits for STATE_IORESP_READY in the vCPU's slot; false when the server or domain went away first.</summary>
    private bool AwaitResponse(ref IoreqSlot slot, int vcpu)
    {
        var spin = new SpinWait();
        for (int i = 0; i < SpinIterations && !spin.NextSpinWillYield; i++)
        {
            if ((Volatile.Read(ref slot.StateDir) & 0xF) == IoreqSlot.STATE_IORESP_READY)
                return true;
            spin.SpinOnce(-1);
        }
        while (true)
        {
            uint* bell;
            uint seen;
            lock (_lock)
            {
                // Under the lock the word cannot be detached (and unmapped) while it is read.
                bell = (uint*)_doorbells[vcpu];
                if (bell == null)
                    break;
                // Cleared before the slot is checked: a notification after the check changes the word, so the
                // futex wait below returns at once instead of sleeping on a value that is already stale.
                seen = Interlocked.And(ref *bell, ~DoorbellNotified) & ~DoorbellNotified;
            }
            if ((Volatile.Read(ref slot.StateDir) & 0xF) == IoreqSlot.STATE_IORESP_READY)
                return true;
            if (Destroyed || _d.IsDying)
                return false;
            // A word unmapped meanwhile makes this fail with EFAULT; the next turn finds it detached.
            Futex.Wait(bell, seen, WaitSliceMs);
        }
        lock (_lock)
        {
            while ((Volatile.Read(ref slot.StateDir) & 0xF) != IoreqSlot.STATE_IORESP_READY)
            {
                if (Destroyed || _d.IsDying)
                    return false;
                Monitor.Wait(_lock, WaitSliceMs);
            }
            return true;
        }
    }

    /// <summary>
    /// Queues a write the guest need not wait for on the buffered ring (Xen's ioreq_send_buffered): one slot, two for
    /// 8 bytes, with the address in 20 bits. False when the server has no ring, the write does not fit a slot or the
    /// ring is full; the caller then sends it synchronously. With HVM_IOREQSRV_BUFIOREQ_ATOMIC the pointers are
    /// brought back below the ring size together, in one 64-bit compare-and-swap, as the device model reads them.
    /// </summary>
    public bool SendBuffered(uint type, ulong address, int size, ulong data)
    {
        if (BufIoreqMfn is not uint mfn || address > 0xFFFFF)
            return false;
        int sizeCode = size switch { 1 => 0, 2 => 1, 4 => 2, 8 => 3, _ => -1 };
        if (sizeCode < 0)
            return false;
        var page = (BufferedIopage*)_d.Host.Frames.PageAddress(mfn);
        uint slots = size == 8 ? 2u : 1u;
        lock (_bufLock)
        {
            if (Destroyed)
                return false;
            uint write = Volatile.Read(ref page->WritePointer);
            if (write - Volatile.Read(ref page->ReadPointer) > BufferedIopage.SlotCount - slots)
                return false;
            uint first = (type & 0xFF) | ((uint)sizeCode << 10) | ((uint)address << 12);
            BufferedIopage.Slot(page, write) = (ulong)first | ((ulong)(uint)data << 32);
            if (slots == 2)
                BufferedIopage.Slot(page, write + 1) = (ulong)first | (data & 0xFFFF_FFFF_0000_0000);
            // The slots are visible before the pointer that hands them over.
            Volatile.Write(ref page->WritePointer, write + slots);
            if (_bufAtomic)
                for (int i = 0; i < BufferedIopage.SlotCount; i++)
                {
                    ulong old = Volatile.Read(ref page->Pointers);
                    uint rp = (uint)old, wp = (uint)(old >> 32);
                    if (rp < BufferedIopage.SlotCount)
                        break;
                    uint n = rp / BufferedIopage.SlotCount * BufferedIopage.SlotCount;
                    Interlocked.CompareExchange(ref page->Pointers, (rp - n) | ((ulong)(wp - n) << 32), old);
                }
        }
        _d.Evtchn.Send(BufIoreqPort);
        return true;
    }

    public void Destroy()
    {
        lock (_lock)
        {
            if (Destroyed)
                return;
            Destroyed = true;
            Monitor.PulseAll(_lock);
            foreach (nint bell in _doorbells ?? [])
                if (bell != 0)
                    Ring((uint*)bell);
        }
        foreach (uint port in _vcpuPorts)
            if (port != 0)
                _d.Evtchn.Close(port);
        if (BufIoreqPort != 0)
            _d.Evtchn.Close(BufIoreqPort);
        _d.Host.Frames.Free(IoreqMfn);
        if (BufIoreqMfn is uint b)
            _d.Host.Frames.Free(b);
    }
}

/// <summary>
/// A domain's IOREQ servers (Xen's ioreq_server table, at most 8) and the choice of one for an access the hypervisor
/// does not emulate itself (Xen's ioreq_server_select): port ranges for port I/O, memory ranges for MMIO, and PCI
/// (segment, bus, device, function) ranges for config accesses through ports 0xCFC-0xCFF while 0xCF8 holds an
/// enabled address.
/// </summary>
internal sealed class IoreqServers(Domain d)
{
    public const int MaxServers = 8;
    public const int HVM_IOREQSRV_BUFIOREQ_ATOMIC = 2;

    private readonly object _lock = new();
    private volatile IoreqServer[] _servers = [];
    private ushort _nextId;
    /// <summary>The last value written to port 0xCF8 (Xen's pci_cf8).</summary>
    private uint _cf8;

    public bool Any => _servers.Length > 0;

    /// <summary>The servers now.</summary>
    public IReadOnlyList<IoreqServer> All => _servers;

    /// <summary>What <see cref="TrySend"/> gives as the result of a write it queued on the buffered ring.</summary>
    public const ulong SentBuffered = ulong.MaxValue;

    public long Create(ushort dmDomain, byte handleBufioreq, out ushort id)
    {
        id = 0;
        if (handleBufioreq > HVM_IOREQSRV_BUFIOREQ_ATOMIC)
            return -Errno.EINVAL;
        lock (_lock)
        {
            if (_servers.Length >= MaxServers)
                return -Errno.ENOSPC;
            while (_servers.Any(s => s.Id == _nextId))
                _nextId++;
            id = _nextId++;
            IoreqServer s;
            try { s = new IoreqServer(d, id, dmDomain, handleBufioreq); }
            catch (HypervisorException e) { return -e.Errno; }
            // The engines stop answering unclaimed ports themselves before the server can be given any.
            d.Arch.ForgetUnclaimedPorts();
            _servers = [.. _servers, s];
            return 0;
        }
    }

    /// <summary>The server <paramref name="id"/> if <paramref name="dmDomain"/> created it: -ENOENT when there is
    /// none, -EPERM when another device model owns it.</summary>
    public IoreqServer? Get(ushort id, ushort dmDomain, out long err)
    {
        err = 0;
        var s = _servers.FirstOrDefault(x => x.Id == id);
        if (s is null)
            err = -Errno.ENOENT;
        else if (s.DmDomain != dmDomain)
        {
            err = -Errno.EPERM;
            s = null;
        }
        return s;
    }

    public long Destroy(ushort id, ushort dmDomain)
    {
        lock (_lock)
        {
            var s = Get(id, dmDomain, out long err);
            if (s is null)
                return err;
            _servers = [.. _servers.Where(x => x != s)];
            s.Destroy();
            return 0;
        }
    }

    /// <summary>
    /// The frames of server <paramref name="id"/> as the resource XENMEM_resource_ioreq_server (Xen's
    /// ioreq_server_get_frame): frame 0 is the buffered ring (-EINVAL when the server has none), frame 1 the
    /// synchronous ioreq page. Only the device model that created the server may map them.
    /// </summary>
    public long ResourceFrames(uint id, ushort dmDomain, ulong first, Span<uint> mfns)
    {
        if (id > ushort.MaxValue)
            return -Errno.ENOENT;
        var s = Get((ushort)id, dmDomain, out long err);
        if (s is null)
            return err;
        for (int i = 0; i < mfns.Length; i++)
        {
            ulong frame = first + (ulong)i;
            if (frame == Memory.XENMEM_resource_ioreq_server_frame_bufioreq && s.BufIoreqMfn is uint b)
                mfns[i] = b;
            else if (frame == Memory.XENMEM_resource_ioreq_server_frame_ioreq(0))
                mfns[i] = s.IoreqMfn;
            else
                return -Errno.EINVAL;
        }
        return 0;
    }

    /// <summary>The domain is going away: every server with it.</summary>
    public void DestroyAll()
    {
        IoreqServer[] all;
        lock (_lock)
        {
            all = _servers;
            _servers = [];
        }
        foreach (var s in all)
            s.Destroy();
    }

    /// <summary>Guest-physical VGA memory, whose writes Xen's stdvga sends on the buffered ring.</summary>
    private const ulong VgaMemBase = 0xA0000, VgaMemEnd = 0xBFFFF;

    /// <summary>Sends an access nobody in the hypervisor claims to the enabled server whose ranges hold it; false
    /// when there is none (or it went away before answering). A repeated access (<paramref name="count"/> &gt; 1,
    /// never PCI configuration) must lie wholly in one server's range and gives the iterations done in
    /// <paramref name="result"/>. A single write to VGA memory goes on the server's buffered ring when it has one
    /// with room, as Xen's stdvga sends it, and the vCPU does not wait.</summary>
    public bool TrySend(Vcpu v, uint type, ulong address, int size, bool read, ulong data, out ulong result,
        uint count = 1, bool dataIsPtr = false, bool df = false)
    {
        result = 0;
        var servers = _servers;
        if (servers.Length == 0)
            return false;
        int rangeType = type == IOREQ_TYPE_PIO ? IoreqServer.RangePort : IoreqServer.RangeMemory;
        ulong first = address, last = address;
        if (type == IOREQ_TYPE_PIO)
        {
            if (address == 0xCF8 && size == 4 && !read)
                _cf8 = (uint)data;
            uint cf8 = _cf8;
            if (address is >= 0xCFC and <= 0xCFF && (cf8 & 0x8000_0000) != 0 && count <= 1)
            {
                // A config access: the server that claims the device gets it as IOREQ_TYPE_PCI_CONFIG with the
                // SBDF in the high half of the address and the register (with the extended bits 24-27) in the low.
                uint sbdf = (cf8 >> 8) & 0xFFFF;
                foreach (var s in servers)
                    if (s.Enabled && s.Claims(IoreqServer.RangePci, sbdf))
                    {
                        ulong reg = (cf8 & 0xFC) | ((cf8 >> 16) & 0xF00) | (address & 3);
                        return s.Send(v, IOREQ_TYPE_PCI_CONFIG, ((ulong)sbdf << 32) | reg, size, read, data, out result);
                    }
            }
        }
        else if (count > 1)
        {
            // Xen's ioreq_server_select: the whole span the iterations touch, whichever way DF runs.
            ulong span = (ulong)size * (count - 1);
            if (df)
                first = address - span;
            else
                last = address + span;
            last += (ulong)size - 1;
        }
        else
            last = address + (ulong)size - 1;
        foreach (var s in servers)
            if (s.Enabled && s.Claims(rangeType, first, last))
            {
                if (type == IOREQ_TYPE_COPY && !read && count <= 1 && address >= VgaMemBase && last <= VgaMemEnd
                    && (d.Arch.EmulationFlags & XenSharp.Public.ArchX86.XenX86Emu.XEN_X86_EMU_VGA) != 0 && s.SendBuffered(type, address, size, data))
                {
                    result = SentBuffered;
                    return true;
                }
                return s.Send(v, type, address, size, read, data, out result, count, dataIsPtr, df);
            }
        return false;
    }
}
