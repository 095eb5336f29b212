#!/usr/bin/env bash
# bench/run.sh: scopegate side by side with a plain nginx proxy and HAProxy
# with jwt_verify, in one interleaved run on loopback. See bench/README.md.
#
# Everything it starts is killed on exit; everything it writes is under
# bench/out/ (git-ignored). Results: bench/out/results.{json,md}.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
OUT=${OUT:-$BENCH_DIR/out}

# --- knobs (env) -------------------------------------------------------------
DURATION=${DURATION:-15}          # seconds per measured cell
ROUNDS=${ROUNDS:-3}               # interleaved rounds; the table shows medians
CONNECTIONS=${CONNECTIONS:-64}    # wrk connections, same for every cell
SCENARIOS=${SCENARIOS:-"hot cold deny public"}
ROWS=${ROWS:-"direct nginx haproxy scopegate"}
WORKERS=${WORKERS:-2}             # worker processes/threads of every gateway
TOKENS=${TOKENS:-200000}          # cold pool size (more than any token cache holds)
ALG=${ALG:-RS256}                 # RS256 or ES256
SPEED_SECONDS=${SPEED_SECONDS:-3} # openssl speed -seconds; 0 skips it
WARMUP=${WARMUP:-2}               # seconds of hot load per row before round 1
HALF_LOAD=${HALF_LOAD:-1}         # 1: fixed-rate p99 at half of max load (hey)
HALF_DURATION=${HALF_DURATION:-10}
HALF_ROUNDS=${HALF_ROUNDS:-$ROUNDS} # direct/gateway pairs per row; the report takes medians
C1000=${C1000:-1}                 # 1: RSS while 1,000 connections are open
C1000_DURATION=${C1000_DURATION:-6}
SCOPEGATE_BIN=${SCOPEGATE_BIN:-}  # a prebuilt binary; default: cargo build --release

ISSUER=https://bench.scopegate.test
AUDIENCE=bench-api
SCOPE=bench:read

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for s in $SCENARIOS; do
  case $s in hot | cold | deny | public) ;; *) die "unknown scenario '$s' (hot cold deny public)" ;; esac
done
for r in $ROWS; do
  case $r in direct | nginx | haproxy | scopegate) ;; *) die "unknown row '$r' (direct nginx haproxy scopegate)" ;; esac
done
[ "$ROUNDS" -ge 1 ] || die "ROUNDS must be at least 1"
((ROUNDS >= 3)) || log "note: ROUNDS=$ROUNDS; medians need at least 3 rounds to mean much"

