namespace XenSharp.Public.Io;

/// <summary>xen/include/public/io/xenbus.h: enum xenbus_state, the handshake both ends of a PV device
/// publish in their xenstore <c>state</c> node.</summary>
public enum XenbusState
{
    Unknown = 0,
    Initialising = 1,
    /// <summary>The backend is ready for the frontend's ring details (after hotplug).</summary>
    InitWait = 2,
    /// <summary>The frontend has published its ring details.</summary>
    Initialised = 3,
    Connected = 4,
    /// <summary>The device is being closed (an error or an unplug).</summary>
    Closing = 5,
    Closed = 6,
    /// <summary>The frontend reconfigures the device.</summary>
    Reconfiguring = 7,
    Reconfigured = 8,
}
