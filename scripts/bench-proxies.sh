#!/usr/bin/env bash
# Benchmark: ballast-sidecar against HAProxy and nginx (Debian's, each as a TLS-terminating
# TCP proxy) in front of the same sample gateway, with the same agent fleet and certificates.
#
# Prints, for each proxy:
#   - memory per idle TLS connection: (RSS with N idle agents - RSS before) / N, per size
#   - full TLS handshakes per second (`ballast-fleet handshakes`: rustls clients that verify
#     the chain, HANDSHAKE_CLIENTS connections in flight, each a handshake, a HELLO through the
#     proxy to the gateway and close_notify), and resumed ones (--resume; the sidecar with
#     shared ticket keys, the others with their own default ticket keys). `openssl s_time`
#     spent ~1.4 ms of CPU per handshake itself, so it, not the proxy, set the rate.
#   - a reconnect storm: STORM_AGENTS agents connected, the proxy killed (SIGKILL) and started
#     again; seconds until every agent is back and CPU seconds the new proxy spent, for the
#     sidecar with agents that resume (its ticket keys outlive the process, as the Secret
#     does) and without, and for HAProxy (full handshakes: its ticket keys die with it)
#   - connections dropped by a certificate reload under RELOAD_AGENTS agents, and reload time
#     (ballast: kubelet-style Secret swap, hot reload; HAProxy: master-worker reload, SIGUSR2,
#     with hard-stop-after so old workers do not pile up — the usual production setting;
#     nginx: `stream` module with `ssl_preread` off, reload by SIGHUP to the master, with
#     worker_shutdown_timeout for the same reason); the time runs from the act that
#     publishes the new certificate (the rename of ..data, or the signal) to the first fresh
#     handshake presenting it (scripts/reload-probe.py, back-to-back Python TLS handshakes)
#
# nginx is taken from Debian's packages without installing them (apt-get download + dpkg -x
# into the cache), so no service is started and nothing listens beyond this script's own.
#
# Environment: BENCH_SIZES (default "5000 9000"), RELOAD_AGENTS (default 9000),
# HANDSHAKE_SECONDS (default 10), HANDSHAKE_CLIENTS (default 4), STORM_AGENTS (default 9000), HAPROXY_HARD_STOP (default 10s, also nginx's
# worker_shutdown_timeout), BENCH_PROXIES (default "ballast haproxy nginx").
# This machine caps open files at its hard limit (`ulimit -Hn`); a proxy holds two
# descriptors per agent, so sizes above (limit/2 - 100) are skipped with a message.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${BENCH_SIZES:-"5000 9000"}
RELOAD_AGENTS=${RELOAD_AGENTS:-9000}
HS_SECONDS=${HANDSHAKE_SECONDS:-10}
HS_CLIENTS=${HANDSHAKE_CLIENTS:-4}
STORM_AGENTS=${STORM_AGENTS:-9000}
HARD_STOP=${HAPROXY_HARD_STOP:-10s}
PROXIES=${BENCH_PROXIES:-"ballast haproxy nginx"}
ulimit -n "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -n)
MAX_AGENTS=$(( FD_LIMIT / 2 - 100 ))
BALLAST_SCRIPT=bench source scripts/lib.sh
say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

scripts/ensure-tools.sh --bench
say "building release binaries…"
cargo build --release -q -p ballast-sidecar -p ballast-fleet
BIN=$PWD/target/release
GW=127.0.20.1:8080
LISTEN_IP=127.0.20.2
PORT=8443
ADMIN=127.0.20.2:9901
SOURCES=127.0.21.1,127.0.21.2,127.0.21.3,127.0.21.4

"$BIN/ballast-fleet" certs --out "$WORK/pki" 2>/dev/null
"$BIN/ballast-fleet" certs --out "$WORK/pki2" --ca-dir "$WORK/pki" 2>/dev/null
secret_init "$WORK/pki"
# Shared session-ticket keys, in the format the operator writes (ballast_contract::ticket_keys).
python3 - "$WORK/ticket-keys.json" <<'PY'
import json, os, sys, time
now = int(time.time())
keys = [{"name": os.urandom(16).hex(), "secret": os.urandom(32).hex(),
         "encryptFrom": now - 60 + i * 3600, "encryptUntil": now - 60 + (i + 1) * 3600,
         "decryptUntil": now - 60 + (i + 2) * 3600} for i in range(2)]