# --- tools -------------------------------------------------------------------
need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v python3 >/dev/null || need_apt+=(python3)
if [ "$HALF_LOAD" = 1 ] && ! command -v hey >/dev/null; then need_apt+=(hey); fi
if ((${#need_apt[@]})); then
  log "installing from Debian: ${need_apt[*]}"
  [ "$(id -u)" = 0 ] || die "need root to apt-get install ${need_apt[*]}"
  # policy-rc.d-less containers would start the packaged daemons; stop that.
  export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import cryptography' 2>/dev/null; then
  log "installing python cryptography from PyPI"
  python3 -m pip install -q cryptography || die "pip install cryptography failed"
fi

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
CLK_TCK=$(getconf CLK_TCK)
mkdir -p "$OUT"
RAW=$OUT/raw.jsonl
META=$OUT/meta.json
: >"$RAW"

# --- process bookkeeping -----------------------------------------------------
STARTED=()
cleanup() {
  local pid
  for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${STARTED[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports, all picked at once so they differ.
read -r P_UP P_NGINX P_HAPROXY P_SG P_SG_ADMIN < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)

# The pid and its direct children (nginx master + workers); one pid otherwise.
tree_pids() {
  local root=$1 p f
  echo "$root"
  for p in /proc/[0-9]*; do
    [ -r "$p/stat" ] || continue
    local stat
    stat=$(<"$p/stat") 2>/dev/null || continue
    stat=${stat##*) }
    # fields after comm: state ppid ...
    read -r -a f <<<"$stat"
    [ "${f[1]}" = "$root" ] && echo "${p#/proc/}"
  done
  return 0
}

# utime+stime in clock ticks, summed over the given pids (all their threads).
cpu_ticks() {
  local sum=0 pid stat f
  for pid in "$@"; do
    stat=$(<"/proc/$pid/stat") 2>/dev/null || continue
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    # after comm, from 0: state ppid ...; utime and stime are fields 14 and 15 of the line
    sum=$((sum + f[11] + f[12]))
  done
  echo "$sum"
}

# Sum of a /proc/<pid>/status field in kB (VmRSS, VmHWM) over the pids.
mem_kb() {
  local field=$1 sum=0 pid v
  shift
  for pid in "$@"; do
    v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

wait_http() { # url expected-status seconds pid
  local url=$1 want=$2 secs=$3 pid=${4:-} code
  for _ in $(seq $((secs * 10))); do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
    [ "$code" = "$want" ] && return 0
    sleep 0.1
  done
  return 1
}

# --- machine and the physical limit of the cold path --------------------------
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
NPROC=$(nproc)
log "machine: $NPROC cores, $CPU_MODEL"

SPEED_FILE=$OUT/openssl_speed.txt
: >"$SPEED_FILE"
if [ "$SPEED_SECONDS" != 0 ]; then
  log "openssl speed -seconds $SPEED_SECONDS rsa2048 ecdsap256 ed25519 (one core)"
  openssl speed -seconds "$SPEED_SECONDS" rsa2048 ecdsap256 ed25519 >"$SPEED_FILE" 2>/dev/null || true
  grep -E 'verify/s|^rsa 2048|nistp256\)|Ed25519\)' "$SPEED_FILE" >&2 || true
fi

# --- keys and tokens -----------------------------------------------------------
log "tokens: 1 hot, $TOKENS cold, 1 deny ($ALG)"
python3 "$BENCH_DIR/tokengen.py" --out "$OUT" --count "$TOKENS" --alg "$ALG" \
  --issuer "$ISSUER" --audience "$AUDIENCE" --scope "$SCOPE" >&2

# scenario -> path and token file
scenario_path() { case $1 in public) echo /public/bench ;; *) echo /api/bench ;; esac; }
scenario_tokens() {
  case $1 in
    hot) echo "$OUT/tokens_hot.txt" ;;
    cold) echo "$OUT/tokens_cold.txt" ;;
    deny) echo "$OUT/tokens_deny.txt" ;;
    public) echo - ;;
  esac
}
# what a gateway that checks tokens must answer
scenario_status() { case $1 in deny) echo 403 ;; *) echo 200 ;; esac; }

# --- upstream: nginx answering a short body, and the JWKS ---------------------
nginx_prefix() { # name
  local d=$OUT/$1
  mkdir -p "$d/tmp"
  echo "$d"
}
nginx_temp_paths() { # dir
  local t=$1/tmp
  printf '  client_body_temp_path %s/body;\n  proxy_temp_path %s/proxy;\n  fastcgi_temp_path %s/fcgi;\n  uwsgi_temp_path %s/uwsgi;\n  scgi_temp_path %s/scgi;\n' "$t" "$t" "$t" "$t" "$t"
}

UP_DIR=$(nginx_prefix upstream)
cat >"$UP_DIR/nginx.conf" <<EOF
worker_processes 1;
pid $UP_DIR/nginx.pid;
error_log $UP_DIR/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  server_tokens off;
$(nginx_temp_paths "$UP_DIR")
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:$P_UP backlog=4096;
    location = /jwks.json { root $OUT; default_type application/json; }
    location / { default_type text/plain; return 200 "ok\n"; }
  }
}
EOF
nginx -e "$UP_DIR/error.log" -p "$UP_DIR" -c "$UP_DIR/nginx.conf" -g 'daemon off;' &
UP_PID=$!
STARTED+=("$UP_PID")
wait_http "http://127.0.0.1:$P_UP/jwks.json" 200 10 "$UP_PID" || die "upstream nginx did not start (see $UP_DIR/error.log)"
log "upstream nginx on 127.0.0.1:$P_UP (pid $UP_PID)"

