"""A Sandbox call with a pidfd of any process, for the tests that check the
daemon refuses what is not the caller's child (tracectl only passes its
own). Usage: sandbox_call.py SANDBOX_SOCKET PID; prints the reply."""

import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
fd = os.pidfd_open(int(sys.argv[2]))
call = {"method": "org.connectracer.Tracer.Sandbox", "parameters": {"rules": []}, "more": True}
socket.send_fds(s, [json.dumps(call).encode() + b"\0"], [fd])
buf = b""
while not buf.endswith(b"\0"):
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
print(buf.rstrip(b"\0").decode())
