#!/usr/bin/env python3
"""qmp.py SOCKET migrate URI DSTSOCKET: starts QEMU's migration to URI over QMP, waits for it to end and prints
'total SECONDS downtime SECONDS resumed SECONDS' (exit 1 if it failed): total and downtime from query-migrate
(downtime: from the source's stop to the end of what it sent), resumed from the source's STOP event to the
destination's RESUME event (their timestamps, on the same host's clock). qmp.py SOCKET quit: ends QEMU."""
import json, socket, sys, time

def session(path):
    s = socket.socket(socket.AF_UNIX)
    for _ in range(300):
        try:
            s.connect(path)
            break
        except OSError:
            time.sleep(0.1)
    f = s.makefile("rw")
    json.loads(f.readline())  # greeting
    events = {}
    def call(cmd, **args):
        f.write(json.dumps({"execute": cmd, "arguments": args} if args else {"execute": cmd}) + "\n")
        f.flush()
        while True:
            r = json.loads(f.readline())
            if "event" in r:
                events[r["event"]] = r["timestamp"]["seconds"] + r["timestamp"]["microseconds"] / 1e6
            if "return" in r or "error" in r:
                return r
    call("qmp_capabilities")
    call.events = events
    return call

call = session(sys.argv[1])
if sys.argv[2] == "quit":
    call("quit")
    sys.exit(0)
dst = session(sys.argv[4])
call("migrate", uri=sys.argv[3])
while True:
    r = call("query-migrate")["return"]
    if r.get("status") == "completed":
        for _ in range(200):
            if "RESUME" in dst.events:
                break
            dst("query-status")
            time.sleep(0.05)
        resumed = dst.events.get("RESUME", 0) - call.events.get("STOP", 0)
        print("total %.3f downtime %.3f resumed %.3f" % (r["total-time"] / 1000.0, r.get("downtime", 0) / 1000.0, resumed))
        break
    if r.get("status") in ("failed", "cancelled"):
        print("failed", r, file=sys.stderr)
        sys.exit(1)
    time.sleep(0.05)
