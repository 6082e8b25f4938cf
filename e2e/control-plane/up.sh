#!/usr/bin/env bash
# Bring up a real single-node-less Kubernetes control plane as local processes:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and cert-manager's controller
# (with its CRDs), all listening on 127.0.0.1 only. No kubelet/Node exists.
#
# usage: up.sh          then: export KUBECONFIG=<state dir>/kubeconfig ; e2e/control-plane/down.sh
#
# Environment (all optional):
#   BALLAST_E2E_DIR            state dir (certs, kubeconfigs, data, logs, pids)   [/tmp/ballast-e2e]
#   BALLAST_ETCD_CLIENT_PORT   etcd client port on 127.0.0.1                     [23790]
#   BALLAST_ETCD_PEER_PORT     etcd peer port on 127.0.0.1                       [23800]
#   BALLAST_APISERVER_PORT     kube-apiserver secure port on 127.0.0.1           [26443]
#   BALLAST_KCM_PORT           kube-controller-manager secure port on 127.0.0.1  [26257]
#   BALLAST_SCHEDULER_PORT     kube-scheduler secure port on 127.0.0.1           [26259]
#   BALLAST_CERT_MANAGER=0     do not start cert-manager (nor apply its CRDs)    [1]
#   BALLAST_CACHE              build cache root (see build.sh)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/versions.env"

STATE=${BALLAST_E2E_DIR:-/tmp/ballast-e2e}
ETCD_CLIENT_PORT=${BALLAST_ETCD_CLIENT_PORT:-23790}
ETCD_PEER_PORT=${BALLAST_ETCD_PEER_PORT:-23800}
APISERVER_PORT=${BALLAST_APISERVER_PORT:-26443}
KCM_PORT=${BALLAST_KCM_PORT:-26257}
SCHEDULER_PORT=${BALLAST_SCHEDULER_PORT:-26259}
WITH_CERT_MANAGER=${BALLAST_CERT_MANAGER:-1}
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1 # first IP of SERVICE_CIDR: only ever a certificate SAN, never dialled
SA_ISSUER=https://kubernetes.default.svc.cluster.local
MARKER=.ballast-e2e-state

T0=$SECONDS
log() { printf '[up %3ds] %s\n' $((SECONDS - T0)) "$*"; }

