"""MQTT 5 agents, as a presence fleet runs them: the paho-mqtt client (Eclipse's, from PyPI),
each connecting over TLS with a Last Will on its own presence topic (Will Delay Interval
WILL_DELAY s, a session that outlives a short disconnection), reconnecting by itself after any
disconnect. An observer connects straight to the broker and counts every will it publishes.

Driven over stdin/stdout, one JSON object a line:
  prints {"connected": N} once all N agents are connected;
  on a line "report": prints {"connected": c, "disconnects": {"<reason code>": count},
  "agents_hinted": h, "server_references": {"<Server Reference>": count}, "wills": w,
  "connects": k} and exits.

usage: mqtt_agents.py SIDECAR_HOST SIDECAR_PORT CA_FILE BROKER_HOST BROKER_PORT N WILL_DELAY
"""
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
broker_host, broker_port = sys.argv[4], int(sys.argv[5])
n, will_delay = int(sys.argv[6]), int(sys.argv[7])
USE_ANOTHER_SERVER = 0x9C

lock = threading.Lock()
connected = set()
disconnects = {}  # reason code -> count
hinted = set()  # agents that received DISCONNECT 0x9C
server_references = {}  # Server Reference property of a DISCONNECT -> count
connects = [0]
wills = [0]


def agent(i):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="agent-%d" % i,
                         protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=cafile)
    will = Properties(PacketTypes.WILLMESSAGE)
    will.WillDelayInterval = will_delay
    client.will_set("presence/agent-%d" % i, b"offline", qos=1, properties=will)
    client.reconnect_delay_set(min_delay=1, max_delay=2)

    def on_connect(c, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            with lock:
                connected.add(i)
                connects[0] += 1

    def on_disconnect(c, userdata, flags, reason_code, properties):
        with lock:
            connected.discard(i)
            code = reason_code.value
            disconnects[str(code)] = disconnects.get(str(code), 0) + 1
            if code == USE_ANOTHER_SERVER:
                hinted.add(i)
            reference = getattr(properties, "ServerReference", None)
            if reference is not None:
                server_references[reference] = server_references.get(reference, 0) + 1

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    session = Properties(PacketTypes.CONNECT)
    session.SessionExpiryInterval = 4 * will_delay  # the session outlives the will's delay
    client.connect_async(host, port, keepalive=60, clean_start=False, properties=session)
    client.loop_start()
    return client


def on_will(c, userdata, message):
    with lock:
        wills[0] += 1


observer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="observer",
                       protocol=mqtt.MQTTv5)
observer.on_message = on_will
observer.on_connect = lambda c, u, f, rc, p: c.subscribe("presence/#", qos=1)
observer.connect(broker_host, broker_port)
observer.loop_start()

agents = [agent(i) for i in range(n)]
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    with lock:
        if len(connected) == n:
            break
    time.sleep(0.05)
with lock:
    print(json.dumps({"connected": len(connected)}), flush=True)

for line in sys.stdin:
    if line.strip() == "report":
        break
with lock:
    print(json.dumps({
        "connected": len(connected),
        "disconnects": disconnects,
        "agents_hinted": len(hinted),
        "server_references": server_references,
        "wills": wills[0],
        "connects": connects[0],
    }), flush=True)
for client in agents:
    client.disconnect()
    client.loop_stop()
observer.loop_stop()
