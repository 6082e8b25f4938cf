#!/usr/bin/env bash
# The main job: Ballast on a real Kubernetes control plane, on this machine.
#
#  1. builds the workspace and (cached after the first run) the control plane from the Go
#     module proxy — kube-apiserver, controller-manager, scheduler, etcd, helm, cert-manager;
#  2. starts it with the process kubelet (pods run as local processes, see e2e/README.md);
#  3. installs the operator with helm, applies examples/ (cert-manager CA + Certificate +
#     PresenceCluster), waits for the gateways;
#  4. connects AGENTS TLS agents through the Service and shows connections per pod live;
#  5. renews the certificate through cert-manager — the sidecars hot-reload, nobody is dropped;
#  6. switches the rotation to RollingRestart, which rolls every pod: steered away, drained
#     within the budget, evicted, replaced, refilled — with the live per-pod counts, the
#     PresenceCluster's status and its Events as a person would watch them;
#  7. ends with a summary: agents disconnected, the longest gap, time until the fleet was
#     balanced again; then stops and cleans up everything it started (also on Ctrl-C).
#
# Usage: scripts/demo.sh [AGENTS]   (default 1000; BALLAST_DEMO_SECONDS bounds the agents' run, default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
AGENTS=${1:-1000}
RUN_SECONDS=${BALLAST_DEMO_SECONDS:-300}
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
# The process kubelet has no Service proxy: the operator's report channel listens on one
# loopback address of the pod network that every sidecar reaches (see e2e/README.md).
REPORT=127.1.250.1:9443
helm install ballast charts/ballast -n ballast-system --create-namespace \
  --set bindPodIP=true --set resync=2s --set report.listen=$REPORT --set report.address=$REPORT \
  --wait --timeout 120s >/dev/null
kubectl -n ballast-system get deploy ballast

say "kubectl apply -f examples/ (cert-manager CA, Certificate agents-tls, PresenceCluster edge)…"
# In the order cert-manager can issue them, each waited for: the CA (its Secret), the Issuer
# that signs with it, then the gateways' certificate.
cm_wait() {
  kubectl -n presence wait --for=condition=Ready "$1" --timeout=90s >/dev/null || {
    kubectl -n presence describe "$1" >&2
    echo "--- cert-manager's log:" >&2
    tail -n 40 "$BALLAST_E2E_DIR/logs/cert-manager.log" >&2 || true
    exit 1
  }
}
kubectl apply -f examples/namespace.yaml -f examples/ca.yaml >/dev/null
cm_wait certificate/presence-ca
kubectl apply -f examples/issuer.yaml >/dev/null
cm_wait issuer/presence-ca
kubectl apply -f examples/certificate.yaml >/dev/null
cm_wait certificate/agents-tls
kubectl apply -f examples/presencecluster.yaml >/dev/null
kubectl -n presence wait --for=condition=Ready prc/edge --timeout=120s >/dev/null
kubectl -n presence get prc,pods -o wide

kubectl -n presence get secret agents-tls -o jsonpath='{.data.ca\.crt}' | base64 -d > "$BALLAST_E2E_DIR/agents-ca.crt"
say "$AGENTS agents → Service edge, following its ready endpoints as kube-proxy would; the progress line shows connections per pod:"
"$BIN/ballast-e2e" agents --kubeconfig "$KUBECONFIG" --namespace presence --service edge --port tls \
  --agents "$AGENTS" --ramp 5s --duration "${RUN_SECONDS}s" --ca "$BALLAST_E2E_DIR/agents-ca.crt" \
  >"$BALLAST_E2E_DIR/summary.json" &
FLEET_PID=$!
FLEET_START=$(date +%s)

sleep 20
kubectl -n presence get prc edge
say "certificate renewal through cert-manager (new private key): sidecars hot-reload, nobody is dropped…"
kubectl -n presence patch certificate agents-tls --type merge \
  -p '{"spec":{"dnsNames":["localhost","presence.example.com","renewed.example.com"]}}' >/dev/null
sleep 15
kubectl -n presence get prc edge
kubectl -n presence get prc edge -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}){"\n"}{end}'

say "a presence backend follows each pod's lifecycle events (GET /events, token from Secret edge-events-token)…"
EVENTS_TOKEN=$(kubectl -n presence get secret edge-events-token -o jsonpath='{.data.token}' | base64 -d)
for ip in $(kubectl -n presence get pods -l ballast.dev/presencecluster=edge -o jsonpath='{.items[*].status.podIP}'); do
  # Each stream ends when its pod's sidecar exits after the roll drained it.
  curl -sN --max-time 300 -H "Authorization: Bearer $EVENTS_TOKEN" "http://$ip:9901/events" \
    >"$BALLAST_E2E_DIR/events-$ip.ndjson" 2>/dev/null &
