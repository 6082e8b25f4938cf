#!/usr/bin/env bash
# The local demo: two gateway "pods" (sample gateway + ballast-sidecar each, on their own
# loopback address), an agent fleet across both, then the two events from INCIDENT.md:
# a certificate renewal (written the way the kubelet updates a mounted Secret) and a planned
# restart of one pod (SIGTERM: lame duck, paced drain). It ends with the fleet's verdict.
#
# Usage: scripts/demo.sh [AGENTS]   (default 2000; BALLAST_DEMO_SECONDS sets the length, default 40)
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${1:-2000}
SECONDS_TOTAL=${BALLAST_DEMO_SECONDS:-40}
BALLAST_SCRIPT=demo source scripts/lib.sh
say() { printf '\033[1m[demo %s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

say "building release binaries (first run compiles dependencies: a few minutes)…"
cargo build --release -q -p ballast-sidecar -p ballast-fleet
BIN=target/release

"$BIN/ballast-fleet" certs --out "$WORK/pki-1" 2>/dev/null
secret_init "$WORK/pki-1"

start_pod() { # $1 = pod index
  local ip="127.0.10.$(( $1 + 1 ))"
  "$BIN/ballast-fleet" gateway --listen "$ip:8080" --name "pod-$1" 2>"$WORK/gateway-$1.log" &
  PIDS+=($!)
  GATEWAY_PID[$1]=$!
  "$BIN/ballast-sidecar" --listen "$ip:8443" --upstream "$ip:8080" --admin "$ip:9901" \
    --cert "$WORK/secret/tls.crt" --key "$WORK/secret/tls.key" --shutdown-drain 10s \
    2>"$WORK/sidecar-$1.log" &
  PIDS+=($!)
  SIDECAR_PID[$1]=$!
  for _ in $(seq 100); do curl -sf "http://$ip:9901/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "pod-$1 did not become ready; its log:" >&2; cat "$WORK/sidecar-$1.log" >&2; exit 1
}
declare -a SIDECAR_PID GATEWAY_PID
start_pod 0; start_pod 1
say "2 pods ready (127.0.10.1 and 127.0.10.2). Starting $AGENTS agents for ${SECONDS_TOTAL}s…"

"$BIN/ballast-fleet" agents --target 127.0.10.1:8443,127.0.10.2:8443 --agents "$AGENTS" \
  --ramp 5s --heartbeat 1s --offline-threshold 60s --duration "${SECONDS_TOTAL}s" \
  --ca "$WORK/pki-1/ca.crt" >"$WORK/summary.json" &
FLEET=$!; PIDS+=($FLEET)

sleep 10
say "certificate renewal: publishing a new tls.crt/tls.key the kubelet way (atomic ..data swap)"
# Re-issued under the same CA, as cert-manager renews: agents keep their trust anchor.
"$BIN/ballast-fleet" certs --out "$WORK/pki-3" --ca-dir "$WORK/pki-1" 2>/dev/null
secret_update "$WORK/pki-3"
sleep 2
show_pods() {
  for i in "$@"; do
    curl -s "http://127.0.10.$((i+1)):9901/status" | python3 -c '
import json, sys
s = json.load(sys.stdin); c = s["certificate"]
print("  pod-%s: serving sha256 %s… (generation %d), %d connections, %d on the older certificate, last_error=%s"
      % (sys.argv[1], c["sha256"][:16], c["generation"], s["connections"], c["connections_on_older"], c["last_error"]))' "$i" >&2
  done
}
show_pods 0 1

sleep 8
say "planned restart of pod-0: SIGTERM → readiness fails, connections drained over 10s, exit 0"
kill -TERM "${SIDECAR_PID[0]}"
wait "${SIDECAR_PID[0]}" && say "pod-0 sidecar exited 0 after draining" || say "pod-0 sidecar exit code $?"
# Without a Service in front (no cluster here), agents still pick the stopped pod at random and
# back off until it returns; in Kubernetes its endpoint is removed when readiness fails.
kill "${GATEWAY_PID[0]}"; wait "${GATEWAY_PID[0]}" 2>/dev/null || true
say "pod-0 restarted (new sidecar + gateway); it starts empty — rebalancing it is the operator's job"
start_pod 0

wait "$FLEET" || true
say "fleet summary (false_offline is the figure INCIDENT.md was about):"
python3 - "$WORK/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
keys = ["agents", "connected_at_end", "disconnects", "graceful_closes", "abrupt_closes",
        "reconnects", "false_offline", "longest_gap_seconds", "handshake_failures"]
for k in keys:
    print(f"  {k:22} {s[k]}")
print(f"  {'heartbeat_rtt_ms p99':22} {s['heartbeat_rtt_ms']['p99']}")
print(f"  {'distribution at end':22} {s['distribution'][-1]['per_target'] if s['distribution'] else {}}")
PY
