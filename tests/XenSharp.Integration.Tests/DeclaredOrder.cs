using Xunit.Abstractions;
using Xunit.Sdk;

namespace XenSharp.Integration.Tests;

/// <summary>Runs a class's tests in the order its subclass declares, for classes whose tests share one guest's life
/// (each leaves the guest as the next expects it); a test not named runs last.</summary>
public abstract class DeclaredOrder(params string[] sequence) : ITestCaseOrderer
{
    public IEnumerable<TTestCase> OrderTestCases<TTestCase>(IEnumerable<TTestCase> testCases) where TTestCase : ITestCase =>
        testCases.OrderBy(t => Array.IndexOf(sequence, t.TestMethod.Method.Name) is var i and >= 0 ? i : int.MaxValue);
}
