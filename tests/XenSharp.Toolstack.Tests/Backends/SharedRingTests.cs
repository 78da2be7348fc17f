using System.Diagnostics;
using System.Runtime.InteropServices;
using XenSharp.Backends.Rings;
using XenSharp.Public.Io;

namespace XenSharp.Toolstack.Tests.Backends;

/// <summary>The typed ring.h ring: a backend end against hand-built ring pages and against a frontend
/// compiled from ring.h's own macros.</summary>
public sealed unsafe class SharedRingTests : IDisposable
{
    [StructLayout(LayoutKind.Sequential)]
    private struct Req
    {
        public ulong Id;
        public uint Op;
        public uint Pad;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Rsp
    {
        public ulong Id;
        public short Status;
    }

    /// <summary>blkif's sizes: 112-byte requests, 16-byte responses.</summary>
    [StructLayout(LayoutKind.Sequential, Size = 112)]
    private struct BlkReq { public ulong First; }

    [StructLayout(LayoutKind.Sequential, Size = 16)]
    private struct BlkRsp { public ulong Id; }

    private readonly byte* _page = (byte*)NativeMemory.AlignedAlloc(4096, 4096);

    public SharedRingTests()
    {
        new Span<byte>(_page, 4096).Clear();
        SharedRingLayout<Req, Rsp>.Init(new Span<byte>(_page, 4096));
    }

    public void Dispose() => NativeMemory.AlignedFree(_page);

    private ref uint Index(int offset) => ref *(uint*)(_page + offset);

    [Fact]
    public void RingSizeIsThePowerOfTwoOfEntriesAfterTheHeader()
    {
        Assert.Equal(32u, SharedRingLayout<BlkReq, BlkRsp>.Size());
        Assert.Equal(112, SharedRingLayout<BlkReq, BlkRsp>.EntrySize);
        Assert.Equal(128u, SharedRingLayout<Req, Rsp>.Size()); // (4096 - 64) / 16 = 252 → 128
        Assert.Equal(1u, Index(Ring.OffsetReqEvent));
        Assert.Equal(1u, Index(Ring.OffsetRspEvent));
    }

    [Fact]
    public void RequestsWrittenByHandAreTakenInOrderAndAnsweredInPlace()
    {
        // The frontend's view, written as raw bytes: three requests at slots 0..2, req_prod = 3.
        for (int i = 0; i < 3; i++)
            *(Req*)(_page + Ring.OffsetRing + 16 * i) = new Req { Id = 10u + (uint)i, Op = 7 };
        Index(Ring.OffsetReqProd) = 3;
        var back = new BackRing<Req, Rsp>(_page);
        Assert.Equal(RingCheck.Requests, back.CheckForRequests(out uint n));
        Assert.Equal(3u, n);
        for (int i = 0; i < 3; i++)
        {
            back.TakeRequest(out var r);
            Assert.Equal(10u + (uint)i, r.Id);
            back.PutResponse(new Rsp { Id = r.Id, Status = 0 });
        }
        // rsp_event is 1 (SHARED_RING_INIT): the frontend waits for the first response.
        Assert.True(back.PushResponsesAndCheckNotify());
        Assert.Equal(3u, Index(Ring.OffsetRspProd));
        Assert.Equal(12ul, ((Rsp*)(_page + Ring.OffsetRing + 32))->Id);
        // Nothing more: the final check asks for a notification at the next request.
        Assert.Equal(RingCheck.Empty, back.FinalCheckForRequests(out _));
        Assert.Equal(4u, Index(Ring.OffsetReqEvent));
    }

    [Fact]
    public void NoNotificationWhenTheFrontendDidNotAskForOne()
    {
        var front = new FrontRing<Req, Rsp>(_page);
        var back = new BackRing<Req, Rsp>(_page);
        front.NextRequest() = new Req { Id = 1 };
        Assert.True(front.PushRequestsAndCheckNotify()); // req_event 1
        back.CheckForRequests(out _);
        back.TakeRequest(out _);
        back.PutResponse(new Rsp { Id = 1 });
        Assert.True(back.PushResponsesAndCheckNotify()); // rsp_event 1
        Assert.True(front.TryTakeResponse(out var first));
        Assert.Equal(1ul, first.Id);
        // The frontend polls without asking (rsp_event stays at 1): the next response needs no event.
        front.NextRequest() = new Req { Id = 2 };
        Assert.False(front.PushRequestsAndCheckNotify()); // the backend did not ask either (req_event still 1)
        back.CheckForRequests(out _);
        back.TakeRequest(out _);
        back.PutResponse(new Rsp { Id = 2 });
        Assert.False(back.PushResponsesAndCheckNotify());
        // After the frontend's final check (rsp_event = rsp_cons + 1) the next one is notified.
        Assert.True(front.FinalCheckForResponses());
        Assert.True(front.TryTakeResponse(out _));
        Assert.False(front.FinalCheckForResponses());
        front.NextRequest() = new Req { Id = 3 };
        front.PushRequestsAndCheckNotify();
        back.CheckForRequests(out _);
        back.TakeRequest(out _);
        back.PutResponse(new Rsp { Id = 3 });
        Assert.True(back.PushResponsesAndCheckNotify());
    }

