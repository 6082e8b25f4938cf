# Shared by the local scripts (sourced, not run): a scratch directory and the processes to
# stop on exit, and a Secret volume written the way the kubelet writes one.
#
# After sourcing: $WORK is a fresh directory, PIDS+=($!) registers a background process, and
# on exit every registered process is stopped (by PID) and $WORK removed.

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ballast-${BALLAST_SCRIPT:-script}.XXXXXX")
PIDS=()
ballast_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap ballast_cleanup EXIT

# secret_init DIR: a Secret volume in $WORK/secret publishing DIR's tls.crt and tls.key, laid
# out like a mounted Secret: tls.crt -> ..data/tls.crt, ..data -> ..<version>.
secret_init() {
  mkdir -p "$WORK/secret"; secret_update "$1"
  ln -s ..data/tls.crt "$WORK/secret/tls.crt"; ln -s ..data/tls.key "$WORK/secret/tls.key"
}

# secret_update DIR: the kubelet's atomic update — a new versioned directory, then a new
# ..data link renamed over the old one. secret_stage does all but the rename (which is then
# `mv -T $WORK/secret/..data_tmp $WORK/secret/..data`, or a rename(2) a probe times).
secret_stage() {
  local v="..v$(date +%s%N)"
  mkdir -p "$WORK/secret/$v"; cp "$1/tls.crt" "$1/tls.key" "$WORK/secret/$v/"
  ln -sfn "$v" "$WORK/secret/..data_tmp"
}
secret_update() {
  secret_stage "$1"; mv -T "$WORK/secret/..data_tmp" "$WORK/secret/..data"
}
