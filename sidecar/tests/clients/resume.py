"""An agent that moves and resumes, as a real client would: Python's own TLS stack (OpenSSL).
It connects to FIRST with a fresh handshake, exchanges one PING (which also delivers the TLS 1.3
session ticket), closes, then connects to each of TRY... offering that session. For every
connection it prints one JSON object per line:
{"to": "host:port", "resumed": bool, "sha256": "<leaf fingerprint or null>", "pong": bool}.
The leaf's fingerprint is read only from a full handshake (a resumed one shows no certificate).

usage: resume.py CA_FILE FIRST TRY [TRY...]      (addresses as host:port)
"""
import hashlib
import json
import socket
import ssl
import sys

cafile, first, tries = sys.argv[1], sys.argv[2], sys.argv[3:]
context = ssl.create_default_context(cafile=cafile)


def connect(address, session=None):
    host, port = address.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10)
    conn = context.wrap_socket(raw, server_hostname="localhost", session=session)
    conn.sendall(b"HELLO resume\nPING\n")
    reply = b""
    while reply.count(b"\n") < 2:
        chunk = conn.recv(256)
        if not chunk:
            break
        reply += chunk
    lines = reply.split(b"\n")
    pong = len(lines) > 1 and lines[1].startswith(b"PONG")
    der = None if conn.session_reused else conn.getpeercert(binary_form=True)
    outcome = {
        "to": address,
        "resumed": conn.session_reused,
        "sha256": hashlib.sha256(der).hexdigest() if der else None,
        "pong": pong,
    }
    session = conn.session
    conn.close()
    return outcome, session


outcome, session = connect(first)
print(json.dumps(outcome), flush=True)
for address in tries:
    outcome, _ = connect(address, session)
    print(json.dumps(outcome), flush=True)
