#!/usr/bin/env bash
# Catch-up cost as the log grows (issue 15): does one consumer read a 10× larger log at the
# same cost per record? One `pinstream run` per size (acks durable, durability `interval`,
# high-priority 100-byte events filled by `pinstream loadgen`), all filled first; then ROUNDS
# rounds, each reading every log once from its first record to its high watermark with
# client/examples/catchup.rs, sizes in turn, so that other work on the machine falls on
# every size alike. The stores are deleted at the end (and on any exit).
#
# Usage (from anywhere in the repository):
#   benches/catchup-growth.sh [N ...]          default: 1000000 10000000
# Each N needs ~190 MB of disk per million events; check `df -h` first.
# Environment:
#   ROUNDS=4          read rounds
#   STORE_ROOT=DIR    where the stores go (default target/catchup-growth)
#   PINSTREAM=PATH    pinstream binary (default: built, target/release/pinstream)
#   CATCHUP=PATH      catch-up reader (default: built, target/release/examples/catchup)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-4}
STORE_ROOT=${STORE_ROOT:-$ROOT/target/catchup-growth}
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1000000 10000000)
for n in "${SIZES[@]}"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "catchup-growth: $n is not a positive count" >&2; exit 2; }
done
if [ -z "${PINSTREAM:-}" ]; then
    cargo build --release --quiet -p pinstream
    PINSTREAM=$ROOT/target/release/pinstream
fi
if [ -z "${CATCHUP:-}" ]; then
    cargo build --release --quiet -p pinstream-client --example catchup
    CATCHUP=$ROOT/target/release/examples/catchup
fi

declare -A PID CONS
cleanup() {
    local n
    for n in "${!PID[@]}"; do
        kill -TERM "${PID[$n]}" 2>/dev/null || true
        wait "${PID[$n]}" 2>/dev/null || true
    done
    rm -rf "$STORE_ROOT"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for n in "${SIZES[@]}"; do
    dir=$STORE_ROOT/$n
    mkdir -p "$dir/store"
    cat >"$dir/pinstream.toml" <<EOF
[engine]
overprovisioned = true
ack = "durable"
[tcp]
listen = "127.0.0.1:0"
[udp]
listen = "off"
[admin]
listen = "off"
[consumers]
listen = "127.0.0.1:0"
[storage]
dir = "$dir/store"
durability = "interval"
EOF
    "$PINSTREAM" run --config "$dir/pinstream.toml" >"$dir/pinstream.log" 2>&1 &
    PID[$n]=$!
    for _ in $(seq 300); do
        grep -q '^listening' "$dir/pinstream.log" && break
        kill -0 "${PID[$n]}" 2>/dev/null || { cat "$dir/pinstream.log" >&2; exit 1; }
        sleep 0.1
    done
    line=$(grep -m1 '^listening' "$dir/pinstream.log") || { echo "pinstream run did not start" >&2; exit 1; }
    tcp=$(sed -E 's/.* tcp=([^ ]+).*/\1/' <<<"$line")
    CONS[$n]=$(sed -E 's/.* consumers=([^ ]+).*/\1/' <<<"$line")
    stored=$("$PINSTREAM" loadgen --addr "$tcp" --events "$n" --payload 100 --priority high --json |
        tail -n1 | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["stored"] if j["dead_lettered"]==0 else -1)')
    [ "$stored" = "$n" ] || { echo "catchup-growth: $n events sent, $stored stored" >&2; exit 1; }
    echo "filled $n events: $(du -sh "$dir/store" | cut -f1) on disk, $(df -h --output=avail "$dir" | tail -1 | tr -d ' ') free"
done
echo "load average before the reads: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    for n in "${SIZES[@]}"; do
        echo "round $r: $("$CATCHUP" "${CONS[$n]}" realtime)"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
