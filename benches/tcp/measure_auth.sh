#!/usr/bin/env bash
# Tokens on the binary TCP port (issue 17 item 4): the same loadgen run against `pinstream
# run` (release) with tcp.auth = "token" and with tcp.auth = "none", alternating
# on/off/on/off/... in one run, a fresh engine and data directory each. Stored events only
# (loadgen's stored_per_sec, from the engine's ACKs; acks durable, durability interval).
#
#   cargo build --release -p pinstream && benches/tcp/measure_auth.sh [seconds] [pairs] ["none token"]
#
# Ports 17070 (tcp) and 19091 (admin) on loopback; data in a temporary directory, removed at
# the end. The token is allowed topic "default" only (a topic bit test per event) with a rate
# far above what is sent (a bucket grant per frame, nothing refused).
set -euo pipefail
secs=${1:-8}
pairs=${2:-3}
order=${3:-token none}  # which goes first in each pair (e.g. "none token" to check the order does not matter)
here=$(cd "$(dirname "$0")" && pwd)
bin=${PINSTREAM:-$here/../../target/release/pinstream}
dir=$(mktemp -d /tmp/pinstream-auth-bench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
token=bench-token-$RANDOM$RANDOM
hash=$(printf '%s\n' "$token" | "$bin" token-hash)

start() { # $1: "token" or "none"
  cat > "$dir/c.toml" <<TOML
[tcp]
listen = "127.0.0.1:17070"
auth = "$1"
[udp]
listen = "off"
[admin]
listen = "127.0.0.1:19091"
[consumers]
listen = "off"
[storage]
dir = "$dir/data-$RANDOM"
[[auth.tokens]]
name = "bench"
sha256 = "$hash"
topics = ["default"]
rate = 1000000000
burst = 100000000
TOML
  rm -f "$dir/run.log"
  "$bin" run --config "$dir/c.toml" > "$dir/run.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q '^listening' "$dir/run.log" 2>/dev/null && return; sleep 0.1; done
  cat "$dir/run.log"; exit 1
}
stop() { kill "$pid"; wait "$pid" || true; pid=; rm -rf "$dir"/data-*; }

for _ in $(seq "$pairs"); do
  for mode in $order; do
    start "$mode"
    extra=()
    [ "$mode" = token ] && extra=(--token "$token")
    echo "== tcp.auth = $mode: pinstream loadgen --addr 127.0.0.1:17070 ${extra[*]/$token/\$TOKEN} --duration $secs --payload 100 --priority high"
    "$bin" loadgen --addr 127.0.0.1:17070 "${extra[@]}" --duration "$secs" --payload 100 \
      --priority high --quiet --json \
      | tr ',' '\n' | grep -E '"(stored|rejected|dead_lettered|stored_per_sec|ack_p50_us|ack_p99_us)"' | tr '\n' ' '; echo
    grep -E '^tcp auth' "$dir/run.log" || true
    stop
  done
done
