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
if [ "${1:-}" = "--bench" ]; then
  command -v haproxy >/dev/null || need+=(haproxy)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "[tools] installing ${need[*]} from Debian packages…" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "[tools] ok: openssl curl python3 setpriv unshare${1:+ haproxy}" >&2
