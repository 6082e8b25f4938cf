#!/usr/bin/env python3
"""Renewal latency, as an agent would see it: the time from the act that publishes a new
certificate to the first fresh TLS handshake that presents it.

The act is the last, atomic step only, taken by this process so that no process start is
timed: the kubelet's rename of `..data` over the Secret volume (`--rename TMP DATA`), or a
reload signal to a proxy whose files were already replaced (`--signal PID NAME`). Then it
handshakes with the proxy back to back (Python's TLS stack, one connection at a time) until
the leaf's SHA-256 is `--sha256`, and prints the milliseconds. Used by bench-proxies.sh for
every proxy alike; it measures, it judges nothing.
"""

import argparse
import hashlib
import os
import signal
import socket
import ssl
import sys
import time


def served_sha256(host, port, context):
    with socket.create_connection((host, port), timeout=2) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", required=True, help="host:port of the proxy")
    parser.add_argument("--sha256", required=True, help="the new leaf's SHA-256 (hex)")
    act = parser.add_mutually_exclusive_group(required=True)
    act.add_argument("--rename", nargs=2, metavar=("TMP", "DATA"))
    act.add_argument("--signal", nargs=2, metavar=("PID", "NAME"))
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    host, port = args.connect.rsplit(":", 1)
    want = args.sha256.lower()
    # Only the fingerprint matters here; the proxies' chains are checked elsewhere.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    started = time.monotonic()
    if args.rename:
        os.rename(*args.rename)
    else:
        os.kill(int(args.signal[0]), getattr(signal, "SIG" + args.signal[1]))
    probes = 0
    while True:
        probes += 1
        try:
            if served_sha256(host, int(port), context) == want:
                break
        except OSError:
            pass  # a proxy between its old and new process refuses for a moment
        if time.monotonic() - started > args.timeout:
            print("the new certificate was never served", file=sys.stderr)
            sys.exit(1)
    elapsed = time.monotonic() - started
    print("%.0f %d" % (elapsed * 1000, probes))


if __name__ == "__main__":
    main()
