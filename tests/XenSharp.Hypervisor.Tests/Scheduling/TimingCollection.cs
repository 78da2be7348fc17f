namespace XenSharp.Hypervisor.Tests.Scheduling;

/// <summary>Tests that measure shares and bounds run alone, so other tests' threads do not hold up their pCPUs.</summary>
[CollectionDefinition("Scheduler measurements", DisableParallelization = true)]
public class SchedulerMeasurements;
