#!/usr/bin/env bash
# Installs what the tests and benchmarks need beyond the Rust toolchain, from Debian's
# packages, only when missing. Safe to run again.
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
# The process kubelet runs non-root containers through setpriv, and mounts through unshare.
command -v setpriv >/dev/null || need+=(util-linux)
command -v unshare >/dev/null || need+=(util-linux)
# The MQTT reconnect-hint test runs a real broker (Debian's mosquitto: where policy-rc.d forbids
# it, as on this image, no service starts; the test starts its own broker on a free port).
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || need+=(mosquitto)
if [ "${1:-}" = "--bench" ]; then
  command -v haproxy >/dev/null || need+=(haproxy)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "[tools] installing ${need[*]} from Debian packages…" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Real clients for the reconnect-hint tests, into the python3 the tests run, from PyPI:
# Eclipse paho-mqtt (MQTT 5) and websockets (a WebSocket server and its clients).
pip_need=()
python3 -c 'import paho.mqtt.client' 2>/dev/null || pip_need+=("paho-mqtt==2.2.0")
python3 -c 'import websockets.asyncio.server' 2>/dev/null || pip_need+=("websockets==15.0.1")
if [ ${#pip_need[@]} -gt 0 ]; then
  echo "[tools] installing ${pip_need[*]} from PyPI…" >&2
  python3 -m pip install -q "${pip_need[@]}" 2>/dev/null \
    || python3 -m pip install -q --break-system-packages "${pip_need[@]}"
fi
echo "[tools] ok: openssl curl python3 setpriv unshare mosquitto paho-mqtt websockets${1:+ haproxy}" >&2
