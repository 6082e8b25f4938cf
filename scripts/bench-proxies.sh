#!/usr/bin/env bash
# Benchmark: ballast-sidecar against HAProxy and nginx (Debian's, each as a TLS-terminating
# TCP proxy) in front of the same sample gateway, with the same agent fleet and certificates.
#
# Prints, for each proxy:
#   - memory per idle TLS connection: (RSS with N idle agents - RSS before) / N, per size
#   - full TLS handshakes per second (openssl s_time -new, two clients in parallel)
#   - connections dropped by a certificate reload under RELOAD_AGENTS agents, and reload time
#     (ballast: kubelet-style Secret swap, hot reload; HAProxy: master-worker reload, SIGUSR2,
#     with hard-stop-after so old workers do not pile up — the usual production setting;
#     nginx: `stream` module with `ssl_preread` off, reload by SIGHUP to the master, with
#     worker_shutdown_timeout for the same reason)
#
# nginx is taken from Debian's packages without installing them (apt-get download + dpkg -x
# into the cache), so no service is started and nothing listens beyond this script's own.
#
# Environment: BENCH_SIZES (default "5000 9000"), RELOAD_AGENTS (default 9000),
# HANDSHAKE_SECONDS (default 10), HAPROXY_HARD_STOP (default 10s, also nginx's
# worker_shutdown_timeout), BENCH_PROXIES (default "ballast haproxy nginx").
# This machine caps open files at its hard limit (`ulimit -Hn`); a proxy holds two
# descriptors per agent, so sizes above (limit/2 - 100) are skipped with a message.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${BENCH_SIZES:-"5000 9000"}
RELOAD_AGENTS=${RELOAD_AGENTS:-9000}
HS_SECONDS=${HANDSHAKE_SECONDS:-10}
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
cat "$WORK/pki/tls.crt" "$WORK/pki/tls.key" > "$WORK/haproxy.pem"
sha_of() { openssl x509 -in "$1" -noout -fingerprint -sha256 | cut -d= -f2 | tr -d : | tr A-F a-f; }
OLD_SHA=$(sha_of "$WORK/pki/tls.crt"); NEW_SHA=$(sha_of "$WORK/pki2/tls.crt")

"$BIN/ballast-fleet" gateway --listen "$GW" --name bench 2>"$WORK/gateway.log" &
PIDS+=($!)

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
rss_sum() { local t=0 p; for p in "$@"; do t=$(( t + $(rss_kib "$p") )); done; echo "$t"; } # KiB over processes
established() { ss -Htn state established "( sport = :$PORT )" src "$LISTEN_IP" | wc -l; }
served_sha() { # fingerprint a fresh handshake presents
  openssl s_client -connect "$LISTEN_IP:$PORT" -servername localhost </dev/null 2>/dev/null \
    | openssl x509 -noout -fingerprint -sha256 2>/dev/null | cut -d= -f2 | tr -d : | tr A-F a-f
}
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/$LISTEN_IP/$PORT") 2>/dev/null && return; sleep 0.05; done; say "proxy did not start"; return 1; }

start_ballast() {
  "$BIN/ballast-sidecar" --listen "$LISTEN_IP:$PORT" --upstream "$GW" --admin "$ADMIN" \
    --cert "$WORK/secret/tls.crt" --key "$WORK/secret/tls.key" --upstream-sources "$SOURCES" \
    --max-connections 1000000 --max-handshakes-per-second 1000000 \
    --max-concurrent-handshakes 4096 --shutdown-drain 1s 2>"$WORK/sidecar.log" &
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

run_agents() { # $1 agents, $2 duration, $3 heartbeat, $4 summary file
  "$BIN/ballast-fleet" agents --target "$LISTEN_IP:$PORT" --agents "$1" --ramp "$(( $1 / 1000 + 1 ))s" \
    --heartbeat "$3" --duration "$2" --ca "$WORK/pki/ca.crt" --quiet >"$4" 2>"$4.log" &
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
    kill "$FLEET_PID"; wait "$FLEET_PID" 2>/dev/null || true
    stop_proxy
  done
}

measure_handshakes() { # $1 proxy name
  "start_$1"
  say "$1: full handshakes for ${HS_SECONDS}s (openssl s_time -new, 2 clients)…"
  for i in 1 2; do
    openssl s_time -connect "$LISTEN_IP:$PORT" -new -time "$HS_SECONDS" >"$WORK/stime.$i" 2>&1 &
    PIDS+=($!)
  done
  wait "${PIDS[-1]}" "${PIDS[-2]}" 2>/dev/null || true
  local total
  total=$(awk '/connections in [0-9.]+ real seconds/ {n+=$1; s=$4} END {if (s>0) printf "%.0f", n/s; else print 0}' "$WORK/stime.1" "$WORK/stime.2")
  RESULTS+=("$1 full_handshakes_per_second=$total")
  stop_proxy
}

measure_reload() { # $1 proxy name
  local summary="$WORK/reload-$1.json"
  case $1 in haproxy) start_haproxy -W ;; *) "start_$1" ;; esac
  say "$1: reload under $RELOAD_AGENTS agents…"
  run_agents "$RELOAD_AGENTS" 45s 1s "$summary"
  wait_established "$RELOAD_AGENTS"; sleep 3
  local t0 t1
  t0=$(date +%s%N)
  case $1 in
    haproxy)
      cat "$WORK/pki2/tls.crt" "$WORK/pki2/tls.key" > "$WORK/haproxy.pem"
      kill -USR2 "$PROXY_PID" ;;
    nginx)
      cp "$WORK/pki2/tls.crt" "$WORK/nginx.crt"; cp "$WORK/pki2/tls.key" "$WORK/nginx.key"
      kill -HUP "$PROXY_PID" ;;
    *) secret_update "$WORK/pki2" ;;
  esac
  until [ "$(served_sha)" = "$NEW_SHA" ]; do
    [ $(( ($(date +%s%N) - t0) / 1000000000 )) -lt 60 ] || { say "new certificate never served"; break; }
    sleep 0.02
  done
  t1=$(date +%s%N)
  wait "$FLEET_PID" || true
  local outcome
  outcome=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("dropped_connections=%d false_offline=%d longest_gap_s=%.2f" % (s["disconnects"], s["false_offline"], s["longest_gap_seconds"]))' "$summary")
  RESULTS+=("$1 reload agents=$RELOAD_AGENTS $outcome reload_to_new_cert_ms=$(( (t1 - t0) / 1000000 ))")
  stop_proxy
}

RESULTS=()
ballast_pid() { echo "$PROXY_PID"; }
haproxy_pid() { echo "$PROXY_PID"; } # without -W, the one process is the worker
nginx_pid() { nginx_workers; }      # connections live in the workers (the master holds none)
case " $PROXIES " in *" nginx "*) ensure_nginx ;; esac
for proxy in $PROXIES; do
  measure_memory "$proxy" "${proxy}_pid"
  measure_handshakes "$proxy"
  measure_reload "$proxy"
done

echo
echo "== ballast-sidecar vs HAProxy $(haproxy -v | head -1 | awk '{print $3}') vs nginx $("$NGINX_ROOT/usr/sbin/nginx" -v 2>&1 | cut -d/ -f2) — $(nproc) cores, open-file limit $FD_LIMIT, $(date +%F) =="
printf '%s\n' "${RESULTS[@]}"
