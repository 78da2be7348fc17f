using XenSharp.Hypervisor;

namespace XenSharp.Toolstack.Platform;

/// <summary>
/// Cpupools and schedulers as libxl drives them (sysctl cpupool_op and scheduler_op, domctl scheduler_op);
/// failures are <see cref="HypervisorException"/>s carrying Xen's errno.
/// </summary>
public interface IScheduling
{
    IReadOnlyList<CpupoolInfo> ListCpupools();
    IReadOnlyList<int> FreeCpus { get; }
    IReadOnlyList<int> CpuNodes { get; }
    int CreateCpupool(string name, string scheduler, IEnumerable<int> cpus);
    void DestroyCpupool(int poolId);
    void RenameCpupool(int poolId, string newName);
    void CpupoolAddCpu(int poolId, int cpu);
    void CpupoolRemoveCpu(int poolId, int cpu);
    void CpupoolMigrate(uint domId, int poolId);
    IReadOnlyList<int> CpupoolNumaSplit();
    int DomainCpupool(uint domId);

    CreditParams GetCreditParams(uint domId);
    void SetCreditParams(uint domId, int? weight, int? cap);
    CreditPoolParams GetCreditPoolParams(int poolId);
    void SetCreditPoolParams(int poolId, int? tsliceMs, int? ratelimitUs, int? migrationDelayUs = null);
    CreditParams GetCredit2Params(uint domId);
    void SetCredit2Params(uint domId, int? weight, int? cap);
    CreditPoolParams GetCredit2PoolParams(int poolId);
    void SetCredit2PoolParams(int poolId, int ratelimitUs);
    IReadOnlyList<RtdsVcpuParams> GetRtdsParams(uint domId);
    void SetRtdsParams(uint domId, int? vcpu, long? periodUs, long? budgetUs, bool? extratime);

    IReadOnlyList<VcpuSchedInfo> GetVcpuSchedInfo(uint domId);

    /// <summary>XEN_SYSCTL_cputopoinfo and XEN_SYSCTL_numainfo (`xl info -n`, NUMA placement).</summary>
    IReadOnlyList<CpuTopologyInfo> CpuTopology { get; }
    IReadOnlyList<NumaNodeInfo> NumaInfo { get; }
    /// <summary>XEN_DOMCTL_getnodeaffinity / setnodeaffinity (every node: follow the vCPUs' affinities).</summary>
    IReadOnlyList<int> GetNodeAffinity(uint domId);
    void SetNodeAffinity(uint domId, IEnumerable<int> nodes);
}
