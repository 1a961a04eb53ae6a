#!/usr/bin/env bash
# HTTPS vs plain HTTP on the gateway (issue 17): the same NDJSON load (100 events x 100 bytes
# per request, keep-alive) against `pinstream run` (release) with http.tls_cert set and not,
# alternating plain/TLS/plain/TLS in one run. Driven by `pinstream loadgen --transport http`
# (stored events/s from the gateway's answers, request latency) and cross-checked with wrk
# (stored events/s from the engine's pinstream_events_stored_total before and after).
#
#   cargo build --release -p pinstream && benches/http/measure_tls.sh [seconds] [connections]
#
# Needs openssl (a test CA made here), wrk and curl. Ports 17080 (http), 19090 (admin) on
# loopback; data and keys in a temporary directory, removed at the end.
set -euo pipefail
secs=${1:-8}
conns=${2:-32}
here=$(cd "$(dirname "$0")" && pwd)
bin=${PINSTREAM:-$here/../../target/release/pinstream}
dir=$(mktemp -d /tmp/pinstream-tls-bench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

# A CA and a server certificate for 127.0.0.1 (P-256).
( cd "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
    -subj /CN=bench-ca -days 1 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr \
    -subj /CN=127.0.0.1 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n' > ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out server.pem -extfile ext 2>/dev/null )

start() { # $1: "tls" or "plain"
  local tls=""
  [ "$1" = tls ] && tls="tls_cert = \"$dir/server.pem\"
tls_key = \"$dir/server.key\""
  cat > "$dir/c.toml" <<TOML
[tcp]
listen = "off"
[udp]
listen = "off"
[admin]
listen = "127.0.0.1:19090"
[consumers]
listen = "off"
[storage]
dir = "$dir/data-$RANDOM"
[http]
listen = "127.0.0.1:17080"
$tls
TOML
  rm -f "$dir/run.log"
  "$bin" run --config "$dir/c.toml" > "$dir/run.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q '^listening' "$dir/run.log" 2>/dev/null && return; sleep 0.1; done
  cat "$dir/run.log"; exit 1
}
stop() { kill "$pid"; wait "$pid" || true; pid=; rm -rf "$dir"/data-*; }
stored() { curl -s 127.0.0.1:19090/metrics | grep '^pinstream_events_stored_total{stage="process"}' | awk '{print $2}'; }

for mode in plain tls plain tls; do
  start "$mode"
  if [ "$mode" = tls ]; then scheme=https; extra=(--https --cacert "$dir/ca.pem"); else scheme=http; extra=(); fi
  echo "== $mode: pinstream loadgen --transport http --addr 127.0.0.1:17080 ${extra[*]/$dir\//} --duration $secs --connections $conns --batch 100 --payload 100"
  "$bin" loadgen --transport http --addr 127.0.0.1:17080 "${extra[@]}" --duration "$secs" \
    --connections "$conns" --batch 100 --payload 100 --quiet --json \
    | tr ',' '\n' | grep -E '"(stored|rejected|dead_lettered|stored_per_sec|ack_p50_us|ack_p99_us)"' | tr '\n' ' '; echo
  before=$(stored); t0=$(date +%s.%N)
  wrk -t1 -c"$conns" -d"${secs}s" -s "$here/ndjson.lua" "$scheme://127.0.0.1:17080/v1/events" > "$dir/wrk.out"
  t1=$(date +%s.%N); after=$(stored)
  echo "== $mode: wrk -t1 -c$conns -d${secs}s -s benches/http/ndjson.lua $scheme://127.0.0.1:17080/v1/events"
  grep -E 'Requests/sec|Non-2xx|Socket errors' "$dir/wrk.out" || true
  awk -v a="$after" -v b="$before" -v t0="$t0" -v t1="$t1" \
    'BEGIN{printf "stored events/s: %.0f (%d stored in %.1f s)\n", (a-b)/(t1-t0), a-b, t1-t0}'
  stop
done
