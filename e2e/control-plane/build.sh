#!/usr/bin/env bash
# Build (or reuse from cache) the Ballast e2e control-plane binaries from the Go module proxy:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#   etcd, etcdctl                                                     (go.etcd.io/etcd)
#   helm                                                              (helm.sh/helm/v3)
#   cert-manager-controller + cert-manager CRDs                       (github.com/cert-manager/cert-manager)
# Versions come from versions.env. Each component is built in its own generated consumer Go
# module under the cache dir, so their k8s.io/* versions never collide.
#
# usage: build.sh                 build whatever is missing, print progress and timings
#        build.sh --print-bin-dir  print the directory holding all binaries (no build)
#        build.sh --print-crds     print the path of the cert-manager CRD bundle (no build)
#        build.sh --print-cache    print the cache root (no build)
#        build.sh --force          rebuild everything
#
# Cache: ${BALLAST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ballast}/control-plane/<component>-<version>/
# Every Go command runs under `nice -n 19`, one at a time (a lock serialises concurrent build.sh).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$HERE/versions.env"

CACHE_ROOT="${BALLAST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ballast}/control-plane"
K8S_DIR="$CACHE_ROOT/kubernetes-$KUBERNETES_VERSION"
ETCD_DIR="$CACHE_ROOT/etcd-$ETCD_VERSION"
HELM_DIR="$CACHE_ROOT/helm-$HELM_VERSION"
CM_DIR="$CACHE_ROOT/cert-manager-$CERT_MANAGER_VERSION"
SET_DIR="$CACHE_ROOT/set/k8s-$KUBERNETES_VERSION.etcd-$ETCD_VERSION.helm-$HELM_VERSION.cm-$CERT_MANAGER_VERSION"
BIN_DIR="$SET_DIR/bin"
CRDS="$CM_DIR/crds/cert-manager.crds.yaml"

FORCE=0
case "${1:-}" in
  --print-bin-dir) echo "$BIN_DIR"; exit 0 ;;
  --print-crds) echo "$CRDS"; exit 0 ;;
  --print-cache) echo "$CACHE_ROOT"; exit 0 ;;
  --force) FORCE=1 ;;
  "") ;;
  -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
  *) echo "build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

