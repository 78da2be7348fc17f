using System.Runtime.CompilerServices;
using XenSharp.Public;
using static XenSharp.Public.Argo;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// Argo (Xen's common/argo.c, the 4.14 ABI): a domain registers rings, each in pages of its own memory and named by
/// (port, partner domain or any); another domain's sendv copies a message into the ring, the hypervisor alone moving
/// its tx_ptr, and raises VIRQ_ARGO in the receiver. Off unless enabled as Xen's <c>argo=</c> boot option enables
/// it (<see cref="HypervisorOptions.Argo"/>): argo_op then answers EOPNOTSUPP. Rings open to any sender need
/// mac-permissive, as in Xen. The hypervisor holds a reference on each ring page while the ring is registered.
/// </summary>
internal static class ArgoOp
{
    private const int MaxRingsPerDomain = 128, MaxNotifyCount = 256;
    private static readonly object Lock = new();
    private static readonly ConditionalWeakTable<Domain, Dictionary<(uint Aport, ushort Partner), Ring>> Rings = new();

    private sealed class Ring(Domain owner, uint len, uint[] mfns)
    {
        public readonly Domain Owner = owner;
        public readonly uint Len = len;
        public readonly uint[] Mfns = mfns;
        public uint TxPtr;

        private unsafe byte* At(uint offset) => Owner.Host.Frames.PageAddress(Mfns[offset >> 12]) + (offset & 0xFFF);
        public unsafe uint RxPtr => Volatile.Read(ref *(uint*)At(0));
        public unsafe bool Empty => RxPtr == TxPtr;
        public unsafe void PublishTx() => Volatile.Write(ref *(uint*)At(4), TxPtr);

        /// <summary>Bytes into the ring's data area from <paramref name="pos"/>, wrapping at its end.</summary>
        public unsafe void Write(uint pos, ReadOnlySpan<byte> data)
        {
            foreach (byte b in data)
            {
                *At(RingHeaderSize + pos) = b;
                pos = (pos + 1) % Len;
            }
        }

        /// <summary>The largest payload that fits now: the free bytes, less a header and one slot that stays free.</summary>
        public long PayloadSpace()
        {
            long free = (long)RxPtr - TxPtr;
            if (free <= 0)
                free += Len;
            return free - MessageHeaderSize - XEN_ARGO_MSG_SLOT_SIZE;
        }

        public uint MaxMessageSize => Len - MessageHeaderSize - XEN_ARGO_MSG_SLOT_SIZE;

        public void Release()
        {
            foreach (uint m in Mfns)
                Owner.Host.Frames.Release(m, dropRef: true);
        }
    }

    public static long Do(Vcpu v, in HypercallArgs a)
    {
        var opt = v.Domain.Host.Options.Argo;
        if (opt is null || v.Compat)
            return -Errno.EOPNOTSUPP;
        switch ((int)a.A1)
        {
            case XEN_ARGO_OP_register_ring:
                return Register(v, a.A2, a.A3, a.A4, a.A5, opt.MacPermissive);
            case XEN_ARGO_OP_unregister_ring:
            {
                if (a.A3 != 0 || a.A4 != 0 || a.A5 != 0)
                    return -Errno.EINVAL;
                if (!GuestAccess.Read(v, a.A2, out XenArgoUnregisterRing u))
                    return -Errno.EFAULT;
                if (u.Pad != 0)
                    return -Errno.EINVAL;
                lock (Lock)
                {
                    var rings = Rings.GetOrCreateValue(v.Domain);
                    if (!rings.Remove((u.Aport, u.PartnerId), out var r))
                        return -Errno.ENOENT;
                    r.Release();
                }
                return 0;
            }
            case XEN_ARGO_OP_sendv:
                return SendV(v, a.A2, a.A3, a.A4, (uint)a.A5);
            case XEN_ARGO_OP_notify:
                return a.A3 != 0 || a.A4 != 0 || a.A5 != 0 ? -Errno.EINVAL : Notify(v, a.A2);
            default:
                return -Errno.EOPNOTSUPP;
        }
    }