# --- the rows ----------------------------------------------------------------
declare -A ROW_PORT ROW_PID ROW_PIDS ROW_RSS_IDLE ROW_NOTE ROW_OK

start_direct() {
  ROW_PORT[direct]=$P_UP
  ROW_PID[direct]=""
  ROW_NOTE[direct]="the load generator straight to the upstream (the limit); no gateway process"
}

start_nginx() {
  local d
  d=$(nginx_prefix proxy-nginx)
  cat >"$d/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  server_tokens off;
$(nginx_temp_paths "$d")
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  upstream up {
    server 127.0.0.1:$P_UP;
    keepalive 1024;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  nginx -e "$d/error.log" -p "$d" -c "$d/nginx.conf" -g 'daemon off;' &
  ROW_PID[nginx]=$!
  STARTED+=("${ROW_PID[nginx]}")
  ROW_PORT[nginx]=$P_NGINX
  ROW_NOTE[nginx]="plain proxy_pass, keep-alive upstream, no auth, worker_processes $WORKERS"
  wait_http "http://127.0.0.1:$P_NGINX/public/x" 200 10 "${ROW_PID[nginx]}" ||
    { ROW_NOTE[nginx]="did not start: $(tail -c 300 "$d/error.log" | tr '\n' ' ')"; return 1; }
}

start_haproxy() {
  local d=$OUT/haproxy
  mkdir -p "$d"
  # Single quotes keep '$' and '\' literal in HAProxy's config syntax.
  cat >"$d/haproxy.cfg" <<EOF
global
  nbthread $WORKERS
  maxconn 8000
  tune.ssl.default-dh-param 2048

defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option http-keep-alive
  http-reuse always

frontend fe
  bind 127.0.0.1:$P_HAPROXY
  acl r_public path /public
  acl r_public path_beg /public/
  acl r_api    path /api
  acl r_api    path_beg /api/
  http-request return status 404 content-type application/json string '{"error":"not_found"}' unless r_public or r_api

  # /api/**: a bearer JWT, RS256 pinned (never trust the header's alg), signature, iss, aud, exp, scope.
  http-request set-var(txn.bearer) http_auth_bearer if r_api
  http-request return status 401 content-type application/json string '{"error":"unauthorized"}' hdr WWW-Authenticate 'Bearer realm="bench"' if r_api !{ var(txn.bearer) -m found }
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg') if r_api
  http-request return status 401 content-type application/json string '{"error":"invalid_token"}' hdr WWW-Authenticate 'Bearer realm="bench", error="invalid_token"' if r_api !{ var(txn.alg) -m str $ALG }
  http-request return status 401 content-type application/json string '{"error":"invalid_token"}' hdr WWW-Authenticate 'Bearer realm="bench", error="invalid_token"' if r_api !{ var(txn.bearer),jwt_verify("$ALG","$OUT/pub.pem") -m int 1 }
  http-request set-var(txn.iss)   var(txn.bearer),jwt_payload_query('\$.iss') if r_api
  http-request set-var(txn.aud)   var(txn.bearer),jwt_payload_query('\$.aud') if r_api
  http-request set-var(txn.exp)   var(txn.bearer),jwt_payload_query('\$.exp','int') if r_api
  http-request set-var(txn.scope) var(txn.bearer),jwt_payload_query('\$.scope') if r_api
  http-request set-var(txn.now)   date() if r_api
  http-request return status 401 content-type application/json string '{"error":"invalid_token"}' hdr WWW-Authenticate 'Bearer realm="bench", error="invalid_token"' if r_api !{ var(txn.iss) -m str $ISSUER } or r_api !{ var(txn.aud) -m str $AUDIENCE } or r_api !{ var(txn.exp),sub(txn.now) -m int gt 0 }
  http-request return status 403 content-type application/json string '{"error":"insufficient_scope"}' hdr WWW-Authenticate 'Bearer realm="bench", error="insufficient_scope", scope="$SCOPE"' if r_api !{ var(txn.scope) -m reg '(^| )$SCOPE( |\$)' }
  default_backend up

backend up
  server up 127.0.0.1:$P_UP
EOF
  haproxy -c -q -f "$d/haproxy.cfg" >"$d/check.log" 2>&1 || { cat "$d/check.log" >&2; return 1; }
  haproxy -db -f "$d/haproxy.cfg" >"$d/haproxy.log" 2>&1 &
  ROW_PID[haproxy]=$!
  STARTED+=("${ROW_PID[haproxy]}")
  ROW_PORT[haproxy]=$P_HAPROXY
  ROW_NOTE[haproxy]="$(haproxy -v | awk 'NR == 1 { print $1, $3 }'), jwt_verify with a PEM key, alg pinned to $ALG, iss/aud/exp/scope checked, nbthread $WORKERS"
  wait_http "http://127.0.0.1:$P_HAPROXY/public/x" 200 10 "${ROW_PID[haproxy]}" ||
    { ROW_NOTE[haproxy]="did not start: $(tail -c 300 "$d/haproxy.log" | tr '\n' ' ')"; return 1; }
}

scopegate_bin() {
  if [ -n "$SCOPEGATE_BIN" ]; then
    echo "$SCOPEGATE_BIN"
    return
  fi
  log "cargo build --release (fat LTO: takes minutes)"
  (cd "$ROOT" && cargo build --release --quiet --bin scopegate) >&2 || return 1
  echo "$ROOT/target/release/scopegate"
}

start_scopegate() {
  local bin d=$OUT/scopegate
  mkdir -p "$d"
  bin=$(scopegate_bin) || { ROW_NOTE[scopegate]="release build failed"; return 1; }
  [ -x "$bin" ] || { ROW_NOTE[scopegate]="no binary at $bin"; return 1; }
  cat >"$OUT/scopegate.yaml" <<EOF
# generated by bench/run.sh
listen: 127.0.0.1:$P_SG
admin_listen: 127.0.0.1:$P_SG_ADMIN
upstream: http://127.0.0.1:$P_UP
issuers:
  - issuer: $ISSUER
    audiences: [$AUDIENCE]
    jwks_uri: http://127.0.0.1:$P_UP/jwks.json
    algorithms: [$ALG]
routes:
  - path: /public/**
    public: true
  - path: /api/**
    scopes: [$SCOPE]
EOF
  if ! "$bin" check --config "$OUT/scopegate.yaml" >"$d/check.log" 2>&1; then
    ROW_NOTE[scopegate]="scopegate check rejected the config: $(head -c 300 "$d/check.log" | tr '\n' ' ')"
    return 1
  fi
  # tokio reads TOKIO_WORKER_THREADS when the runtime builder names no count.
  TOKIO_WORKER_THREADS=$WORKERS SCOPEGATE_LOG=warn \
    "$bin" run --config "$OUT/scopegate.yaml" >"$d/scopegate.log" 2>&1 &
  ROW_PID[scopegate]=$!
  STARTED+=("${ROW_PID[scopegate]}")
  ROW_PORT[scopegate]=$P_SG
  ROW_NOTE[scopegate]="release build, TOKIO_WORKER_THREADS=$WORKERS, access log off"
  if ! wait_http "http://127.0.0.1:$P_SG_ADMIN/readyz" 200 30 "${ROW_PID[scopegate]}"; then
    ROW_NOTE[scopegate]="did not become ready (GET /readyz != 200 in 30 s): $(tail -c 300 "$d/scopegate.log" | tr '\n' ' ')"
    return 1
  fi
}

# Sanity: each row answers every scenario as it should before it is measured.
check_row() { # row
  local row=$1 s want code tok
  for s in $SCENARIOS; do
    want=$(scenario_status "$s")
    [ "$row" = direct ] || [ "$row" = nginx ] && want=200
    tok=$(scenario_tokens "$s")
    if [ "$tok" = - ]; then
      code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${ROW_PORT[$row]}$(scenario_path "$s")")
    else
      code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(head -n1 "$tok")" \
        "http://127.0.0.1:${ROW_PORT[$row]}$(scenario_path "$s")")
    fi
    if [ "$code" != "$want" ]; then
      ROW_NOTE[$row]="scenario $s answered $code, expected $want"
      return 1
    fi
  done
  if [ "$row" = haproxy ] || [ "$row" = scopegate ]; then
    # ... and refuses what it must: no token, expired, wrong iss/aud, alg none,
    # HS256 keyed with the public key, a broken signature (tokens_bad.txt).
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${ROW_PORT[$row]}/api/bench")
    [ "$code" = 401 ] || { ROW_NOTE[$row]="no token answered $code, expected 401"; return 1; }
    local label
    while read -r label tok; do
      code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" "http://127.0.0.1:${ROW_PORT[$row]}/api/bench")
      [ "$code" = 401 ] || { ROW_NOTE[$row]="a token with $label answered $code, expected 401"; return 1; }
    done <"$OUT/tokens_bad.txt"
  fi
}

ACTIVE=()
for row in $ROWS; do
  log "starting $row"
  if "start_$row" && check_row "$row"; then
    ACTIVE+=("$row")
    ROW_OK[$row]=1
    if [ -n "${ROW_PID[$row]}" ]; then
      ROW_PIDS[$row]=$(tree_pids "${ROW_PID[$row]}" | tr '\n' ' ')
      # shellcheck disable=SC2086
      ROW_RSS_IDLE[$row]=$(mem_kb VmRSS ${ROW_PIDS[$row]})
    else
      ROW_PIDS[$row]=""
      ROW_RSS_IDLE[$row]=0
    fi
    log "  $row on 127.0.0.1:${ROW_PORT[$row]} pids [${ROW_PIDS[$row]}] idle RSS ${ROW_RSS_IDLE[$row]} kB"
  else
    ROW_OK[$row]=0
    log "  SKIPPING row $row: ${ROW_NOTE[$row]:-failed to start}"
    if [ -n "${ROW_PID[$row]:-}" ]; then kill -TERM "${ROW_PID[$row]}" 2>/dev/null || true; fi
  fi
done
((${#ACTIVE[@]})) || die "no row started"

UP_PIDS=$(tree_pids "$UP_PID" | tr '\n' ' ')

run_wrk() { # port scenario connections duration -> WRK_JSON line on stdout
  local port=$1 s=$2 c=$3 d=$4
  wrk -t1 -c"$c" -d"${d}s" --timeout 10s -s "$BENCH_DIR/wrk.lua" "http://127.0.0.1:$port" \
    -- "$(scenario_path "$s")" "$(scenario_tokens "$s")" 2>&1 |
    awk '/^WRK_JSON / { sub(/^WRK_JSON /, ""); print; found = 1 } END { exit !found }'
}

# scopegate's verified-token cache counters: "hits misses" (0 0 for other rows).
cache_counts() { # row
  if [ "$1" != scopegate ]; then
    echo "0 0"
    return
  fi
  curl -s --max-time 2 "http://127.0.0.1:$P_SG_ADMIN/metrics" |
    awk '/^scopegate_token_cache_requests_total/ { if ($1 ~ /"hit"/) h = $2; if ($1 ~ /"miss"/) m = $2 }
         END { printf "%d %d\n", h, m }'
}

# One measured cell: wrk against a row, gateway and upstream CPU around it.
measure() { # round scenario row
  local round=$1 s=$2 row=$3 port=${ROW_PORT[$3]} pids=${ROW_PIDS[$3]} t0 t1 u0 u1 w h0 m0 h1 m1
  read -r h0 m0 < <(cache_counts "$row")
  # shellcheck disable=SC2086
  t0=$(cpu_ticks $pids)
  # shellcheck disable=SC2086
  u0=$(cpu_ticks $UP_PIDS)
  if ! w=$(run_wrk "$port" "$s" "$CONNECTIONS" "$DURATION"); then
    log "  wrk failed for $row/$s"
    return 0
  fi
  # shellcheck disable=SC2086
  t1=$(cpu_ticks $pids)
  # shellcheck disable=SC2086
  u1=$(cpu_ticks $UP_PIDS)
  read -r h1 m1 < <(cache_counts "$row")
  printf '{"round":%d,"scenario":"%s","row":"%s","expect":%d,"cpu_ms":%d,"upstream_cpu_ms":%d,"cache_hits":%d,"cache_misses":%d,"wrk":%s}\n' \
    "$round" "$s" "$row" "$(scenario_status "$s")" \
    $(((t1 - t0) * 1000 / CLK_TCK)) $(((u1 - u0) * 1000 / CLK_TCK)) $((h1 - h0)) $((m1 - m0)) "$w" >>"$RAW"
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); w=r["wrk"]; n=w["requests"]; c=r["cache_hits"]+r["cache_misses"]; print("  r%d %-6s %-9s %9.0f req/s  p50 %6.2f ms  p99 %6.2f ms  cpu %7.1f ms/1k  status-errors %d%s" % (r["round"], r["scenario"], r["row"], n/(w["duration_us"]/1e6), w["latency_us"]["p50"]/1e3, w["latency_us"]["p99"]/1e3, r["cpu_ms"]*1000/max(n,1), w["errors"]["status"], "  cache hits %.0f%%" % (100*r["cache_hits"]/c) if c else ""))' "$(tail -n1 "$RAW")" >&2
}

for row in "${ACTIVE[@]}"; do
  log "warm-up $row (${WARMUP}s hot)"
  run_wrk "${ROW_PORT[$row]}" hot "$CONNECTIONS" "$WARMUP" >/dev/null || true
done

declare -A ROW_RSS_C1000
# RSS while 1,000 connections are open (sampled in the middle of a hot run),
# before the rounds, so that it measures connections, not a full token cache.
if [ "$C1000" = 1 ]; then
  for row in "${ACTIVE[@]}"; do
    [ "$row" = direct ] && continue
    log "1,000 connections on $row (${C1000_DURATION}s hot)"
    (
      sleep $((C1000_DURATION / 2))
      # shellcheck disable=SC2086
      mem_kb VmRSS ${ROW_PIDS[$row]} >"$OUT/c1000_$row.rss"
    ) &
    sampler=$!
    w=$(run_wrk "${ROW_PORT[$row]}" hot 1000 "$C1000_DURATION" || echo '{}')
    wait "$sampler" || true
    ROW_RSS_C1000[$row]=$(cat "$OUT/c1000_$row.rss" 2>/dev/null || echo 0)
    echo "{\"c1000\":\"$row\",\"rss_kb\":${ROW_RSS_C1000[$row]},\"wrk\":$w}" >>"$RAW"
    log "  $row: ${ROW_RSS_C1000[$row]} kB with 1,000 connections"
  done
fi
# Interleaved: every round runs every scenario on every row, rotating the row
# order so that no row always goes first (or always follows the same one).
n_active=${#ACTIVE[@]}
for round in $(seq "$ROUNDS"); do
  log "round $round/$ROUNDS (${DURATION}s per cell, $CONNECTIONS connections)"
  for s in $SCENARIOS; do
    for i in $(seq 0 $((n_active - 1))); do
      measure "$round" "$s" "${ACTIVE[$(((i + round - 1) % n_active))]}"
    done
  done
done

declare -A ROW_RSS_AFTER ROW_HWM
for row in "${ACTIVE[@]}"; do
  # shellcheck disable=SC2086
  ROW_RSS_AFTER[$row]=$(mem_kb VmRSS ${ROW_PIDS[$row]})
done

for row in "${ACTIVE[@]}"; do
  # shellcheck disable=SC2086
  ROW_HWM[$row]=$(mem_kb VmHWM ${ROW_PIDS[$row]})
done

# p99 added over direct at half of each gateway's max hot load, at a fixed
# request rate (hey -q: per-worker rate limit; closed loop, so a stall delays
# the next request instead of piling up: an approximation of wrk2).
HALF_FILE=$OUT/half_load.jsonl
: >"$HALF_FILE"
if [ "$HALF_LOAD" = 1 ] && command -v hey >/dev/null && [[ " $SCENARIOS " == *" hot "* ]]; then
  tok=$(head -n1 "$OUT/tokens_hot.txt")
  hey_p99() { # port rate -> "rps p50_ms p99_ms"
    local port=$1 rate=$2 c q
    c=$CONNECTIONS
    q=$(((rate + c - 1) / c))
    hey -z "${HALF_DURATION}s" -c "$c" -q "$q" -H "Authorization: Bearer $tok" \
      "http://127.0.0.1:$port/api/bench" 2>/dev/null |
      awk '/Requests\/sec:/ { rps = $2 } /50%% in|50% in/ { p50 = $3 * 1000 } /99% in/ { p99 = $3 * 1000 } END { printf "%s %s %s\n", rps, p50, p99 }'
  }
  declare -A HALF_RATE
  for row in "${ACTIVE[@]}"; do
    [ "$row" = direct ] && continue
    max=$(python3 - "$RAW" "$row" <<'EOF'
import json, statistics, sys
rates = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("row") == sys.argv[2] and r.get("scenario") == "hot":
        w = r["wrk"]
        rates.append(w["requests"] / (w["duration_us"] / 1e6))
print(int(statistics.median(rates)) if rates else 0)
EOF
)
    [ "$max" -gt 0 ] && HALF_RATE[$row]=$((max / 2))
  done
  # Like the main cells: rounds, the rows interleaved in each, and direct
  # measured right before each gateway at that gateway's rate, so a noisy
  # minute touches one pair of one round rather than a row's only figure.
  for round in $(seq "$HALF_ROUNDS"); do
    for row in "${ACTIVE[@]}"; do
      rate=${HALF_RATE[$row]:-}
      [ -n "$rate" ] || continue
      log "half load r$round: $rate req/s (half of $row's hot max) on direct and $row"
      read -r d_rps d_p50 d_p99 < <(hey_p99 "$P_UP" "$rate")
      read -r g_rps g_p50 g_p99 < <(hey_p99 "${ROW_PORT[$row]}" "$rate")
      echo "{\"row\":\"$row\",\"round\":$round,\"target_rps\":$rate,\"direct\":{\"rps\":${d_rps:-0},\"p50_ms\":${d_p50:-0},\"p99_ms\":${d_p99:-0}},\"gateway\":{\"rps\":${g_rps:-0},\"p50_ms\":${g_p50:-0},\"p99_ms\":${g_p99:-0}}}" >>"$HALF_FILE"
      log "  direct p99 ${d_p99:-?} ms, $row p99 ${g_p99:-?} ms"
    done
  done
fi

# --- report ------------------------------------------------------------------
{
  printf '{"date":"%s","nproc":%d,"cpu_model":"%s","kernel":"%s",' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$NPROC" "$CPU_MODEL" "$(uname -r)"
  printf '"duration_s":%d,"rounds":%d,"connections":%d,"workers":%d,"tokens":%d,"alg":"%s","scenarios":"%s",' \
    "$DURATION" "$ROUNDS" "$CONNECTIONS" "$WORKERS" "$TOKENS" "$ALG" "$SCENARIOS"
  printf '"versions":{"nginx":"%s","haproxy":"%s","wrk":"%s","openssl":"%s","scopegate":"%s"},' \
    "$(nginx -v 2>&1 | sed 's/.*\///')" "$(haproxy -v | awk 'NR == 1 { print $3 }')" \
    "$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')" "$(openssl version | awk '{ print $2 }')" \
    "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  printf '"rows":{'
  first=1
  for row in $ROWS; do
    ((first)) || printf ','
    first=0
    note=${ROW_NOTE[$row]:-}
    note=${note//\\/\\\\}
    note=${note//\"/\\\"}
    printf '"%s":{"ok":%s,"note":"%s","rss_idle_kb":%d,"rss_after_kb":%d,"rss_peak_kb":%d,"rss_c1000_kb":%d}' \
      "$row" "$([ "${ROW_OK[$row]}" = 1 ] && echo true || echo false)" "$note" \
      "${ROW_RSS_IDLE[$row]:-0}" "${ROW_RSS_AFTER[$row]:-0}" "${ROW_HWM[$row]:-0}" "${ROW_RSS_C1000[$row]:-0}"
  done
  printf '}}\n'
} >"$META"

python3 "$BENCH_DIR/report.py" --out "$OUT"
log "done: $OUT/results.md and $OUT/results.json"