log() { printf '[build] %s\n' "$*"; }
die() { printf '[build] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "go is not on PATH"
mkdir -p "$CACHE_ROOT" "$BIN_DIR"

# One build.sh at a time per cache (and so never two Go builds at once from here).
exec 9>"$CACHE_ROOT/.build.lock"
if ! flock -n 9; then
  log "another build.sh holds $CACHE_ROOT/.build.lock; waiting…"
  flock 9
fi

export CGO_ENABLED=0 GOTOOLCHAIN=local GOWORK=off GOFLAGS=-buildvcs=false
GO() { nice -n 19 go "$@"; }
BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
TOTAL_START=$SECONDS

# fmt_secs N -> "Mm SSs"
fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# ok BIN EXPECT ARGS... : binary exists, runs with ARGS and prints EXPECT
ok() {
  local bin=$1 expect=$2; shift 2
  [[ $FORCE == 0 && -x $bin ]] || return 1
  local out
  out=$("$bin" "$@" 2>&1) || return 1
  [[ $out == *"$expect"* ]]
}

# gomod_file MODULE@VERSION -> path of the downloaded go.mod
gomod_file() {
  local json
  json=$(GO mod download -json "$1") || die "go mod download $1 failed:
$json"
  sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$json"
}

# module_dir MODULE@VERSION -> extracted module directory
module_dir() {
  local json
  json=$(GO mod download -json "$1") || die "go mod download $1 failed:
$json"
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json"
}

link() { ln -sfn "$1" "$BIN_DIR/$(basename "$1")"; }

# ---------------------------------------------------------------- kubernetes
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
# Version ldflags, as the Kubernetes release build sets them (hack/lib/version.sh), for both
# version packages. gitCommit is set to "" because the module zip does not carry the commit
# (otherwise /version would show the unexpanded "$Format:%H$" placeholder).
# buildDate is appended at build time and kept out of the cache stamp.
k8s_ldflags() {
  local v=${KUBERNETES_VERSION#v} major minor p out="-s -w"
  major=${v%%.*}; minor=${v#*.}; minor=${minor%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    out+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    out+=" -X $p.gitCommit= -X $p.gitTreeState=clean"
  done
  echo "$out"
}
K8S_LDFLAGS=$(k8s_ldflags)
k8s_ok() {
  [[ $(cat "$K8S_DIR/bin/.$1.ldflags" 2>/dev/null) == "$K8S_LDFLAGS" ]] || return 1
  if [[ $1 == kubectl ]]; then ok "$K8S_DIR/bin/kubectl" "$KUBERNETES_VERSION" version --client
  else ok "$K8S_DIR/bin/$1" "Kubernetes $KUBERNETES_VERSION" --version; fi
}

prepare_k8s_module() {
  local src=$K8S_DIR/src
  [[ -f $src/go.sum && -f $src/.ready && $FORCE == 0 ]] && return 0
  log "kubernetes $KUBERNETES_VERSION: generating consumer module (staging replaces from its go.mod)…"
  rm -rf "$src"; mkdir -p "$src"
  local modfile v=${KUBERNETES_VERSION#v} staging
  modfile=$(gomod_file "k8s.io/kubernetes@$KUBERNETES_VERSION")
  [[ -f $modfile ]] || die "could not locate go.mod of k8s.io/kubernetes@$KUBERNETES_VERSION"
  staging="v0.${v#*.}" # v1.37.2 -> v0.37.2
  # staging modules: `k8s.io/X => ./staging/src/k8s.io/X` in k8s.io/kubernetes' replace block
  local mods
  mods=$(awk '$2 == "=>" && $3 ~ /^\.\/staging\/src\// {print $1}' "$modfile" | sort -u)
  [[ -n $mods ]] || die "no staging replaces found in $modfile"
  {
    echo "// Generated by e2e/control-plane/build.sh - do not edit."
    echo "module ballast-e2e/kubernetes"
    echo
    echo "go $(awk '$1 == "go" {print $2; exit}' "$modfile")"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "replace ("
    for m in $mods; do echo "	$m => $m $staging"; done
    echo ")"
    echo
    echo "tool ("
    for b in "${K8S_BINS[@]}"; do echo "	k8s.io/kubernetes/cmd/$b"; done
    echo ")"
  } >"$src/go.mod"
  log "kubernetes $KUBERNETES_VERSION: $(wc -w <<<"$mods") staging modules pinned to $staging; resolving (go mod tidy)…"
  (cd "$src" && GO mod tidy) || die "go mod tidy failed for the kubernetes consumer module ($src)"
  touch "$src/.ready"
}

build_k8s() {
  local missing=()
  for b in "${K8S_BINS[@]}"; do
    if k8s_ok "$b"; then log "$b $KUBERNETES_VERSION: cached"; else missing+=("$b"); fi
  done
  if ((${#missing[@]})); then
    prepare_k8s_module
    local ldflags=$K8S_LDFLAGS p
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $p.buildDate=$BUILD_DATE"
    done
    mkdir -p "$K8S_DIR/bin"
    for b in "${missing[@]}"; do
      log "$b $KUBERNETES_VERSION: building (this takes several minutes cold)…"
      local t0=$SECONDS
      (cd "$K8S_DIR/src" && GO build -trimpath -ldflags "$ldflags" -o "$K8S_DIR/bin/.$b.tmp" "k8s.io/kubernetes/cmd/$b") \
        || die "building $b failed (consumer module: $K8S_DIR/src)"
      mv -f "$K8S_DIR/bin/.$b.tmp" "$K8S_DIR/bin/$b"
      echo "$K8S_LDFLAGS" >"$K8S_DIR/bin/.$b.ldflags"
      k8s_ok "$b" || die "$b built but its version check failed"
      log "$b $KUBERNETES_VERSION: built in $(fmt_secs $((SECONDS - t0)))"
    done
  fi
  for b in "${K8S_BINS[@]}"; do link "$K8S_DIR/bin/$b"; done
}

# ---------------------------------------------------------------- etcd
build_etcd() {
  local e=${ETCD_VERSION#v}
  local etcd_ok=0 ctl_ok=0
  ok "$ETCD_DIR/bin/etcd" "etcd Version: $e" --version && etcd_ok=1
  ok "$ETCD_DIR/bin/etcdctl" "etcdctl version: $e" version && ctl_ok=1
  ((etcd_ok)) && log "etcd $ETCD_VERSION: cached"
  ((ctl_ok)) && log "etcdctl $ETCD_VERSION: cached"
  if ! ((etcd_ok && ctl_ok)); then
    local src=$ETCD_DIR/src
    if [[ ! -f $src/.ready || $FORCE == 1 ]]; then
      log "etcd $ETCD_VERSION: generating consumer module…"
      rm -rf "$src"; mkdir -p "$src/etcd"
      local smod
      smod=$(gomod_file "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
      cat >"$src/go.mod" <<EOF
// Generated by e2e/control-plane/build.sh - do not edit.
module ballast-e2e/etcd

go $(awk '$1 == "go" {print $2; exit}' "$smod")

require (
	go.etcd.io/etcd/server/v3 $ETCD_VERSION
	go.etcd.io/etcd/etcdctl/v3 $ETCD_VERSION
	go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)

tool go.etcd.io/etcd/etcdctl/v3
EOF
      cat >"$src/etcd/main.go" <<'EOF'
// Generated by e2e/control-plane/build.sh: the etcd server entrypoint (same as etcd's own main).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
      (cd "$src" && GO mod tidy) || die "go mod tidy failed for the etcd consumer module ($src)"
      touch "$src/.ready"
    fi
    mkdir -p "$ETCD_DIR/bin"
    local t0
    if ! ((etcd_ok)); then
      log "etcd $ETCD_VERSION: building…"; t0=$SECONDS
      (cd "$src" && GO build -trimpath -ldflags "-s -w" -o "$ETCD_DIR/bin/.etcd.tmp" ./etcd) \
        || die "building etcd failed (consumer module: $src)"
      mv -f "$ETCD_DIR/bin/.etcd.tmp" "$ETCD_DIR/bin/etcd"
      ok "$ETCD_DIR/bin/etcd" "etcd Version: $e" --version || die "etcd built but 'etcd --version' does not report $e"
      log "etcd $ETCD_VERSION: built in $(fmt_secs $((SECONDS - t0)))"
    fi
    if ! ((ctl_ok)); then
      log "etcdctl $ETCD_VERSION: building…"; t0=$SECONDS
      (cd "$src" && GO build -trimpath -ldflags "-s -w" -o "$ETCD_DIR/bin/.etcdctl.tmp" go.etcd.io/etcd/etcdctl/v3) \
        || die "building etcdctl failed (consumer module: $src)"
      mv -f "$ETCD_DIR/bin/.etcdctl.tmp" "$ETCD_DIR/bin/etcdctl"
      ok "$ETCD_DIR/bin/etcdctl" "etcdctl version: $e" version || die "etcdctl built but 'etcdctl version' does not report $e"
      log "etcdctl $ETCD_VERSION: built in $(fmt_secs $((SECONDS - t0)))"
    fi
  fi
  link "$ETCD_DIR/bin/etcd"; link "$ETCD_DIR/bin/etcdctl"
}

# ---------------------------------------------------------------- helm
build_helm() {
  # Same ldflags as helm's release Makefile: version, plus the default Kubernetes version
  # for `helm template`/lint (client-go v0.N.x -> 1.N), so chart kubeVersion checks work offline.
  local hmod cg k8s_minor ldflags
  hmod=$(gomod_file "helm.sh/helm/v3@$HELM_VERSION")
  cg=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$hmod")
  [[ $cg == v0.* ]] || die "cannot find k8s.io/client-go in $hmod"
  k8s_minor=${cg#v0.}; k8s_minor=${k8s_minor%%.*}
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  local p
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$k8s_minor"
  done
  if ok "$HELM_DIR/bin/helm" "$HELM_VERSION" version && [[ $(cat "$HELM_DIR/bin/.ldflags" 2>/dev/null) == "$ldflags" ]]; then
    log "helm $HELM_VERSION: cached"
  else
    log "helm $HELM_VERSION: building (go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION)…"
    local t0=$SECONDS
    mkdir -p "$HELM_DIR/bin"
    (cd "$HELM_DIR" && GOBIN="$HELM_DIR/bin" GO install -trimpath -ldflags "$ldflags" \
      "helm.sh/helm/v3/cmd/helm@$HELM_VERSION") || die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed"
    ok "$HELM_DIR/bin/helm" "$HELM_VERSION" version || die "helm built but 'helm version' does not report $HELM_VERSION"
    echo "$ldflags" >"$HELM_DIR/bin/.ldflags"
    log "helm $HELM_VERSION: built in $(fmt_secs $((SECONDS - t0)))"
  fi
  link "$HELM_DIR/bin/helm"
}

# ---------------------------------------------------------------- cert-manager
build_cert_manager() {
  local bin=$CM_DIR/bin/cert-manager-controller
  local srcsum stamp
  local ldflags="-s -w -X main.version=$CERT_MANAGER_VERSION -X github.com/cert-manager/cert-manager/pkg/util.AppVersion=$CERT_MANAGER_VERSION"
  srcsum=$({ cat "$HERE/cert-manager-controller/main.go"; echo "$CERT_MANAGER_DEP_PINS"; } | cksum | cut -d' ' -f1)
  stamp="$srcsum $ldflags"
  if ok "$bin" "$CERT_MANAGER_VERSION" --version && [[ $(cat "$CM_DIR/bin/.stamp" 2>/dev/null) == "$stamp" ]]; then
    log "cert-manager-controller $CERT_MANAGER_VERSION: cached"
  else
    local src=$CM_DIR/src
    if [[ ! -f $src/.ready || $FORCE == 1 || $(cat "$src/.main.cksum" 2>/dev/null) != "$srcsum" ]]; then
      log "cert-manager $CERT_MANAGER_VERSION: generating consumer module…"
      rm -rf "$src"; mkdir -p "$src"
      local cmod
      cmod=$(gomod_file "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION")
      cp "$HERE/cert-manager-controller/main.go" "$src/main.go"
      cat >"$src/go.mod" <<EOF
// Generated by e2e/control-plane/build.sh - do not edit.
module ballast-e2e/cert-manager-controller

go $(awk '$1 == "go" {print $2; exit}' "$cmod")

require github.com/cert-manager/cert-manager $CERT_MANAGER_VERSION
EOF
      # Raise dependencies the proxy does not serve at cert-manager's pinned version
      # (see CERT_MANAGER_DEP_PINS in versions.env).
      local pin
      for pin in ${CERT_MANAGER_DEP_PINS:-}; do
        log "cert-manager $CERT_MANAGER_VERSION: dependency pin $pin"
        echo "require ${pin%@*} ${pin#*@}" >>"$src/go.mod"
      done
      # Take cert-manager's own pins for everything it needs (same as its release build),
      # then let tidy add what our main imports directly.
      (cd "$src" && GO mod tidy) || die "go mod tidy failed for the cert-manager consumer module ($src)"
      echo "$srcsum" >"$src/.main.cksum"
      touch "$src/.ready"
    fi
    log "cert-manager-controller $CERT_MANAGER_VERSION: building…"
    local t0=$SECONDS
    mkdir -p "$CM_DIR/bin"
    (cd "$src" && GO build -trimpath -ldflags "$ldflags" -o "$CM_DIR/bin/.cmc.tmp" .) \
      || die "building cert-manager-controller failed (consumer module: $src)"
    mv -f "$CM_DIR/bin/.cmc.tmp" "$bin"
    ok "$bin" "$CERT_MANAGER_VERSION" --version || die "cert-manager-controller built but --version check failed"
    echo "$stamp" >"$CM_DIR/bin/.stamp"
    log "cert-manager-controller $CERT_MANAGER_VERSION: built in $(fmt_secs $((SECONDS - t0)))"
  fi
  link "$bin"

  if [[ -s $CRDS && -f $CM_DIR/chart/Chart.yaml && $FORCE == 0 ]]; then
    log "cert-manager CRDs + chart $CERT_MANAGER_VERSION: cached"
  else
    local dir
    dir=$(module_dir "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION")
    # The Helm chart shipped in the module (up.sh renders its ServiceAccount + RBAC).
    [[ -f $dir/deploy/charts/cert-manager/Chart.yaml ]] || die "no deploy/charts/cert-manager in $dir"
    rm -rf "$CM_DIR/chart"
    cp -r "$dir/deploy/charts/cert-manager" "$CM_DIR/chart"
    chmod -R u+w "$CM_DIR/chart"
    # Chart.yaml carries placeholders (v0.0.0) that cert-manager's release tooling fills in.
    sed -i "s/^version: v0.0.0\$/version: $CERT_MANAGER_VERSION/; s/^appVersion: v0.0.0\$/appVersion: $CERT_MANAGER_VERSION/" "$CM_DIR/chart/Chart.yaml"
    compgen -G "$dir/deploy/crds/*.yaml" >/dev/null || die "no deploy/crds/*.yaml in $dir"
    mkdir -p "$(dirname "$CRDS")"
    {
      echo "# cert-manager $CERT_MANAGER_VERSION CustomResourceDefinitions, concatenated from"
      echo "# deploy/crds/*.yaml of the github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION module."
      for f in "$dir"/deploy/crds/*.yaml; do
        echo "---"
        sed '/^---[[:space:]]*$/d' "$f"
      done
    } >"$CRDS.tmp"
    mv -f "$CRDS.tmp" "$CRDS"
    log "cert-manager CRDs $CERT_MANAGER_VERSION: $(grep -c '^kind: CustomResourceDefinition' "$CRDS") CRDs -> $CRDS"
  fi
  ln -sfn "$CRDS" "$SET_DIR/cert-manager.crds.yaml"
}

log "Go $(go env GOVERSION); cache $CACHE_ROOT"
log "versions: kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION, cert-manager $CERT_MANAGER_VERSION"
build_etcd
build_helm
build_cert_manager
build_k8s
log "all binaries ready in $(fmt_secs $((SECONDS - TOTAL_START))): $BIN_DIR"