    private static long Register(Vcpu v, ulong regArg, ulong gfnArg, ulong npage, ulong flags, bool macPermissive)
    {
        if ((flags & ~(ulong)XEN_ARGO_REGISTER_FLAG_FAIL_EXIST) != 0)
            return -Errno.EINVAL;
        if (!GuestAccess.Read(v, regArg, out XenArgoRegisterRing reg))
            return -Errno.EFAULT;
        if (reg.Pad != 0 || reg.Len % XEN_ARGO_MSG_SLOT_SIZE != 0 || reg.Len > XEN_ARGO_MAX_RING_SIZE ||
            reg.Len < MessageHeaderSize + 2 * XEN_ARGO_MSG_SLOT_SIZE)
            return -Errno.EINVAL;
        ulong needed = (RingHeaderSize + reg.Len + 4095UL) / 4096;
        if (npage < needed || npage > (XEN_ARGO_MAX_RING_SIZE + RingHeaderSize + 4095) / 4096)
            return -Errno.EINVAL;
        if (reg.PartnerId == XEN_ARGO_DOMID_ANY && !macPermissive)
            return -Errno.EPERM;
        var d = v.Domain;
        var mfns = new uint[needed];
        for (uint i = 0; i < needed; i++)
        {
            if (!GuestAccess.ReadElement(v, gfnArg, i, out ulong gfn))
                return -Errno.EFAULT;
            if (!d.P2m.TryLookup(gfn, out mfns[i], out var type) || type != P2mType.RamRw)
                return -Errno.EINVAL;
        }
        lock (Lock)
        {
            var rings = Rings.GetOrCreateValue(d);
            var key = (reg.Aport, reg.PartnerId);
            if (rings.TryGetValue(key, out var old))
            {
                if ((flags & XEN_ARGO_REGISTER_FLAG_FAIL_EXIST) != 0)
                    return -Errno.EEXIST;
            }
            else if (rings.Count >= MaxRingsPerDomain)
                return -Errno.ENOSPC;
            foreach (uint m in mfns)
                d.Host.Frames.AddRef(m);
            var ring = new Ring(d, reg.Len, mfns);
            // Re-registered (as after a resume), the ring keeps where the hypervisor wrote up to; a new one starts at 0.
            ring.TxPtr = old is not null && old.TxPtr < reg.Len ? old.TxPtr : 0;
            ring.PublishTx();
            old?.Release();
            rings[key] = ring;
        }
        return 0;
    }

    private static Ring? Find(Domain dst, uint aport, ushort sender) =>
        Rings.TryGetValue(dst, out var rings)
            ? rings.GetValueOrDefault((aport, sender)) ?? rings.GetValueOrDefault((aport, XEN_ARGO_DOMID_ANY))
            : null;

