#!/usr/bin/env bash
# Benchmark: one operator receiving a report every second from each of 1,000 sidecars.
#
# Brings up a real control plane (no cert-manager, no kubelet), a PresenceCluster of 1,000
# replicas whose pods kube-controller-manager creates and nobody runs, and plays their
# sidecars: each reports from its pod's own loopback address with its pod's own bound token
# (TokenRequest), as the real sidecar does. Prints the operator's RSS, CPU (and that of the
# simulated sidecars, kube-apiserver and etcd on the same 2 cores) and the report → answer
# latency, against the goals (under 100 MB, p99 under 200 ms at 1,000 pods).
#
# Environment: BENCH_SIDECARS (default 1000, at most 1000), BENCH_WINDOW (default 30s),
# BENCH_WARMUP (default 10s). The control plane is torn down at the end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[bench-reports %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# 1,000 report connections, plus the apiserver's: well within the open-file limit, but not
# within a default soft limit of 1,024.
ulimit -n "$(ulimit -Hn)"
say "building release binaries (ballast-operator, ballast-e2e)…"
cargo build --release -q -p ballast-operator -p ballast-e2e
exec target/release/ballast-e2e bench-reports \
  --sidecars "${BENCH_SIDECARS:-1000}" \
  --window "${BENCH_WINDOW:-30s}" \
  --warmup "${BENCH_WARMUP:-10s}" \
  --operator target/release/ballast-operator
