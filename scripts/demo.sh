#!/usr/bin/env bash
# The main job: Ballast on a real Kubernetes control plane, on this machine.
#
#  1. builds the workspace and (cached after the first run) the control plane from the Go
#     module proxy — kube-apiserver, controller-manager, scheduler, etcd, helm, cert-manager;
#  2. starts it with the process kubelet (pods run as local processes, see e2e/README.md);
#  3. installs the operator with helm, applies examples/ (cert-manager CA + Certificate +
#     PresenceCluster), waits for the gateways;
#  4. connects AGENTS TLS agents through the Service and shows connections per pod live;
#  5. renews the certificate through cert-manager halfway — agents stay connected;
#  6. stops and cleans up everything it started (also on Ctrl-C or failure).
#
# Usage: scripts/demo.sh [AGENTS]   (default 1000; BALLAST_DEMO_SECONDS sets the agents' run, default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
AGENTS=${1:-1000}
RUN_SECONDS=${BALLAST_DEMO_SECONDS:-60}
export BALLAST_E2E_DIR=${BALLAST_E2E_DIR:-${TMPDIR:-/tmp}/ballast-demo}
say() { printf '\033[1m[demo %s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
KUBELET_PID=""; FLEET_PID=""
cleanup() {
  set +e
  [ -n "$FLEET_PID" ] && kill "$FLEET_PID" 2>/dev/null && wait "$FLEET_PID" 2>/dev/null
  if [ -n "$KUBELET_PID" ]; then
    say "stopping the kubelet (its pods' processes end with it)…"
    kill -TERM "$KUBELET_PID" 2>/dev/null; wait "$KUBELET_PID" 2>/dev/null
  fi
  [ -f "$BALLAST_E2E_DIR/pids" ] && say "stopping the control plane…" && e2e/control-plane/down.sh >/dev/null
  say "cleaned up"
}
trap cleanup EXIT

scripts/ensure-tools.sh
say "building ballast (sidecar, fleet, operator, e2e kubelet); the first build takes a few minutes…"
cargo build -q -p ballast-sidecar -p ballast-fleet -p ballast-operator -p ballast-e2e
BIN=$ROOT/target/debug
say "control-plane binaries (built from the Go module proxy on first use, then cached)…"
e2e/control-plane/build.sh
TOOLS=$(e2e/control-plane/build.sh --print-bin-dir)
export PATH="$TOOLS:$PATH"

say "starting the control plane in $BALLAST_E2E_DIR…"
e2e/control-plane/up.sh
export KUBECONFIG=$BALLAST_E2E_DIR/kubeconfig
mkdir -p "$BALLAST_E2E_DIR/kubelet"
"$BIN/ballast-e2e" kubelet --kubeconfig "$KUBECONFIG" --node demo-node \
  --state-dir "$BALLAST_E2E_DIR/kubelet" --bin-dir "$BIN" 2>"$BALLAST_E2E_DIR/kubelet.log" &
KUBELET_PID=$!
kubectl wait --for=condition=Ready node/demo-node --timeout=60s >/dev/null

say "helm install ballast (operator under its own ServiceAccount and least-privilege RBAC)…"
helm install ballast charts/ballast -n ballast-system --create-namespace \
  --set bindPodIP=true --set resync=2s --wait --timeout 120s >/dev/null
kubectl -n ballast-system get deploy ballast

say "kubectl apply -f examples/ (cert-manager CA, Certificate agents-tls, PresenceCluster edge)…"
kubectl apply -f examples/namespace.yaml -f examples/issuer.yaml -f examples/certificate.yaml >/dev/null
kubectl -n presence wait --for=condition=Ready certificate/agents-tls --timeout=60s >/dev/null
kubectl apply -f examples/presencecluster.yaml >/dev/null
kubectl -n presence wait --for=condition=Ready prc/edge --timeout=120s >/dev/null
kubectl -n presence get prc,pods -o wide

TARGETS=$("$BIN/ballast-e2e" endpoints --kubeconfig "$KUBECONFIG" --namespace presence --service edge --port tls)
kubectl -n presence get secret agents-tls -o jsonpath='{.data.ca\.crt}' | base64 -d > "$BALLAST_E2E_DIR/agents-ca.crt"
say "$AGENTS agents → Service edge ($TARGETS) for ${RUN_SECONDS}s; the progress line shows connections per pod:"
"$BIN/ballast-fleet" agents --target "$TARGETS" --agents "$AGENTS" --ramp 5s --heartbeat 1s \
  --offline-threshold 60s --duration "${RUN_SECONDS}s" --ca "$BALLAST_E2E_DIR/agents-ca.crt" \
  >"$BALLAST_E2E_DIR/summary.json" &
FLEET_PID=$!

sleep $(( RUN_SECONDS / 3 ))
kubectl -n presence get prc edge
say "certificate renewal through cert-manager (new private key): sidecars hot-reload, nobody is dropped…"
kubectl -n presence patch certificate agents-tls --type merge \
  -p '{"spec":{"dnsNames":["localhost","presence.example.com","renewed.example.com"]}}' >/dev/null
sleep $(( RUN_SECONDS / 3 ))
kubectl -n presence get prc edge
kubectl -n presence get prc edge -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}){"\n"}{end}'

wait "$FLEET_PID" || true; FLEET_PID=""
say "fleet summary:"
python3 - "$BALLAST_E2E_DIR/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for k in ["agents", "connected_at_end", "disconnects", "graceful_closes", "abrupt_closes",
          "false_offline", "longest_gap_seconds", "handshake_failures", "server_cert_sha256"]:
    print(f"  {k:22} {s[k]}")
print(f"  {'heartbeat_rtt_ms p99':22} {s['heartbeat_rtt_ms']['p99']}")
PY
