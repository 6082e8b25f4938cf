"""N agents connect to a TLS endpoint at the same moment, as a new user's client would: Python's
own TLS stack, one attempt each, no retry. Each completes the handshake, says HELLO, and
exchanges one PING; all stay connected until every one has finished, then the outcome is
printed as JSON: {"ok": n, "errors": {"<error>": count}, "slowest_seconds": s}.

usage: burst.py HOST PORT CA_FILE N
"""
import json
import socket
import ssl
import sys
import threading
import time

host, port, cafile, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
context = ssl.create_default_context(cafile=cafile)
start = threading.Barrier(n)
done = threading.Barrier(n)
outcomes = [None] * n


def agent(i):
    start.wait()
    began = time.monotonic()
    conn = None
    try:
        raw = socket.create_connection((host, port), timeout=10)
        conn = context.wrap_socket(raw, server_hostname="localhost")
        conn.sendall(b"HELLO burst-%d\nPING\n" % i)
        reply = b""
        while reply.count(b"\n") < 2:
            chunk = conn.recv(256)
            if not chunk:
                raise ConnectionError("closed before PONG")
            reply += chunk
        if not reply.split(b"\n")[1].startswith(b"PONG"):
            raise ValueError("unexpected reply %r" % reply)
        outcomes[i] = ("ok", time.monotonic() - began)
    except Exception as e:  # every failure is an outcome to report, never a crash
        outcomes[i] = (type(e).__name__ + ": " + str(e)[:80], time.monotonic() - began)
    done.wait()
    if conn is not None:
        conn.close()


threads = [threading.Thread(target=agent, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
errors = {}
for outcome, _ in outcomes:
    if outcome != "ok":
        errors[outcome] = errors.get(outcome, 0) + 1
print(json.dumps({
    "ok": sum(1 for o, _ in outcomes if o == "ok"),
    "errors": errors,
    "slowest_seconds": max(s for _, s in outcomes),
}))
