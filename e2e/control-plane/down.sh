#!/usr/bin/env bash
# Stop the control plane started by up.sh and remove its state dir.
# Only the PIDs recorded in <state>/pids are signalled, and only while /proc/<pid>/exe is still
# the binary that was started (so a recycled PID is never hit): SIGTERM, wait, then SIGKILL.
#
# usage: down.sh     (BALLAST_E2E_DIR selects the state dir, default /tmp/ballast-e2e)
#        BALLAST_GRACE_SECONDS=N  seconds to wait after SIGTERM before SIGKILL [10]
set -euo pipefail

STATE=${BALLAST_E2E_DIR:-/tmp/ballast-e2e}
GRACE=${BALLAST_GRACE_SECONDS:-10}
MARKER=.ballast-e2e-state
log() { printf '[down] %s\n' "$*"; }

if [[ ! -e $STATE ]]; then
  log "nothing to do: $STATE does not exist"
  exit 0
fi
if [[ ! -f $STATE/$MARKER ]]; then
  echo "[down] ERROR: $STATE is not a Ballast e2e state dir (no $MARKER); not touching it." >&2
  exit 1
fi

ours() { [[ $(readlink "/proc/$1/exe" 2>/dev/null) == "$2" ]]; }

names=() pids=() exes=()
if [[ -f $STATE/pids ]]; then
  while read -r name pid exe; do
    [[ -n ${pid:-} ]] || continue
    names+=("$name") pids+=("$pid") exes+=("$exe")
  done <"$STATE/pids"
fi

# Stop in reverse start order (cert-manager, scheduler, controller-manager, apiserver, etcd),
# so clients go before the servers they talk to.
left=()
for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
  name=${names[i]} pid=${pids[i]} exe=${exes[i]}
  if ! ours "$pid" "$exe"; then
    log "$name (pid $pid): not running"
    continue
  fi
  log "$name (pid $pid): SIGTERM"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + GRACE))
  while ours "$pid" "$exe" && ((SECONDS < deadline)); do sleep 0.1; done
  if ours "$pid" "$exe"; then
    log "$name (pid $pid): still running after ${GRACE}s, SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do ours "$pid" "$exe" || break; sleep 0.1; done
  fi
  if ours "$pid" "$exe"; then left+=("$name=$pid"); else log "$name (pid $pid): stopped"; fi
done

if ((${#left[@]})); then
  echo "[down] ERROR: still running: ${left[*]}; keeping $STATE" >&2
  exit 1
fi
rm -rf "$STATE"
log "removed $STATE"
