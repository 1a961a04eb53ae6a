#!/usr/bin/env bash
# A live engine scraped by Prometheus with deploy/prometheus.yml and deploy/pinstream-alerts.yml,
# under a paced load with a named consumer following, then the dashboard's panels rendered
# to docs/dashboard.png (scripts/render-dashboard.py). Needs prometheus (Debian package) and
# python3 with matplotlib (pip install matplotlib). Run by hand, not in CI:
#
#   ./scripts/monitoring-demo.sh [SECONDS]      # default 180
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-180}
for tool in prometheus python3; do
    command -v "$tool" > /dev/null || { echo "missing $tool" >&2; exit 1; }
done
python3 -c "import matplotlib" 2> /dev/null || { echo "missing matplotlib: pip install matplotlib" >&2; exit 1; }
cargo build --release -p pinstream
bin=$PWD/target/release/pinstream
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
cp deploy/prometheus.yml deploy/pinstream-alerts.yml "$dir/"
(cd "$dir" && exec "$bin" run --status-every 0) > "$dir/run.log" 2>&1 &
pids+=($!)
prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/tsdb" \
    --web.listen-address=127.0.0.1:9091 > "$dir/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening' "$dir/run.log" && break; sleep 0.2; done
"$bin" consume --log realtime --from latest --consumer dashboard --follow > /dev/null &
pids+=($!)
echo "load for ${secs}s: 20 k events/s, then 60 k/s"
"$bin" loadgen --rate 20000 --duration $((secs / 2)) --priority high:2,medium:2,batch:1 > /dev/null
"$bin" loadgen --rate 60000 --duration $((secs / 2)) --priority critical:1,high:2,medium:2,batch:1 > /dev/null
sleep 6
python3 scripts/render-dashboard.py --prometheus http://127.0.0.1:9091 \
    --minutes "$(python3 -c "print(($secs + 20) / 60)")" --out docs/dashboard.png