    [Fact]
    public void IndexesWrapAroundTwoToTheThirtyTwo()
    {
        const uint start = 0xFFFF_FFF0;
        Index(Ring.OffsetReqProd) = Index(Ring.OffsetRspProd) = start;
        Index(Ring.OffsetReqEvent) = Index(Ring.OffsetRspEvent) = start + 1;
        var front = new FrontRing<Req, Rsp>(_page, start: start);
        var back = new BackRing<Req, Rsp>(_page, start: start);
        for (ulong i = 0; i < 100; i++)
            front.NextRequest() = new Req { Id = i };
        front.PushRequestsAndCheckNotify();
        Assert.Equal(RingCheck.Requests, back.CheckForRequests(out uint n));
        Assert.Equal(100u, n);
        for (ulong i = 0; i < 100; i++)
        {
            back.TakeRequest(out var r);
            Assert.Equal(i, r.Id);
            back.PutResponse(new Rsp { Id = r.Id });
        }
        back.PushResponsesAndCheckNotify();
        Assert.Equal(unchecked(start + 100), Index(Ring.OffsetRspProd));
        for (ulong i = 0; i < 100; i++)
        {
            Assert.True(front.TryTakeResponse(out var r));
            Assert.Equal(i, r.Id);
        }
    }

    [Fact]
    public void AProducerMoreThanARingAheadIsGarbage()
    {
        var back = new BackRing<Req, Rsp>(_page);
        Index(Ring.OffsetReqProd) = back.Size;
        Assert.Equal(RingCheck.Requests, back.CheckForRequests(out uint n));
        Assert.Equal(back.Size, n);
        Index(Ring.OffsetReqProd) = back.Size + 1;
        Assert.Equal(RingCheck.Overflow, back.CheckForRequests(out n));
        Assert.Equal(0u, n);
        Index(Ring.OffsetReqProd) = 0xDEAD_BEEF;
        Assert.Equal(RingCheck.Overflow, back.FinalCheckForRequests(out _));
        // A producer behind the consumer (it went backwards) is also more than a ring ahead.
        Index(Ring.OffsetReqProd) = 5;
        for (int i = 0; i < 5; i++) back.TakeRequest(out _);
        Index(Ring.OffsetReqProd) = 2;
        Assert.Equal(RingCheck.Overflow, back.CheckForRequests(out _));
    }

    [Fact]
    public void OnlyRequestsThatHaveRoomForAResponseAreOffered()
    {
        var back = new BackRing<Req, Rsp>(_page);
        Index(Ring.OffsetReqProd) = back.Size;
        back.CheckForRequests(out uint n);
        for (uint i = 0; i < n; i++) back.TakeRequest(out _);
        // All taken, none answered: even if the frontend claims more, there is no room (RING_REQUEST_CONS_OVERFLOW).
        Assert.Equal(RingCheck.Empty, back.CheckForRequests(out n));
        back.PutResponse(default);
        back.PushResponsesAndCheckNotify();
        Index(Ring.OffsetReqProd) = back.Size + 1;
        Assert.Equal(RingCheck.Requests, back.CheckForRequests(out n));
        Assert.Equal(1u, n);
    }

    [Fact]
    public void ServingRequestsAllocatesNothing()
    {
        var front = new FrontRing<Req, Rsp>(_page);
        var back = new BackRing<Req, Rsp>(_page);
        void Round()
        {
            for (int i = 0; i < 16; i++) front.NextRequest() = new Req { Id = (ulong)i };
            front.PushRequestsAndCheckNotify();
            while (back.FinalCheckForRequests(out uint n) == RingCheck.Requests)
                for (uint i = 0; i < n; i++)
                {
                    back.TakeRequest(out var r);
                    back.NextResponse() = new Rsp { Id = r.Id };
                }
            back.PushResponsesAndCheckNotify();
            while (front.TryTakeResponse(out _)) { }
        }
        Round();
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int k = 0; k < 1000; k++) Round();
        Assert.Equal(before, GC.GetAllocatedBytesForCurrentThread());
    }