json.dump({"version": 1, "keys": keys}, open(sys.argv[1], "w"))
PY
cat "$WORK/pki/tls.crt" "$WORK/pki/tls.key" > "$WORK/haproxy.pem"
sha_of() { openssl x509 -in "$1" -noout -fingerprint -sha256 | cut -d= -f2 | tr -d : | tr A-F a-f; }
NEW_SHA=$(sha_of "$WORK/pki2/tls.crt")

"$BIN/ballast-fleet" gateway --listen "$GW" --name bench 2>"$WORK/gateway.log" &
PIDS+=($!)

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
rss_sum() { local t=0 p; for p in "$@"; do t=$(( t + $(rss_kib "$p") )); done; echo "$t"; } # KiB over processes
established() { ss -Htn state established "( sport = :$PORT )" src "$LISTEN_IP" | wc -l; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/$LISTEN_IP/$PORT") 2>/dev/null && return; sleep 0.05; done; say "proxy did not start"; return 1; }

start_ballast() {
  "$BIN/ballast-sidecar" --listen "$LISTEN_IP:$PORT" --upstream "$GW" --admin "$ADMIN" \
    --cert "$WORK/secret/tls.crt" --key "$WORK/secret/tls.key" --upstream-sources "$SOURCES" \
    --max-connections 1000000 --max-handshakes-per-second 1000000 \
    --max-concurrent-handshakes 4096 --shutdown-drain 1s --ticket-keys "$WORK/ticket-keys.json" \
    2>>"$WORK/sidecar.log" &
  PROXY_PID=$!; PIDS+=($PROXY_PID); wait_port
}
haproxy_cfg() {
  cat > "$WORK/haproxy.cfg" <<CFG
global
  maxconn $MAX_AGENTS
  nbthread 2
  hard-stop-after $HARD_STOP
  tune.ssl.default-dh-param 2048
defaults
  mode tcp
  timeout connect 2s
  timeout client 1h
  timeout server 1h
frontend agents
  bind $LISTEN_IP:$PORT ssl crt $WORK/haproxy.pem
  default_backend gateway
backend gateway
  balance roundrobin
  server g1 $GW source 127.0.21.1
  server g2 $GW source 127.0.21.2
  server g3 $GW source 127.0.21.3
  server g4 $GW source 127.0.21.4
CFG
}
start_haproxy() { # $1 = extra flags (-W for master-worker)
  haproxy_cfg
  haproxy ${1:-} -db -f "$WORK/haproxy.cfg" 2>"$WORK/haproxy.log" &
  PROXY_PID=$!; PIDS+=($PROXY_PID); wait_port
}
# nginx from Debian's packages, unpacked into the cache (not installed: no service starts).
NGINX_ROOT="${BALLAST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ballast}/nginx"
ensure_nginx() {
  [ -x "$NGINX_ROOT/usr/sbin/nginx" ] && [ -f "$NGINX_ROOT/usr/lib/nginx/modules/ngx_stream_module.so" ] && return
  say "nginx: unpacking Debian's nginx and libnginx-mod-stream into $NGINX_ROOT…"
  local dl="$WORK/nginx-debs"; mkdir -p "$dl" "$NGINX_ROOT"
  (cd "$dl" && apt-get download -q nginx libnginx-mod-stream >/dev/null 2>&1) \
    || { apt-get update -qq && (cd "$dl" && apt-get download -q nginx libnginx-mod-stream >/dev/null); }
  for deb in "$dl"/*.deb; do dpkg -x "$deb" "$NGINX_ROOT"; done
}
nginx_cfg() {
  mkdir -p "$WORK/nginx"
  cat > "$WORK/nginx.conf" <<CFG
load_module $NGINX_ROOT/usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 2;
worker_rlimit_nofile $FD_LIMIT;
worker_shutdown_timeout $HARD_STOP;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx.log warn;
events { worker_connections $FD_LIMIT; }
stream {
  split_clients "\$remote_port" \$source {
    25% 127.0.21.1;
    25% 127.0.21.2;
    25% 127.0.21.3;
    *   127.0.21.4;
  }
  server {
    listen $LISTEN_IP:$PORT ssl;
    ssl_certificate $WORK/nginx.crt;
    ssl_certificate_key $WORK/nginx.key;
    proxy_bind \$source;
    proxy_connect_timeout 2s;
    proxy_timeout 1h;
    proxy_pass $GW;
  }
}
CFG
}
start_nginx() {
  cp "$WORK/pki/tls.crt" "$WORK/nginx.crt"; cp "$WORK/pki/tls.key" "$WORK/nginx.key"
  nginx_cfg
  "$NGINX_ROOT/usr/sbin/nginx" -p "$WORK/nginx" -c "$WORK/nginx.conf" -e "$WORK/nginx.log" &
  PROXY_PID=$!; PIDS+=($PROXY_PID); wait_port
}
nginx_workers() { cat /proc/"$PROXY_PID"/task/*/children 2>/dev/null | tr ' ' '\n' | grep -v '^$'; }
stop_proxy() { kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; sleep 1; }
haproxy_worker() { cat /proc/"$PROXY_PID"/task/*/children 2>/dev/null | tr ' ' '\n' | grep -v '^$' | tail -1; }

run_agents() { # $1 agents, $2 duration, $3 heartbeat, $4 summary file, $5 extra flags (--resume)
  "$BIN/ballast-fleet" agents --target "$LISTEN_IP:$PORT" --agents "$1" --ramp "$(( $1 / 1000 + 1 ))s" \
    --heartbeat "$3" --duration "$2" --ca "$WORK/pki/ca.crt" --quiet ${5:-} >"$4" 2>"$4.log" &
  FLEET_PID=$!; PIDS+=($FLEET_PID)
}
wait_established() { # $1 count
  local t=0
  while [ "$(established)" -lt "$1" ]; do
    sleep 1; t=$((t+1)); [ $((t % 5)) -eq 0 ] && say "  $(established)/$1 connected…"
    [ $t -lt 180 ] || { say "  only $(established)/$1 connected after 180s"; return 1; }
  done
}

measure_memory() { # $1 proxy name, $2 pid-of-process-holding-connections function
  for n in $SIZES; do
    if [ "$n" -gt "$MAX_AGENTS" ]; then
      RESULTS+=("$1 memory_per_idle_connection agents=$n skipped: open-file hard limit $FD_LIMIT allows at most $MAX_AGENTS per proxy process")
      continue
    fi
    "start_$1"; sleep 1
    local pids; pids=$($2)
    local before; before=$(rss_sum $pids)
    say "$1: $n idle agents (RSS before: ${before} KiB)…"
    run_agents "$n" 600s 300s /dev/null
    wait_established "$n"; sleep 5
    local after; after=$(rss_sum $pids)
    local per=$(( (after - before) * 1024 / n ))
    RESULTS+=("$1 memory_per_idle_connection agents=$n rss_before_kib=$before rss_after_kib=$after bytes_per_connection=$per ($(( per / 1024 )) KiB)")
    put "RSS per idle TLS connection, $n agents" "$1" "$(awk -v b="$per" 'BEGIN {printf "%.1f KiB", b / 1024}')"
    kill "$FLEET_PID"; wait "$FLEET_PID" 2>/dev/null || true
    stop_proxy
  done
}

measure_handshakes() { # $1 proxy name
  "start_$1"
  local kind flag n secs cpu0 cpu1
  for kind in full resumed; do
    flag=""; [ "$kind" = resumed ] && flag=--resume
    say "$1: $kind handshakes for ${HS_SECONDS}s (ballast-fleet handshakes $flag, $HS_CLIENTS in flight)…"
    cpu0=$(cpu_ticks $(holders "$1"))
    # The client's own CPU seconds go to handshakes.cpu (its rusage, through python3).
    python3 -c 'import resource, subprocess, sys
out = open(sys.argv[2], "w")
subprocess.run(sys.argv[3:], stdout=out)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write("%f\n" % (r.ru_utime + r.ru_stime))' "$WORK/handshakes.cpu" "$WORK/handshakes.json" \
      "$BIN/ballast-fleet" handshakes --target "$LISTEN_IP:$PORT" --ca "$WORK/pki/ca.crt" \
      --clients "$HS_CLIENTS" --duration "${HS_SECONDS}s" $flag
    cpu1=$(cpu_ticks $(holders "$1"))
    local clients
    clients=$(awk -v s="$HS_SECONDS" -v c="$(nproc)" '{t+=$1} END {printf "%.0f%%", 100 * t / s / c}' "$WORK/handshakes.cpu")
    read -r n secs failures < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["connections"], r["seconds"], r["failures"])' "$WORK/handshakes.json")
    [ "$failures" = 0 ] || say "  $failures attempts failed"
    local rate per_ms share
    rate=$(awk -v n="$n" -v s="$secs" 'BEGIN {if (s > 0) printf "%.0f", n / s; else print 0}')
    per_ms=$(awk -v t=$((cpu1 - cpu0)) -v hz="$HZ" -v n="$n" 'BEGIN {if (n > 0) printf "%.3f", 1000 * t / hz / n; else print "-"}')
    share=$(awk -v t=$((cpu1 - cpu0)) -v hz="$HZ" -v s="$HS_SECONDS" -v c="$(nproc)" 'BEGIN {printf "%.0f%%", 100 * t / hz / s / c}')
    RESULTS+=("$1 ${kind}_handshakes_per_second=$rate connections=$n proxy_cpu_ms_per_connection=$per_ms proxy_cpu_share=$share clients_cpu_share=$clients")
    put "${kind^} handshakes/s (ballast-fleet handshakes, $HS_CLIENTS in flight, ${HS_SECONDS} s; the client's share of the cores)" "$1" "$rate ($clients)"
    put "Proxy CPU per ${kind} connection (proxy's share of the cores)" "$1" "$per_ms ms ($share)"
    put "${kind^} handshakes per proxy CPU-second (capacity, 1 / CPU per connection)" "$1" "$(awk -v m="$per_ms" 'BEGIN {if (m > 0) printf "%.0f", 1000 / m; else print "-"}')"
  done
  stop_proxy
}

# CPU time (clock ticks) of processes, summed: utime + stime.
HZ=$(getconf CLK_TCK)
cpu_ticks() { local t=0 p; for p in "$@"; do t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat") )); done; echo "$t"; }
holders() { case $1 in nginx) nginx_workers ;; *) echo "$PROXY_PID" ;; esac; }

measure_storm() { # $1 proxy name, $2 "resume" or "full"
  [ "$STORM_AGENTS" -le "$MAX_AGENTS" ] || STORM_AGENTS=$MAX_AGENTS
  local flag=""; [ "$2" = resume ] && flag=--resume
  "start_$1"
  say "$1: storm — $STORM_AGENTS agents ($2 handshakes) connect, then the proxy is killed and restarted…"
  run_agents "$STORM_AGENTS" 600s 30s /dev/null "$flag"
  wait_established "$STORM_AGENTS"; sleep 2
  kill -9 "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true
  local t0 t1 ticks resumed=""
  t0=$(date +%s%N)
  "start_$1"
  while [ "$(established)" -lt "$STORM_AGENTS" ]; do
    sleep 0.05
    [ $(( ($(date +%s%N) - t0) / 1000000000 )) -lt 120 ] || { say "  only $(established) back after 120s"; break; }
  done
  # Connected is not yet handshaken (the kernel completes TCP, the proxy's queue does the
  # rest): the storm is over when the proxy's CPU has been idle for 0.3 s (agents heartbeat
  # every 30 s, so nothing else keeps it busy); it ended at the first idle sample.
  local last idle=0 now_ticks
  last=$(cpu_ticks $(holders "$1")); t1=$(date +%s%N)
  while [ "$idle" -lt 3 ]; do
    sleep 0.1
    now_ticks=$(cpu_ticks $(holders "$1"))
    if [ "$now_ticks" -eq "$last" ]; then idle=$((idle + 1)); else idle=0; t1=$(date +%s%N); fi
    last=$now_ticks
  done
  ticks=$last
  if [ "$1" = ballast ]; then
    resumed=" resumed=$(curl -s "http://$ADMIN/metrics" | awk '/^ballast_sidecar_handshakes_total\{kind="resumed"\}/ {print $2}')"
  fi
  local cpu; cpu=$(awk -v t="$ticks" -v hz="$HZ" 'BEGIN {printf "%.2f", t / hz}')
  RESULTS+=("$1 storm agents=$STORM_AGENTS handshakes=$2$resumed back_in_ms=$(( (t1 - t0) / 1000000 )) cpu_seconds=$cpu")
  put "Storm, $STORM_AGENTS agents cut at once ($2): all back in / proxy CPU s" "$1" "$(awk -v ms=$(( (t1 - t0) / 1000000 )) 'BEGIN {printf "%.1f s", ms / 1000}') / $cpu s${resumed:+ (${resumed# resumed=} resumed)}"
  kill "$FLEET_PID"; wait "$FLEET_PID" 2>/dev/null || true
  stop_proxy
}

measure_reload() { # $1 proxy name
  local summary="$WORK/reload-$1.json"
  case $1 in haproxy) start_haproxy -W ;; *) "start_$1" ;; esac
  say "$1: reload under $RELOAD_AGENTS agents…"
  run_agents "$RELOAD_AGENTS" 45s 1s "$summary"
  wait_established "$RELOAD_AGENTS"; sleep 3
  # Files first; the probe times only the act that publishes them (the kubelet's rename, or
  # the reload signal) up to the first fresh handshake presenting the new certificate.
  local act
  case $1 in
    haproxy)
      cat "$WORK/pki2/tls.crt" "$WORK/pki2/tls.key" > "$WORK/haproxy.pem"
      act=(--signal "$PROXY_PID" USR2) ;;
    nginx)
      cp "$WORK/pki2/tls.crt" "$WORK/nginx.crt"; cp "$WORK/pki2/tls.key" "$WORK/nginx.key"
      act=(--signal "$PROXY_PID" HUP) ;;
    *)
      secret_stage "$WORK/pki2"
      act=(--rename "$WORK/secret/..data_tmp" "$WORK/secret/..data") ;;
  esac
  local ms probes
  read -r ms probes < <(python3 scripts/reload-probe.py --connect "$LISTEN_IP:$PORT" \
    --sha256 "$NEW_SHA" "${act[@]}") || { say "new certificate never served"; ms=-; }
  wait "$FLEET_PID" || true
  local outcome
  outcome=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("dropped_connections=%d false_offline=%d longest_gap_s=%.2f" % (s["disconnects"], s["false_offline"], s["longest_gap_seconds"]))' "$summary")
  RESULTS+=("$1 reload agents=$RELOAD_AGENTS $outcome reload_to_new_cert_ms=$ms probes=$probes")
  put "Connections dropped by a certificate reload, $RELOAD_AGENTS agents" "$1" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["disconnects"])' "$summary")"
  put "Reload → new certificate on new handshakes (rename or signal → first handshake presenting it)" "$1" "$ms ms"
  stop_proxy
}

RESULTS=()
# One table: a row per figure, a column per proxy, in the order figures were first measured.
declare -A TABLE; ROWS=()
put() { # $1 figure, $2 proxy, $3 value
  [ -n "${TABLE[$1|seen]:-}" ] || { ROWS+=("$1"); TABLE[$1|seen]=1; }
  TABLE[$1|$2]=$3
}
ballast_pid() { echo "$PROXY_PID"; }
haproxy_pid() { echo "$PROXY_PID"; } # without -W, the one process is the worker
nginx_pid() { nginx_workers; }      # connections live in the workers (the master holds none)
case " $PROXIES " in *" nginx "*) ensure_nginx ;; esac
for proxy in $PROXIES; do
  measure_memory "$proxy" "${proxy}_pid"
  measure_handshakes "$proxy"
  measure_reload "$proxy"
  case $proxy in
    ballast) measure_storm ballast resume; measure_storm ballast full ;;
    haproxy) measure_storm haproxy full ;;
  esac
done

echo
versions="ballast-sidecar $(awk -F'"' '/^version/ {print $2; exit}' Cargo.toml)"
case " $PROXIES " in *" haproxy "*) versions+=", HAProxy $(haproxy -v | head -1 | awk '{print $3}')" ;; esac
case " $PROXIES " in *" nginx "*) versions+=", nginx $("$NGINX_ROOT/usr/sbin/nginx" -v 2>&1 | cut -d/ -f2)" ;; esac
echo "== $versions — $(nproc) cores, open-file limit $FD_LIMIT, $(date +%F) =="
printf '%s\n' "${RESULTS[@]}"
echo
printf '| Figure |'; for p in $PROXIES; do printf ' %s |' "$p"; done; echo
printf '| --- |'; for p in $PROXIES; do printf ' --- |'; done; echo
for row in "${ROWS[@]}"; do
  printf '| %s |' "$row"
  for p in $PROXIES; do printf ' %s |' "${TABLE[$row|$p]:-n/a}"; done
  echo
done
