#!/usr/bin/env bash
# HTTP ingest figures (issue 17): starts `pinstream run` (release) with the gateway on, drives
# it with wrk, and reports requests/s (wrk) and stored events/s (the engine's own
# pinstream_events_stored_total before and after, over the same seconds). Then the binary TCP
# path with `pinstream loadgen`, gateway enabled and idle vs disabled, in the same run.
#
#   cargo build --release -p pinstream && benches/http/measure.sh [seconds] [connections] [connections for single events]
#
# Needs wrk (Debian: apt-get install wrk) and curl. Ports 17070 (tcp), 17080 (http), 19090
# (admin) on loopback; data in a temporary directory, removed at the end.
set -euo pipefail
secs=${1:-10}
conns=${2:-32}
single_conns=${3:-$conns}
here=$(cd "$(dirname "$0")" && pwd)
bin=${PINSTREAM:-$here/../../target/release/pinstream}
dir=$(mktemp -d /tmp/pinstream-http-bench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

start() { # $1: http listen ("off" or an address)
  cat > "$dir/c.toml" <<TOML
[tcp]
listen = "127.0.0.1:17070"
[udp]
listen = "off"
[admin]
listen = "127.0.0.1:19090"
[consumers]
listen = "off"
[storage]
dir = "$dir/data-$RANDOM"
[http]
listen = "$1"
TOML
  rm -f "$dir/run.log"
  "$bin" run --config "$dir/c.toml" > "$dir/run.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q '^listening' "$dir/run.log" 2>/dev/null && return; sleep 0.1; done
  cat "$dir/run.log"; exit 1
}
stop() { kill "$pid"; wait "$pid" || true; pid=; grep -E '^stopped' "$dir/run.log"; }
stored() { curl -s 127.0.0.1:19090/metrics | grep '^pinstream_events_stored_total{stage="process"}' | awk '{print $2}'; }

wrk_run() { # $1: script, $2: label; $threads wrk threads
  local before after
  before=$(stored)
  local t0=$(date +%s.%N)
  wrk -t"${threads:-1}" -c"$conns" -d"${secs}s" -s "$here/$1" http://127.0.0.1:17080/v1/events > "$dir/wrk.out"
  local t1=$(date +%s.%N)
  after=$(stored)
  echo "== $2: wrk -t${threads:-1} -c$conns -d${secs}s -s benches/http/$1"
  grep -E 'Requests/sec|Non-2xx|Latency|Socket errors' "$dir/wrk.out" || true
  awk -v a="$after" -v b="$before" -v t0="$t0" -v t1="$t1" \
    'BEGIN{printf "stored events/s: %.0f (%d stored in %.1f s)\n", (a-b)/(t1-t0), a-b, t1-t0}'
}

start "127.0.0.1:17080"
wrk_run ndjson.lua "NDJSON, 100 events x 100 bytes per request, keep-alive"
threads=2 conns=$single_conns wrk_run single.lua "one event per request, keep-alive"
stop

loadgen() { "$bin" loadgen --addr 127.0.0.1:17070 --events 2000000 --payload 100 --priority high --json \
  | tr ',' '\n' | grep -E '"(stored|events_per_sec|stored_per_sec)"' | tr '\n' ' '; echo; }
for mode in "127.0.0.1:17080" off "127.0.0.1:17080" off; do
  start "$mode"
  echo "== binary TCP, http.listen = $mode (idle): pinstream loadgen --events 2000000 --payload 100 --priority high"
  loadgen
  stop
done
