using XenSharp.Public;
using System.Collections.Frozen;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// The control requests and their handlers, one declared table as xl's command table is on the
/// other side of the socket. Each entry pairs a request with the handler whose result type the
/// request declares (<see cref="ControlRequest{TResult}"/>), so a handler answering the wrong
/// shape does not compile. A new request is a record in the control protocol plus one row here.
/// </summary>
public sealed partial class Host
{
    private delegate object? Handler(Host host, ControlRequest request);

    private static readonly FrozenDictionary<Type, Handler> Handlers = new[]
    {
        On((Host h, PingRequest _) => new PingResult(h._hv.Version, Environment.ProcessId, h._paths.RunDir)),
        On((Host h, CreateRequest r) => h.Create(r)),
        On((Host h, ListRequest r) => h.List(r)),
        On((Host h, DestroyRequest r) => h.DestroyGuest(r)),
        On((Host h, ShutdownRequest r) => h.RequestShutdown(r)),
        On((Host h, PauseRequest r) => h.Resolve(r.Domain).Hv.Pause()),
        On((Host h, UnpauseRequest r) => h.Resolve(r.Domain).Hv.Unpause()),
        On((Host h, RenameRequest r) => h.Rename(r)),
        On((Host h, VcpuListRequest r) => h.VcpuList(r)),
        On((Host h, BlockListRequest r) => h.BlockList(r)),
        On((Host h, BlockAttachRequest r) => h.BlockAttach(r)),
        On((Host h, BlockDetachRequest r) => h.BlockDetach(r)),
        On((Host h, CdInsertRequest r) => h.CdInsert(r)),
        On((Host h, NetworkListRequest r) => h.NetworkList(r)),
        On((Host h, NetworkAttachRequest r) => h.NetworkAttach(r)),
        On((Host h, NetworkDetachRequest r) => h.NetworkDetach(r)),
        On((Host h, VcpuPinRequest r) => h.VcpuPin(r)),
        On((Host h, VcpuSetRequest r) => h.VcpuSet(r)),
        On((Host h, MemSetRequest r) => h.MemSet(r)),
        On((Host h, MemMaxRequest r) => h.MemMax(r)),
        On((Host h, InfoRequest _) => h.Info()),
        On((Host h, DmesgRequest r) => h._hv.ReadConsole(r.Clear)),
        On((Host h, VncDisplayRequest r) => h.VncDisplayOf(h.Resolve(r.Domain))),
        On((Host h, DebugKeysRequest r) => h._hv.DebugKeys(r.Keys)),
        On((Host h, SysrqRequest r) => h._xs.Write($"{XenstoreLayout.DomainPath(h.Resolve(r.Domain).DomId)}/control/sysrq", r.Key.ToString())),
        On((Host h, TriggerRequest r) => h.Trigger(r)),
        On((Host h, DumpCoreRequest r) => h.DumpCoreTo(h.Resolve(r.Domain), r.File)),
        On((Host h, SaveRequest r) => h.Save(r)),
        On((Host h, RestoreRequest r) => h.Restore(r)),
        On((Host h, MigrateSendRequest r) => h.MigrateSendCheck(r)),
        On((Host h, MigrateReceiveRequest _) => Unit.Value),
        On((Host h, ConsoleAttachRequest r) => h.ConsoleTarget(r)),
        // Stopping follows the answer (the control server calls RequestStop once it is written), so xl always gets it.
        On((Host h, StopDaemonRequest _) => Unit.Value),
        On((Host h, CpupoolListRequest r) => h.CpupoolList(r)),
        On((Host h, CpupoolCreateRequest r) => h.CpupoolCreate(r)),
        On((Host h, CpupoolDestroyRequest r) => { h.Sched.DestroyCpupool(h.Pool(r.Pool).PoolId); h.PublishCpupoolNames(); }),
        On((Host h, CpupoolRenameRequest r) => h.CpupoolRename(r)),
        On((Host h, CpupoolCpuRequest r) => h.CpupoolCpu(r)),
        On((Host h, CpupoolMigrateRequest r) => h.Sched.CpupoolMigrate(h.Resolve(r.Domain).DomId, h.Pool(r.Pool).PoolId)),
        On((Host h, CpupoolNumaSplitRequest _) => h.CpupoolNumaSplit()),
        On((Host h, SchedCreditRequest r) => h.SchedCredit(r)),
        On((Host h, SchedRtdsRequest r) => h.SchedRtds(r)),
    }.ToFrozenDictionary();

    /// <summary>The requests this daemon answers (the protocol's requests all have a row).</summary>
    internal static IReadOnlyCollection<Type> HandledRequests => Handlers.Keys;

    /// <summary>Answers one request. Whatever the handler throws becomes an error answer with the
    /// errno <see cref="ControlErrors"/> gives it; nothing a client asks takes the daemon down.</summary>
    public ControlResponse Handle(ControlRequest request)
    {
        try
        {
            if (!Handlers.TryGetValue(request.GetType(), out var handler))
                throw new ControlException($"xensharpd: unknown request {request.GetType().Name}", Errno.ENOSYS);
            return ControlResponse.Success(handler(this, request));
        }
        catch (Exception e) when (ControlErrors.Map(e) is { } failure)
        {
            if (failure.Unexpected) _hv.ConsoleWrite($"xensharpd: {request.GetType().Name} failed: {e}");
            return ControlResponse.Failure(failure.Message, failure.Errno);
        }
    }

    /// <summary>A row for a request answered with a result.</summary>
    private static KeyValuePair<Type, Handler> On<TRequest, TResult>(Func<Host, TRequest, TResult> handler)
        where TRequest : ControlRequest<TResult> =>
        new(typeof(TRequest), (h, r) => handler(h, (TRequest)r));

    /// <summary>A row for a request answered with ok alone.</summary>
    private static KeyValuePair<Type, Handler> On<TRequest>(Action<Host, TRequest> handler)
        where TRequest : ControlRequest<Unit> =>
        new(typeof(TRequest), (h, r) => { handler(h, (TRequest)r); return Unit.Value; });
}
