#!/usr/bin/env bash
# TLS on the binary TCP port against plain TCP (issue 17, item 3): the same `pinstream
# loadgen` load (stored events only: priority high = the transactional lane, payload 100 B,
# acks durable under the default `interval` durability) against `pinstream run` (release)
# with tcp.tls_cert set and not, in interleaved rounds plain/TLS/plain/TLS/... in one run.
# Each round is a fresh engine; the figure is loadgen's stored events/s (from the engine's
# ACKs), cross-checked with pinstream_events_stored_total and the TLS counters.
#
#   cargo build --release -p pinstream && benches/tls/measure.sh [rounds] [events] [connections]
#
# Needs openssl (a test CA made here) and curl. Ports 17070 (tcp), 19090 (admin) on loopback;
# data and keys in a temporary directory, removed at the end.
set -euo pipefail
rounds=${1:-3}
events=${2:-2000000}
conns=${3:-4}
here=$(cd "$(dirname "$0")" && pwd)
bin=${PINSTREAM:-$here/../../target/release/pinstream}
dir=$(mktemp -d /tmp/pinstream-tcptls-bench.XXXXXX)
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
listen = "127.0.0.1:17070"
$tls
[udp]
listen = "off"
[admin]
listen = "127.0.0.1:19090"
[consumers]
listen = "off"
[storage]
dir = "$dir/data-$RANDOM"
TOML
  rm -f "$dir/run.log"
  "$bin" run --config "$dir/c.toml" > "$dir/run.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q '^listening' "$dir/run.log" 2>/dev/null && return; sleep 0.1; done
  cat "$dir/run.log"; exit 1
}
stop() { kill "$pid"; wait "$pid" || true; pid=; rm -rf "$dir"/data-*; }
metric() { curl -s 127.0.0.1:19090/metrics | grep "^$1" | awk '{print $2}' | head -1; }

declare -A sum=([plain]=0 [tls]=0)
for r in $(seq "$rounds"); do
  for mode in plain tls; do
    start "$mode"
    extra=()
    [ "$mode" = tls ] && extra=(--tls --cacert "$dir/ca.pem")
    echo "== round $r, $mode: pinstream loadgen --addr 127.0.0.1:17070 ${extra[*]/$dir\//} --events $events --connections $conns --payload 100 --priority high"
    out=$("$bin" loadgen --addr 127.0.0.1:17070 "${extra[@]}" --events "$events" \
      --connections "$conns" --payload 100 --priority high --quiet --json)
    echo "$out" | tr ',' '\n' | grep -E '"(stored|duplicates|rejected|dead_lettered|stored_per_sec|ack_p50_us|ack_p99_us)"' | tr '\n' ' '; echo
    rate=$(echo "$out" | tr ',' '\n' | grep '"stored_per_sec"' | head -1 | sed 's/.*://; s/[^0-9.]//g')
    sum[$mode]=$(awk -v a="${sum[$mode]}" -v b="$rate" 'BEGIN{print a+b}')
    echo "   engine: stored $(metric 'pinstream_events_stored_total{stage="process"}'), tls handshakes $(metric pinstream_tcp_tls_handshakes_total), failures $(metric pinstream_tcp_tls_handshake_failures_total)"
    stop
  done
done
awk -v p="${sum[plain]}" -v t="${sum[tls]}" -v n="$rounds" \
  'BEGIN{printf "mean stored events/s: plain %.0f, TLS %.0f, TLS/plain = %.0f %%\n", p/n, t/n, 100*t/p}'