    /// <summary>A frontend built from ring.h's macros (FRONT_RING_ATTACH, RING_PUSH_REQUESTS_AND_CHECK_NOTIFY,
    /// RING_GET_RESPONSE) fills the page; this backend serves it; the same frontend then checks the responses.</summary>
    [Fact]
    public void AgreesWithRingHCompiledByGcc()
    {
        if (!File.Exists("/usr/include/xen/io/ring.h") || !HasGcc())
            return; // the hand-built pages above still pin the layout
        var dir = Directory.CreateTempSubdirectory("xenring");
        try
        {
            string src = Path.Combine(dir.FullName, "ring.c"), exe = Path.Combine(dir.FullName, "ring"), page = Path.Combine(dir.FullName, "page");
            File.WriteAllText(src, FrontendC);
            var (rc, err) = Run("gcc", $"-O2 -o {exe} {src}");
            Assert.True(rc == 0, err);
            (rc, string o) = Run(exe, $"produce {page}");
            Assert.True(rc == 0, o);
            var lines = o.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal($"size {SharedRingLayout<Req, Rsp>.Size()}", lines[0]);
            Assert.Equal($"offset {Ring.OffsetRing}", lines[1]);
            Assert.Equal($"entry {SharedRingLayout<Req, Rsp>.EntrySize}", lines[2]);
            Assert.Equal("notify 1", lines[3]);

            byte[] bytes = File.ReadAllBytes(page);
            fixed (byte* p = bytes)
            {
                var back = new BackRing<Req, Rsp>(p, start: 0xFFFF_FFF0);
                Assert.Equal(RingCheck.Requests, back.CheckForRequests(out uint n));
                Assert.Equal(100u, n);
                for (uint i = 0; i < n; i++)
                {
                    back.TakeRequest(out var r);
                    Assert.Equal(1000ul + i, r.Id);
                    Assert.Equal(3 * i, r.Op);
                    back.PutResponse(new Rsp { Id = r.Id, Status = (short)-(int)(i % 7) });
                }
                Assert.True(back.PushResponsesAndCheckNotify());
                Assert.Equal(RingCheck.Empty, back.FinalCheckForRequests(out _));
            }
            File.WriteAllBytes(page, bytes);
            (rc, o) = Run(exe, $"consume {page}");
            Assert.True(rc == 0, o);
            // The backend's final check asked for an event at the request after the 100th.
            Assert.Equal("responses 100 ok, req_event start+101", o.Trim());
        }
        finally { dir.Delete(true); }
    }

    private const string FrontendC = """
        #include <stdio.h>
        #include <stdint.h>
        #include <string.h>
        #include <stddef.h>
        #define mb() __sync_synchronize()
        #define rmb() __sync_synchronize()
        #define wmb() __sync_synchronize()
        #include <xen/io/ring.h>
        struct t_req { uint64_t id; uint32_t op; uint32_t pad; };
        struct t_rsp { uint64_t id; int16_t status; };
        DEFINE_RING_TYPES(t, struct t_req, struct t_rsp);
        static unsigned char page[4096] __attribute__((aligned(4096)));
        #define START 0xFFFFFFF0u
        int main(int argc, char **argv) {
            t_sring_t *s = (t_sring_t *)page;
            t_front_ring_t f;
            FILE *fp;
            if (argc != 3) return 2;
            if (!strcmp(argv[1], "produce")) {
                int notify, i;
                SHARED_RING_INIT(s);
                s->req_prod = s->rsp_prod = START;
                s->req_event = s->rsp_event = START + 1;
                FRONT_RING_ATTACH(&f, s, START, 4096);
                printf("size %u\noffset %zu\nentry %zu\n", RING_SIZE(&f), offsetof(struct t_sring, ring), sizeof(s->ring[0]));
                for (i = 0; i < 100; i++) {
                    struct t_req *r = RING_GET_REQUEST(&f, f.req_prod_pvt);
                    r->id = 1000 + i; r->op = 3 * i; r->pad = 0;
                    f.req_prod_pvt++;
                }
                RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&f, notify);
                printf("notify %d\n", notify);
                fp = fopen(argv[2], "wb");
                fwrite(page, 1, sizeof page, fp);
                fclose(fp);
                return 0;
            }
            fp = fopen(argv[2], "rb");
            if (!fp || fread(page, 1, sizeof page, fp) != sizeof page) return 3;
            fclose(fp);
            FRONT_RING_ATTACH(&f, s, START, 4096);
            {
                unsigned int got = 0;
                int more;
                do {
                    while (RING_HAS_UNCONSUMED_RESPONSES(&f)) {
                        struct t_rsp *r = RING_GET_RESPONSE(&f, f.rsp_cons);
                        if (r->id != 1000 + got || r->status != -(int)(got % 7)) { printf("bad response %u\n", got); return 1; }
                        f.rsp_cons++;
                        got++;
                    }
                    RING_FINAL_CHECK_FOR_RESPONSES(&f, more);
                } while (more);
                printf("responses %u ok, req_event start+%u\n", got, s->req_event - START);
            }
            return 0;
        }
        """;

    private static bool HasGcc() => Environment.GetEnvironmentVariable("PATH")!.Split(':').Any(p => File.Exists(Path.Combine(p, "gcc")));

    private static (int, string) Run(string file, string args)
    {
        using var p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        string o = p.StandardOutput.ReadToEnd(), e = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, o + e);
    }
}
