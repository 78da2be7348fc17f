#!/usr/bin/env python3
"""qmp.py SOCKET migrate URI: starts QEMU's migration to URI over QMP, waits for it to end and prints
'total SECONDS downtime SECONDS' from query-migrate (exit 1 if it failed). qmp.py SOCKET quit: ends QEMU."""
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
    def call(cmd, **args):
        f.write(json.dumps({"execute": cmd, "arguments": args} if args else {"execute": cmd}) + "\n")
        f.flush()
        while True:
            r = json.loads(f.readline())
            if "return" in r or "error" in r:
                return r
    call("qmp_capabilities")
    return call

call = session(sys.argv[1])
if sys.argv[2] == "quit":
    call("quit")
    sys.exit(0)
call("migrate", uri=sys.argv[3])
while True:
    r = call("query-migrate")["return"]
    if r.get("status") == "completed":
        print("total %.3f downtime %.3f" % (r["total-time"] / 1000.0, r.get("downtime", 0) / 1000.0))
        break
    if r.get("status") in ("failed", "cancelled"):
        print("failed", r, file=sys.stderr)
        sys.exit(1)
    time.sleep(0.05)
