#!/usr/bin/env bash
# gRPC ingest figures (issue 17): starts `pinstream run` (release) with the gRPC and HTTP
# gateways on, and drives both with the same `pinstream loadgen` in the same run:
#   - gRPC PublishStream (--transport grpc), 100 events x 100 bytes per request,
#   - gRPC unary Publish (--transport grpc --grpc-unary), the same requests,
#   - HTTP NDJSON (--transport http), the same requests,
#   - one event per request, gRPC unary and HTTP (requests/s).
# Counted: STORED events only, from the engine's own pinstream_events_stored_total{stage=
# "process"} before and after each load (and the loadgen's own count of acknowledged stored
# events); lane: priority high (the transactional log), engine.ack = durable (the default:
# every request is answered after its events are committed).
#
#   cargo build --release -p pinstream && benches/grpc/measure.sh [events] [connections] [unary connections]
#
# Needs curl. Ports 17070 (tcp), 17080 (http), 17090 (grpc), 19090 (admin) on loopback;
# data in a temporary directory, removed at the end.
set -euo pipefail
events=${1:-2000000}
conns=${2:-16}
unary_conns=${3:-32}
here=$(cd "$(dirname "$0")" && pwd)
bin=${PINSTREAM:-$here/../../target/release/pinstream}
dir=$(mktemp -d /tmp/pinstream-grpc-bench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

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
dir = "$dir/data"
[http]
listen = "127.0.0.1:17080"
[grpc]
listen = "127.0.0.1:17090"
TOML
"$bin" run --config "$dir/c.toml" > "$dir/run.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q '^listening' "$dir/run.log" 2>/dev/null && break; sleep 0.1; done
grep -q '^listening' "$dir/run.log" || { cat "$dir/run.log"; exit 1; }
stored() { curl -s 127.0.0.1:19090/metrics | grep '^pinstream_events_stored_total{stage="process"}' | awk '{print $2}'; }

run() { # $1: label, $2: events, rest: loadgen flags
  local label=$1 n=$2; shift 2
  local before after t0 t1 ids
  ids=$(( ${id:-0} + 1 )); id=$(( ids + n ))
  before=$(stored)
  t0=$(date +%s.%N)
  "$bin" loadgen --events "$n" --payload 100 --batch "${batch:-100}" --priority high --connections "$conns" \
    --id-base "$ids" --json "$@" > "$dir/lg.json"
  t1=$(date +%s.%N)
  after=$(stored)
  echo "== $label: pinstream loadgen --events $n --payload 100 --batch ${batch:-100} --priority high --connections $conns $*"
  tr ',' '\n' < "$dir/lg.json" | grep -E '"(sent|frames|stored|events_per_sec|ack_p50_us|ack_p99_us)"' | tr '\n' ' '; echo
  awk -v a="$after" -v b="$before" -v t0="$t0" -v t1="$t1" -v r="$n" \
    -v per="${batch:-100}" \
    'BEGIN{printf "stored events/s: %.0f (%d stored in %.2f s), requests/s: %.0f\n", (a-b)/(t1-t0), a-b, t1-t0, (a-b)/per/(t1-t0)}'
}

run "gRPC PublishStream" "$events" --transport grpc --addr 127.0.0.1:17090 --inflight 64
conns=$unary_conns run "gRPC unary Publish" "$((events / 4))" --transport grpc --grpc-unary --addr 127.0.0.1:17090
run "HTTP NDJSON" "$events" --transport http --addr 127.0.0.1:17080
batch=1 conns=$unary_conns run "gRPC unary Publish, 1 event per request" "$((events / 40))" --transport grpc --grpc-unary --addr 127.0.0.1:17090
batch=1 conns=$unary_conns run "HTTP, 1 event per request" "$((events / 40))" --transport http --addr 127.0.0.1:17080
conns=$unary_conns run "HTTP NDJSON, $unary_conns connections" "$events" --transport http --addr 127.0.0.1:17080
run "gRPC PublishStream (again)" "$events" --transport grpc --addr 127.0.0.1:17090 --inflight 64
kill "$pid"; wait "$pid" || true; pid=
grep -E '^stopped' "$dir/run.log" || tail -3 "$dir/run.log"
