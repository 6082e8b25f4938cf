"""A WebSocket gateway and its agents, both from the `websockets` library (PyPI): the server
listens in plain text on GATEWAY_PORT (behind the sidecar) and streams numbered messages to each
connection every 10 ms; N clients connect through the sidecar with TLS (Python's own stack),
check that every message arrives whole and in order, and reconnect at once after a close with
code 1012 (service restart), or after a second for anything else.

Driven over stdin/stdout, one JSON object a line:
  prints {"connected": N} once all N agents are connected;
  on a line "report": waits (up to 10 s) for all N to be connected, prints {"connected": c, "closes": {"<code>": count}, "agents_hinted": h,
  "out_of_order": o, "errors": {"<error>": count}, "connects": k, "messages": m} and exits.

usage: ws_fleet.py GATEWAY_PORT SIDECAR_HOST SIDECAR_PORT CA_FILE N
"""
import asyncio
import json
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

gateway_port, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cafile, n = sys.argv[4], int(sys.argv[5])
SERVICE_RESTART = 1012
PAD = "x" * 100

connected, hinted = set(), set()
closes, errors = {}, {}
counts = {"connects": 0, "messages": 0, "out_of_order": 0}


async def stream(websocket):
    """The gateway: numbered messages every 10 ms until the connection ends."""
    seq = 0
    try:
        while True:
            await websocket.send("%d:%s" % (seq, PAD))
            seq += 1
            await asyncio.sleep(0.01)
    except ConnectionClosed:
        pass


async def agent(i, context):
    while True:
        code, failed = None, False
        try:
            async with connect("wss://%s:%d/presence" % (host, port), ssl=context,
                               server_hostname="localhost", open_timeout=10) as websocket:
                connected.add(i)
                counts["connects"] += 1
                expected = 0
                async for message in websocket:  # ends quietly on a clean close
                    seq, pad = message.split(":", 1)
                    if int(seq) != expected or pad != PAD:
                        counts["out_of_order"] += 1
                    expected = int(seq) + 1
                    counts["messages"] += 1
                rcvd = websocket.protocol.close_rcvd
                code = rcvd.code if rcvd is not None else None
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
        except Exception as e:  # every failure is an outcome to report, never a crash
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            failed = True
        if not failed:
            closes[str(code)] = closes.get(str(code), 0) + 1
        if code == SERVICE_RESTART:
            hinted.add(i)
        connected.discard(i)
        await asyncio.sleep(0 if code == SERVICE_RESTART else 1)


async def main():
    context = ssl.create_default_context(cafile=cafile)
    async with serve(stream, "127.0.0.1", gateway_port):
        tasks = [asyncio.create_task(agent(i, context)) for i in range(n)]
        for _ in range(600):
            if len(connected) == n:
                break
            await asyncio.sleep(0.1)
        print(json.dumps({"connected": len(connected)}), flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if line.strip() == "report":
                break
            if not line:  # the test went away: stop too
                return
        for _ in range(100):  # the sidecar may count a connection before its upgrade is done
            if len(connected) == n:
                break
            await asyncio.sleep(0.1)
        print(json.dumps({
            "connected": len(connected),
            "closes": closes,
            "agents_hinted": len(hinted),
            "out_of_order": counts["out_of_order"],
            "errors": errors,
            "connects": counts["connects"],
            "messages": counts["messages"],
        }), flush=True)
        for task in tasks:
            task.cancel()


asyncio.run(main())