# ------------------------------------------------------------------ refuse if already up
if [[ -e $STATE ]]; then
  if [[ -f $STATE/pids ]]; then
    live=()
    while read -r name pid exe; do
      [[ -n ${pid:-} ]] || continue
      if [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$exe" ]]; then live+=("$name=$pid"); fi
    done <"$STATE/pids"
    if ((${#live[@]})); then
      echo "[up] ERROR: a cluster is already up in $STATE (running: ${live[*]})." >&2
      echo "[up]        Use it (export KUBECONFIG=$STATE/kubeconfig) or stop it first: $HERE/down.sh" >&2
      exit 1
    fi
  fi
  if [[ -f $STATE/$MARKER ]]; then
    log "removing stale state dir $STATE (no recorded process is running)"
    rm -rf "$STATE"
  elif [[ -n $(ls -A "$STATE" 2>/dev/null) ]]; then
    echo "[up] ERROR: $STATE exists, is not empty and is not a Ballast e2e state dir; refusing to use it." >&2
    exit 1
  fi
fi

# ------------------------------------------------------------------ ports must be free
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$KCM_PORT" "$SCHEDULER_PORT"; do
  if port_busy "$p"; then
    echo "[up] ERROR: 127.0.0.1:$p is already in use; pick other ports (BALLAST_*_PORT, see $0 header)." >&2
    exit 1
  fi
done

# ------------------------------------------------------------------ binaries
if ! "$HERE/build.sh" | sed 's/^/  /'; then
  echo "[up] ERROR: build.sh failed (see above)" >&2
  exit 1
fi
BIN=$("$HERE/build.sh" --print-bin-dir)
CRDS=$("$HERE/build.sh" --print-crds)
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl cert-manager-controller; do
  [[ -x $BIN/$b ]] || { echo "[up] ERROR: $BIN/$b missing after build.sh" >&2; exit 1; }
done

mkdir -p "$STATE"/{pki,logs}
mkdir -m 700 "$STATE/etcd"
touch "$STATE/$MARKER"
: >"$STATE/pids"
chmod 700 "$STATE"

# Any failure after this point (set -e, fail, Ctrl-C) ends in on_exit, which prints the
# component logs' tails and runs down.sh.
UP_OK=0
fail() { echo "[up] ERROR: $*" >&2; exit 1; }
on_exit() {
  local rc=$?
  [[ $UP_OK == 1 ]] && return 0
  echo "[up] ERROR: startup failed (exit $rc); bringing everything down." >&2
  local f
  for f in "$STATE"/logs/*.log; do
    [[ -s $f ]] || continue
    echo "----- last lines of $f" >&2
    tail -n 15 "$f" >&2
  done
  if [[ ${BALLAST_KEEP_ON_FAILURE:-0} == 1 ]]; then
    echo "[up] BALLAST_KEEP_ON_FAILURE=1: leaving $STATE and processes for inspection (down.sh cleans up)" >&2
  else
    "$HERE/down.sh" >&2 || true
  fi
}
trap on_exit EXIT
trap 'fail "interrupted"' INT TERM

# ------------------------------------------------------------------ PKI (openssl)
log "generating PKI in $STATE/pki"
PKI=$STATE/pki
cd "$PKI"
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }
# mkca NAME CN
mkca() {
  newkey "$1"
  openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 3650 -out "$1.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
}
# mkcert NAME CA SUBJECT EKU [SAN]
mkcert() {
  newkey "$1"
  local ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$4"
  [[ -n ${5:-} ]] && ext+="
subjectAltName=$5"
  openssl req -new -key "$1.key" -subj "$3" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -days 365 \
    -extfile <(printf '%s\n' "$ext") -out "$1.crt" 2>/dev/null
  rm -f "$1.csr"
}
mkca ca "ballast-e2e-ca"
mkca front-proxy-ca "ballast-e2e-front-proxy-ca"
mkcert apiserver ca "/CN=kube-apiserver" serverAuth \
  "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$SERVICE_IP"
mkcert admin ca "/O=system:masters/CN=kubernetes-admin" clientAuth
mkcert controller-manager ca "/CN=system:kube-controller-manager" clientAuth
mkcert scheduler ca "/CN=system:kube-scheduler" clientAuth
mkcert front-proxy-client front-proxy-ca "/CN=front-proxy-client" clientAuth
newkey sa
openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
chmod 600 ./*.key
cd - >/dev/null

b64() { base64 -w0 <"$1"; }
SERVER=https://127.0.0.1:$APISERVER_PORT
# kubeconfig FILE USER [CERT] | with TOKEN env for token auth
kubeconfig() {
  local file=$1 user=$2 cert=${3:-}
  {
    cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ballast-e2e
  cluster:
    server: $SERVER
    certificate-authority-data: $(b64 "$PKI/ca.crt")
contexts:
- name: $user@ballast-e2e
  context:
    cluster: ballast-e2e
    user: $user
current-context: $user@ballast-e2e
users:
- name: $user
  user:
EOF
    if [[ -n $cert ]]; then
      echo "    client-certificate-data: $(b64 "$PKI/$cert.crt")"
      echo "    client-key-data: $(b64 "$PKI/$cert.key")"
    else
      echo "    token: $TOKEN"
    fi
  } >"$file"
  chmod 600 "$file"
}
kubeconfig "$STATE/kubeconfig" kubernetes-admin admin
kubeconfig "$STATE/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
kubeconfig "$STATE/scheduler.kubeconfig" system:kube-scheduler scheduler
export KUBECONFIG=$STATE/kubeconfig
KUBECTL=$BIN/kubectl

# ------------------------------------------------------------------ process helpers
# start NAME BINARY ARGS... : run detached (own session), log to logs/NAME.log, record pid
start() {
  local name=$1 bin=$2; shift 2
  setsid "$bin" "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$name $pid $(readlink -f "$bin")" >>"$STATE/pids"
  eval "PID_${name//-/_}=$pid"
}
alive() { local v="PID_${1//-/_}"; kill -0 "${!v}" 2>/dev/null; }
# wait_for NAME TIMEOUT_S CMD... : poll CMD until it succeeds; fail if NAME died or timed out
wait_for() {
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    alive "$name" || fail "$name exited during startup (log: $STATE/logs/$name.log)"
    ((SECONDS < deadline)) || fail "$name not ready after ${timeout}s (log: $STATE/logs/$name.log)"
    sleep 0.2
  done
}
https_ok() { curl -sf --max-time 2 --cacert "$PKI/ca.crt" "$1"; }
https_ok_insecure() { curl -sfk --max-time 2 "$1"; } # kcm/scheduler serve self-signed certs

# ------------------------------------------------------------------ etcd
log "starting etcd $ETCD_VERSION on 127.0.0.1:$ETCD_CLIENT_PORT"
start etcd "$BIN/etcd" \
  --name=ballast-e2e \
  --data-dir="$STATE/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="ballast-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster-state=new \
  --unsafe-no-fsync=true \
  --log-level=warn
wait_for etcd 30 curl -sf --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health"

# ------------------------------------------------------------------ kube-apiserver
# --endpoint-reconciler-type=none: with --advertise-address=127.0.0.1 the default (lease)
# reconciler makes kube-apiserver exit with "cannot use public IP 127.0.0.1 with endpoint
# reconciler: ... may not be in the loopback range". The only effect is that the `kubernetes`
# Service in `default` has no Endpoints/EndpointSlice (nothing here dials 10.96.0.1 anyway).
log "starting kube-apiserver $KUBERNETES_VERSION on 127.0.0.1:$APISERVER_PORT"
start kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --bind-address=127.0.0.1 \
  --secure-port="$APISERVER_PORT" \
  --advertise-address=127.0.0.1 \
  --endpoint-reconciler-type=none \
  --tls-cert-file="$PKI/apiserver.crt" \
  --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --cert-dir="$STATE/apiserver" \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --service-account-issuer="$SA_ISSUER" \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --api-audiences="$SA_ISSUER" \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User \
  --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
  --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --profiling=false
wait_for kube-apiserver 90 https_ok "$SERVER/readyz"
log "kube-apiserver ready"

# ------------------------------------------------------------------ controller-manager, scheduler
# --controllers='*': every default controller. Kubernetes 1.37's kube-controller-manager no
# longer contains any cloud controllers (cloud-node-lifecycle/service-lb/node-route live in
# cloud-controller-manager), so there is nothing cloud-specific to subtract; naming one would
# be rejected as an unknown controller.
log "starting kube-controller-manager on 127.0.0.1:$KCM_PORT"
start kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$STATE/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$STATE/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$STATE/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="$KCM_PORT" \
  --cert-dir="$STATE/controller-manager" \
  --client-ca-file="$PKI/ca.crt" \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --root-ca-file="$PKI/ca.crt" \
  --service-account-private-key-file="$PKI/sa.key" \
  --use-service-account-credentials=true \
  --cluster-signing-cert-file="$PKI/ca.crt" \
  --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --allocate-node-cidrs=false \
  --flex-volume-plugin-dir="$STATE/controller-manager/flexvolume" \
  --controllers='*' \
  --leader-elect=false \
  --profiling=false

log "starting kube-scheduler on 127.0.0.1:$SCHEDULER_PORT"
start kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig="$STATE/scheduler.kubeconfig" \
  --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
  --authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="$SCHEDULER_PORT" \
  --cert-dir="$STATE/scheduler" \
  --leader-elect=false \
  --profiling=false

# ------------------------------------------------------------------ cert-manager
if [[ $WITH_CERT_MANAGER == 1 ]]; then
  log "applying cert-manager $CERT_MANAGER_VERSION CRDs"
  "$KUBECTL" apply --server-side --force-conflicts -f "$CRDS" >/dev/null
  "$KUBECTL" create namespace cert-manager >/dev/null
  # Identity + RBAC: the ServiceAccount and (Cluster)Roles/Bindings from cert-manager's own
  # Helm chart (shipped in the module), rendered by our helm.
  CHART=$(dirname "$CRDS")/../chart
  "$BIN/helm" template cert-manager "$CHART" --namespace cert-manager \
    --show-only templates/serviceaccount.yaml --show-only templates/rbac.yaml \
    | "$KUBECTL" apply -f - >/dev/null
  "$KUBECTL" wait --for condition=Established --timeout=60s \
    crd/certificates.cert-manager.io crd/certificaterequests.cert-manager.io crd/issuers.cert-manager.io \
    crd/clusterissuers.cert-manager.io crd/orders.acme.cert-manager.io crd/challenges.acme.cert-manager.io >/dev/null
  TOKEN=$("$KUBECTL" -n cert-manager create token cert-manager --duration=8760h)
  kubeconfig "$STATE/cert-manager.kubeconfig" system:serviceaccount:cert-manager:cert-manager
  unset TOKEN
  log "starting cert-manager controller $CERT_MANAGER_VERSION"
  start cert-manager "$BIN/cert-manager-controller" \
    --kubeconfig="$STATE/cert-manager.kubeconfig" \
    --leader-elect=false \
    --cluster-resource-namespace=cert-manager \
    --v=2
fi

# ------------------------------------------------------------------ readiness
wait_for kube-controller-manager 60 https_ok_insecure "https://127.0.0.1:$KCM_PORT/healthz"
log "kube-controller-manager healthy"
wait_for kube-scheduler 60 https_ok_insecure "https://127.0.0.1:$SCHEDULER_PORT/healthz"
log "kube-scheduler healthy"
if [[ $WITH_CERT_MANAGER == 1 ]]; then
  wait_for cert-manager 60 grep -q 'informer caches synced' "$STATE/logs/cert-manager.log"
  log "cert-manager controller running"
fi
# The default ServiceAccount is created by kube-controller-manager; wait so pods/tokens work.
wait_for kube-controller-manager 60 "$KUBECTL" -n default get serviceaccount default

UP_OK=1
trap - INT TERM
printf 'export KUBECONFIG=%q\nexport PATH=%q:"$PATH"\n' "$STATE/kubeconfig" "$BIN" >"$STATE/env"
log "control plane up in $((SECONDS - T0))s (state: $STATE, logs: $STATE/logs/)"
echo "# kubectl, helm, etcdctl: $BIN   (or: source $STATE/env)"
echo "export KUBECONFIG=$STATE/kubeconfig"