done
say "rotation strategy → RollingRestart: the gateways restart, one pod at a time, drained first…"
ROLL_AT=$(( $(date +%s) - FLEET_START ))
OLD_UIDS=$(kubectl -n presence get pods -l ballast.dev/presencecluster=edge -o jsonpath='{.items[*].metadata.uid}')
kubectl -n presence patch prc edge --type merge \
  -p '{"spec":{"tls":{"rotation":{"strategy":"RollingRestart"}}}}' >/dev/null
rolled=""
for _ in $(seq 1 60); do
  sleep 3
  kubectl -n presence get prc edge --no-headers
  waiting=$(kubectl -n presence get prc edge -o jsonpath='{.status.waiting}')
  [ -n "$waiting" ] && echo "    waiting: $waiting"
  uids=$(kubectl -n presence get pods -l ballast.dev/presencecluster=edge -o jsonpath='{.items[*].metadata.uid}')
  phase=$(kubectl -n presence get prc edge -o jsonpath='{.status.phase}')
  replaced=1
  for u in $uids; do case " $OLD_UIDS " in *" $u "*) replaced="";; esac; done
  if [ -n "$replaced" ] && [ "$phase" = Stable ]; then rolled=1; break; fi
done
[ -n "$rolled" ] || say "the roll did not finish within 3 minutes; see the Events below"
say "Events the operator wrote:"
kubectl -n presence get events.v1.events.k8s.io --sort-by=.metadata.creationTimestamp \
  -o custom-columns=REASON:.reason,OBJECT:.regarding.name,POD:.related.name,NOTE:.note 2>/dev/null \
  | grep -E "^(REASON|PodRestarted|RestartRefused|MigrationStarted|MigrationFinished|Waiting|CannotProceed|RenewalsAligned) " \
  | tail -15
sleep 10
kubectl -n presence get prc edge
kill -INT "$FLEET_PID" 2>/dev/null || true
wait "$FLEET_PID" || true; FLEET_PID=""
say "summary:"
REPLICAS=$(kubectl -n presence get prc edge -o jsonpath='{.spec.replicas}')
python3 - "$BALLAST_E2E_DIR"/events-*.ndjson <<'PY'
import collections, json, sys
causes, connected, gaps = collections.Counter(), 0, 0
for path in sys.argv[1:]:
    for line in open(path):
        e = json.loads(line)
        if e["event"] == "disconnected":
            causes[e["cause"]] += 1
        elif e["event"] == "connected":
            connected += 1
        elif e["event"] == "gap":
            gaps += e["missed"]
planned = causes.pop("planned", 0)
other = ", ".join(f"{n} {cause}" for cause, n in causes.items()) or "none"
print(f"  presence backend       the {len(sys.argv) - 1} original pods' event streams: {planned} planned disconnects"
      f" (each saying when the agent is expected back), other disconnects: {other}; {connected} connects; {gaps} events missed")
PY
python3 - "$BALLAST_E2E_DIR/summary.json" "$ROLL_AT" "$REPLICAS" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
roll_at, replicas = float(sys.argv[2]), int(sys.argv[3])
print(f"  agents                 {s['agents']}, connected at the end {s['connected_at_end']}")
print(f"  disconnected           {s['disconnects']} times ({s['graceful_closes']} planned with close_notify, {s['abrupt_closes']} abrupt)")
print(f"  longest gap            {s['longest_gap_seconds']:.2f} s (an agent offline longer than 60 s: {s['false_offline']})")
print(f"  heartbeat p99          {s['heartbeat_rtt_ms']['p99']} ms")
# Balanced: every pod holds agents, each within 10 % of the mean; the time from the roll's
# start until the fleet was balanced for good (sampled every second).
def balanced(per_target):
    c = [n for n in per_target.values() if n > 0]
    mean = sum(c) / replicas
    return len(c) == replicas and all(abs(x - mean) <= 0.1 * mean for x in c)
unbalanced = [d["at_seconds"] for d in s["distribution"]
              if d["at_seconds"] >= roll_at and not balanced(d["per_target"])]
if unbalanced:
    print(f"  balanced again         {unbalanced[-1] + 1 - roll_at:.0f} s after the roll began")
else:
    print("  balanced again         throughout")
PY