    private static long SendV(Vcpu v, ulong addrArg, ulong iovArg, ulong niov, uint messageType)
    {
        if (!GuestAccess.Read(v, addrArg, out XenArgoSendAddr addr))
            return -Errno.EFAULT;
        if (addr.Src.Pad != 0 || addr.Dst.Pad != 0)
            return -Errno.EINVAL;
        ushort self = v.Domain.DomainId;
        if (addr.Src.DomainId != XEN_ARGO_DOMID_ANY && addr.Src.DomainId != self)
            return -Errno.EPERM;
        if (niov > XEN_ARGO_MAXIOV)
            return -Errno.EINVAL;
        var iovs = new XenArgoIov[niov];
        ulong total = 0;
        for (uint i = 0; i < niov; i++)
        {
            if (!GuestAccess.ReadElement(v, iovArg, i, out iovs[i]))
                return -Errno.EFAULT;
            if (iovs[i].Pad != 0)
                return -Errno.EINVAL;
            total += iovs[i].IovLen;
        }
        if (total > XEN_ARGO_MAX_RING_SIZE)
            return -Errno.EMSGSIZE;
        var payload = new byte[total];
        int at = 0;
        foreach (var iov in iovs)
        {
            if (!GuestAccess.CopyFrom(v, iov.IovHnd, payload.AsSpan(at, (int)iov.IovLen)))
                return -Errno.EFAULT;
            at += (int)iov.IovLen;
        }
        var dst = v.Domain.Host.FindDomain(addr.Dst.DomainId);
        if (dst is null || dst.IsHost)
            return -Errno.ECONNREFUSED;
        lock (Lock)
        {
            var ring = Find(dst, addr.Dst.Aport, self);
            if (ring is null)
                return -Errno.ECONNREFUSED;
            if (total > ring.MaxMessageSize)
                return -Errno.EMSGSIZE;
            uint rx = ring.RxPtr;
            if (rx >= ring.Len || rx % XEN_ARGO_MSG_SLOT_SIZE != 0)
                return -Errno.EINVAL; // the receiver broke its own ring
            if ((long)total > ring.PayloadSpace())
                return -Errno.EAGAIN;
            Span<byte> header = stackalloc byte[MessageHeaderSize];
            Unsafe.WriteUnaligned(ref header[0], (uint)(MessageHeaderSize + total));
            Unsafe.WriteUnaligned(ref header[4], new XenArgoAddr { Aport = addr.Src.Aport, DomainId = self });
            Unsafe.WriteUnaligned(ref header[12], messageType);
            ring.Write(ring.TxPtr, header);
            ring.Write((ring.TxPtr + MessageHeaderSize) % ring.Len, payload);
            ulong slots = (MessageHeaderSize + total + XEN_ARGO_MSG_SLOT_SIZE - 1) & ~(ulong)(XEN_ARGO_MSG_SLOT_SIZE - 1);
            ring.TxPtr = (uint)((ring.TxPtr + slots) % ring.Len);
            ring.PublishTx();
        }
        dst.Evtchn.SendVirq(null, Xen.VIRQ_ARGO);
        return (long)total;
    }

    /// <summary>XEN_ARGO_OP_notify: answers, for each ring asked about, whether it exists and how much fits now.</summary>
    private static long Notify(Vcpu v, ulong arg)
    {
        if (arg == 0)
            return 0;
        if (!GuestAccess.Read(v, arg, out ulong head))
            return -Errno.EFAULT;
        uint nent = (uint)head;
        if (nent > MaxNotifyCount)
            return -Errno.EACCES;
        ulong entries = arg + 8;
        for (uint i = 0; i < nent; i++)
        {
            if (!GuestAccess.ReadElement(v, entries, i, out XenArgoRingDataEnt e))
                return -Errno.EFAULT;
            e.Flags = 0;
            e.MaxMessageSize = 0;
            var dst = v.Domain.Host.FindDomain(e.Ring.DomainId);
            lock (Lock)
            {
                if (dst is not null && Find(dst, e.Ring.Aport, v.Domain.DomainId) is { } ring)
                {
                    e.Flags |= XEN_ARGO_RING_EXISTS;
                    if (Rings.TryGetValue(dst, out var rings) && !rings.ContainsKey((e.Ring.Aport, v.Domain.DomainId)))
                        e.Flags |= XEN_ARGO_RING_SHARED;
                    if (ring.Empty)
                        e.Flags |= XEN_ARGO_RING_EMPTY;
                    e.MaxMessageSize = ring.MaxMessageSize;
                    if (e.SpaceRequired > ring.MaxMessageSize)
                        e.Flags |= XEN_ARGO_RING_EMSGSIZE;
                    else if (e.SpaceRequired <= ring.PayloadSpace())
                        e.Flags |= XEN_ARGO_RING_SUFFICIENT;
                }
            }
            if (!GuestAccess.Write(v, entries + i * (ulong)Unsafe.SizeOf<XenArgoRingDataEnt>(), e))
                return -Errno.EFAULT;
        }
        return 0;
    }

    /// <summary>A dying domain's rings go, with their page references.</summary>
    public static void Teardown(Domain d)
    {
        lock (Lock)
        {
            if (!Rings.TryGetValue(d, out var rings))
                return;
            foreach (var r in rings.Values)
                r.Release();
            rings.Clear();
        }
    }
}
