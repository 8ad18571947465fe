"""An independent client: the `varlink` package from PyPI talks to
connectracerd's control socket, parsing the interface description the
daemon serves. Prints one JSON line per step for the Rust test to check."""
import json
import sys

import varlink

with varlink.Client(address="unix:" + sys.argv[1]) as client:
    print(json.dumps({"interfaces": client.get_interfaces()}), flush=True)
    with client.open("org.connectracer.Tracer", namespaced=True) as tracer:
        print(json.dumps({"version": tracer.GetVersion().version}), flush=True)
        print(json.dumps({"connections": len(tracer.Connections().connections)}), flush=True)
        for reply in tracer.Watch(_more=True):
            print(json.dumps({"event": reply.event, "pid": reply.connection.process.pid}), flush=True)
            break
