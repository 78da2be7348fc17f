using XenSharp.Public;
using XenSharp.Public.Compat;
using static XenSharp.Public.Memory;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// XENMEM_exchange: trades a domain's frames for freshly allocated ones (optionally below an address_bits limit),
/// chunk by chunk. A chunk is the larger of one input and one output extent; it either completes or is undone,
/// and nr_exchanged tells the caller how many input extents were traded. Long exchanges yield with a
/// continuation after a bounded number of pages, recording their progress in nr_exchanged as Xen does.
/// </summary>
internal static class MemoryExchange
{
    public static long Do(Vcpu v, in HypercallArgs a)
    {
        ulong arg = a.A2;
        XenMemoryExchange x;
        if (v.Compat)
        {
            if (!GuestAccess.Read(v, arg, out XenMemoryExchange32 x32))
                return -Errno.EFAULT;
            x = new XenMemoryExchange
            {
                In = Widen(x32.In),
                Out = Widen(x32.Out),
                NrExchanged = x32.NrExchanged,
            };
        }
        else if (!GuestAccess.Read(v, arg, out x))
            return -Errno.EFAULT;

        uint maxOrder = (uint)(v.Domain.IsPrivileged ? MemoryOp.MaxOrderPrivileged : MemoryOp.MaxOrderDomU);
        if (Math.Max(x.In.ExtentOrder, x.Out.ExtentOrder) > maxOrder)
            return Finish(v, arg, x.NrExchanged, -Errno.EPERM);
        if (x.NrExchanged > x.In.NrExtents || x.In.Domid != x.Out.Domid
            || x.In.ExtentOrder >= 64 || x.Out.ExtentOrder >= 64
            || (ulong.MaxValue >> (int)x.In.ExtentOrder) < x.In.NrExtents
            || (ulong.MaxValue >> (int)x.Out.ExtentOrder) < x.Out.NrExtents
            || (x.In.NrExtents << (int)x.In.ExtentOrder) != (x.Out.NrExtents << (int)x.Out.ExtentOrder))
            return Finish(v, arg, x.NrExchanged, -Errno.EINVAL);

        var d = v.Domain.Host.LookupForGuest(v.Domain, x.In.Domid, out long err);
        if (d is null)
            return Finish(v, arg, x.NrExchanged, err);

        // A chunk: 2^inChunk input extents make 2^outChunk output extents.
        int inChunk = 0, outChunk = 0;
        if (x.In.ExtentOrder <= x.Out.ExtentOrder)
            inChunk = (int)(x.Out.ExtentOrder - x.In.ExtentOrder);
        else
            outChunk = (int)(x.In.ExtentOrder - x.Out.ExtentOrder);
        ulong chunkPages = 1UL << (int)(x.In.ExtentOrder + (uint)inChunk);
        // Frames must lie below 2^address_bits; 0 means anywhere.
        uint bits = XENMEMF_get_address_bits(x.Out.MemFlags);
        ulong limitMfn = bits == 0 || bits >= 64 ? ulong.MaxValue : bits <= FrameTable.PageShift ? 0 : 1UL << (int)(bits - FrameTable.PageShift);

        ulong first = x.NrExchanged >> inChunk;
        ulong chunks = x.In.NrExtents >> inChunk;
        ulong done = 0;
        var gfns = new List<ulong>();
        var fresh = new List<uint>();
        for (ulong i = first; i < chunks; i++)
        {
            if (i != first && done >= (ulong)Hypercall.PreemptBudget)
            {
                long rc = Finish(v, arg, i << inChunk, 0);
                return rc != 0 ? rc : Hypercall.CreateContinuation(v, a);
            }
            long r = ExchangeChunk(v, d, x, i, inChunk, outChunk, limitMfn, gfns, fresh);
            if (r != 0)
                return Finish(v, arg, i << inChunk, r);
            done += chunkPages;
        }
        return Finish(v, arg, x.In.NrExtents, 0);
    }

    private static long ExchangeChunk(Vcpu v, Domain d, in XenMemoryExchange x, ulong chunk, int inChunk, int outChunk,
        ulong limitMfn, List<ulong> gfns, List<uint> fresh)
    {
        ulong inPages = 1UL << (int)x.In.ExtentOrder;
        ulong outPages = 1UL << (int)x.Out.ExtentOrder;
        gfns.Clear();
        fresh.Clear();
        lock (d.Lock)
        {
            // The input frames: all plain RAM that nothing else holds (Xen's steal_page).
            for (ulong j = 0; j < (1UL << inChunk); j++)
            {
                if (!MemoryOp.ReadPfn(v, x.In.ExtentStart, (chunk << inChunk) + j, out ulong gmfn))
                    return -Errno.EFAULT;
                for (ulong k = 0; k < inPages; k++)
                {
                    if (!d.P2m.TryLookup(gmfn + k, out uint mfn, out var t) || t is not (P2mType.RamRw or P2mType.RamRo)
                        || d.Host.Frames.RefsOf(mfn) != 0 || gfns.Contains(gmfn + k))
                        return -Errno.EINVAL;
                    gfns.Add(gmfn + k);
                }
            }
            // The output frames, allocated before anything changes so a shortage leaves the chunk untouched.
            ulong need = (1UL << outChunk) * outPages;
            for (ulong n = 0; n < need; n++)
            {
                if (!d.Host.Frames.TryAllocateBelow(d.DomainId, FrameType.Ram, limitMfn, out uint mfn))
                {
                    foreach (uint m in fresh)
                        d.Host.Frames.Free(m);
                    return -Errno.ENOMEM;
                }
                fresh.Add(mfn);
            }
            // Past this point the chunk cannot fail. The reservation is unchanged: as many frames go as come.
            foreach (ulong gfn in gfns)
            {
                var old = d.P2m.Remove(gfn);
                d.Host.Frames.Free(old.Mfn);
            }
            long rc = 0;
            int next = 0;
            for (ulong j = 0; j < (1UL << outChunk); j++)
            {
                if (!MemoryOp.ReadPfn(v, x.Out.ExtentStart, (chunk << outChunk) + j, out ulong gpfn) || gpfn + outPages - 1 > P2m.MaxGfn)
                {
                    // Nowhere to put this extent: its frames go back and the reservation shrinks by them.
                    for (ulong k = 0; k < outPages; k++)
                        d.Host.Frames.Free(fresh[next++]);
                    d.UnchargePages((long)outPages);
                    rc = -Errno.EFAULT;
                    continue;
                }
                for (ulong k = 0; k < outPages; k++)
                    d.ReleaseOld(d.P2m.Set(gpfn + k, fresh[next++], P2mType.RamRw));
            }
            return rc;
        }
    }

    /// <summary>Stores nr_exchanged (the last field) and returns <paramref name="rc"/>, or -EFAULT if it cannot be stored.</summary>
    private static long Finish(Vcpu v, ulong arg, ulong nrExchanged, long rc)
    {
        bool ok = v.Compat
            ? GuestAccess.Write(v, arg + XenMemoryExchange32.OffsetNrExchanged, (uint)nrExchanged)
            : GuestAccess.Write(v, arg + XenMemoryExchange.OffsetNrExchanged, nrExchanged);
        return ok ? rc : -Errno.EFAULT;
    }

    private static XenMemoryReservation Widen(in XenMemoryReservation32 r) => new()
    {
        ExtentStart = r.ExtentStart, NrExtents = r.NrExtents, ExtentOrder = r.ExtentOrder, MemFlags = r.MemFlags, Domid = r.Domid,
    };
}
