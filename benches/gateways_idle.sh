#!/usr/bin/env bash
# Binary TCP throughput with the HTTP and gRPC gateways enabled and idle vs both off (issue 17:
# "The binary TCP path's throughput must not drop with the gateways enabled and idle").
#
# Two modes, each round a fresh `pinstream run` (release) and a fresh data directory,
# interleaved off/idle/off/idle/... (or the order given):
#   off   http.listen = "off",             grpc.listen = "off"
#   idle  http.listen = "127.0.0.1:17080", grpc.listen = "127.0.0.1:17090", no traffic on either
# The rest is the default config (engine.ack = "durable", storage.durability = "interval",
# placement auto); UDP and the consumer listener off; TLS on the binary port is not part of it.
# Load: `pinstream loadgen --addr 127.0.0.1:17070 --events N --payload 100 --priority high`
# (the transactional lane, loadgen's default connections and batch). Counted: STORED events
# only: loadgen's stored_per_sec (from the engine's durable ACKs), checked against the
# engine's pinstream_events_stored_total{stage="process"}; dead-lettered and rejected must
# be 0; the gateways' request counters must stay 0 (idle). Every command is printed.
#
#   cargo build --release -p pinstream && benches/gateways_idle.sh [rounds] [events] ["off idle"]
#
# Needs curl. Ports 17070 (tcp), 17080 (http), 17090 (grpc), 19092 (admin) on loopback; data
# in a temporary directory, removed at the end.
set -euo pipefail
rounds=${1:-5}
events=${2:-2000000}
order=${3:-off idle}
here=$(cd "$(dirname "$0")" && pwd)
bin=${PINSTREAM:-$here/../target/release/pinstream}
dir=$(mktemp -d /tmp/pinstream-gwidle-bench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

say() { echo "+ $*"; }

start() { # $1: off | idle
  local http=off grpc=off
  if [ "$1" = idle ]; then http=127.0.0.1:17080; grpc=127.0.0.1:17090; fi
  cat > "$dir/c.toml" <<TOML
[tcp]
listen = "127.0.0.1:17070"
[udp]
listen = "off"
[admin]
listen = "127.0.0.1:19092"
[consumers]
listen = "off"
[storage]
dir = "$dir/data-$RANDOM"
[http]
listen = "$http"
[grpc]
listen = "$grpc"
TOML
  say "$bin run --config c.toml   # [http] listen = \"$http\", [grpc] listen = \"$grpc\""
  rm -f "$dir/run.log"
  "$bin" run --config "$dir/c.toml" > "$dir/run.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q '^listening' "$dir/run.log" 2>/dev/null && break; sleep 0.1; done
  grep -q '^listening' "$dir/run.log" || { cat "$dir/run.log"; exit 1; }
  sleep 0.5 # gateways bound and settled before the load
}
stop() { kill "$pid"; wait "$pid" || true; pid=; rm -rf "$dir"/data-*; }
metric() { # sum of the series of a metric name (0 when absent)
  curl -s 127.0.0.1:19092/metrics | awk -v m="$1" 'index($0, m) == 1 && substr($0, length(m) + 1, 1) ~ /[{ ]/ {s += $NF} END {printf "%.0f\n", s}'
}
field() { tr ',' '\n' < "$dir/lg.json" | grep "\"$1\"" | cut -d: -f2 | tr -d '}" ' ; }
cpu_s() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; } # utime + stime (USER_HZ 100)
gw_cpu() { # CPU seconds of the gateways' thread (HTTP and gRPC share "pinstream-http"), "-" when off
  local t
  for t in /proc/"$pid"/task/*; do
    [ "$(cat "$t/comm")" = pinstream-http ] && { cpu_s "$pid/task/${t##*/}"; return; }
  done
  echo -
}

printf 'mode round stored_per_sec\n' > "$dir/results"
say "uptime"; uptime
for r in $(seq "$rounds"); do
  for mode in $order; do
    start "$mode"
    cpu0=$(cpu_s "$pid")
    say "$bin loadgen --addr 127.0.0.1:17070 --events $events --payload 100 --priority high --quiet --json"
    "$bin" loadgen --addr 127.0.0.1:17070 --events "$events" --payload 100 --priority high --quiet --json > "$dir/lg.json"
    cpu1=$(cpu_s "$pid")
    sps=$(field stored_per_sec)
    stored=$(field stored); dl=$(field dead_lettered); rej=$(field rejected)
    engine_stored=$(metric 'pinstream_events_stored_total{stage="process"}')
    http_req=$(metric pinstream_http_requests_total); grpc_req=$(metric pinstream_grpc_requests_total)
    printf '== round %d %-4s: stored/s %s  stored %s (engine %s)  dead_lettered %s  rejected %s  ack p50/p99 %s/%s us  engine CPU %.2f s (gateway thread %s s)  http/grpc requests %s/%s  load %s\n' \
      "$r" "$mode" "$sps" "$stored" "$engine_stored" "$dl" "$rej" "$(field ack_p50_us)" "$(field ack_p99_us)" \
      "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{print b - a}')" "$(gw_cpu)" "$http_req" "$grpc_req" "$(cut -d' ' -f1 /proc/loadavg)"
    if [ "$stored" != "$events" ] || [ "$dl" != 0 ] || [ "$rej" != 0 ] || [ "$http_req" != 0 ] || [ "$grpc_req" != 0 ]; then
      echo "!! round $r $mode: not every event stored, or dead-lettered/rejected, or gateway traffic"; cat "$dir/lg.json"
    fi
    echo "$mode $r $sps" >> "$dir/results"
    stop
  done
done
say "uptime"; uptime

echo "== summary (stored events/s, $rounds rounds each, $events events per round)"
for mode in $order; do
  awk -v m="$mode" '$1 == m {print $3}' "$dir/results" | sort -n | awk -v m="$mode" '
    {v[NR] = $1; s += $1}
    END {med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
         for (i = 1; i <= NR; i++) d += (v[i] - s / NR) ^ 2
         sd = NR > 1 ? sqrt(d / (NR - 1)) : 0
         printf "%-4s n=%d mean %.0f median %.0f min %.0f max %.0f stdev %.0f (%.1f %%)\n", m, NR, s / NR, med, v[1], v[NR], sd, 100 * sd / (s / NR)}'
done | tee "$dir/summary"
awk '{mean[$1] = $4; med[$1] = $6} END {if (("idle" in mean) && ("off" in mean))
  printf "idle / off: mean %.3f, median %.3f\n", mean["idle"] / mean["off"], med["idle"] / med["off"]}' "$dir/summary"
