#!/usr/bin/env python3
"""Renders deploy/grafana-dashboard.json's panels to a PNG from a live Prometheus.

Grafana is not installable on the machines this project is built on (neither Debian's
packages nor the registries it reaches carry it), so this evaluates every panel's queries
through Prometheus's query_range API, the same PromQL Grafana would send, and draws them
with matplotlib in the dashboard's grid. Usage (scripts/monitoring-demo.sh runs it):

    python3 scripts/render-dashboard.py --prometheus http://127.0.0.1:9091 \
        --minutes 3 --out docs/dashboard.png
"""
import argparse
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def query_range(base, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise SystemExit(f"query failed: {expr}: {body}")
    return body["data"]["result"]


def legend(fmt, labels):
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:9091")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--step", type=float, default=2.0)
    ap.add_argument("--dashboard", default=str(ROOT / "deploy/grafana-dashboard.json"))
    ap.add_argument("--out", default=str(ROOT / "docs/dashboard.png"))
    args = ap.parse_args()

    dash = json.loads(Path(args.dashboard).read_text())
    end = time.time()
    start = end - args.minutes * 60
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(18, rows * 0.42))
    fig.suptitle(
        f"{dash['title']}: deploy/grafana-dashboard.json's queries, rendered from Prometheus "
        f"({args.minutes:.1f} min; all-zero series left out)",
        fontsize=13,
        y=0.93,
    )
    grid = fig.add_gridspec(rows, 24, hspace=2.4, wspace=1.2)
    series = 0
    hidden = 0
    for p in panels:
        g = p["gridPos"]
        ax = fig.add_subplot(grid[g["y"] + 1 : g["y"] + g["h"], g["x"] : g["x"] + g["w"]])
        ax.set_title(p["title"], fontsize=10, loc="left")
        for t in p["targets"]:
            expr = t["expr"].replace("$instance", ".*")
            for r in query_range(args.prometheus, expr, start, end, args.step):
                xs = [float(v[0]) - end for v in r["values"]]
                ys = [float(v[1]) for v in r["values"]]
                # Grafana would draw a flat line at zero for every reason never seen; here
                # they are left out so the legend shows what happened.
                if not any(ys):
                    hidden += 1
                    continue
                ax.plot(xs, ys, label=legend(t.get("legendFormat", ""), r["metric"]), lw=1.2)
                series += 1
        unit = p["fieldConfig"]["defaults"].get("unit", "")
        ax.set_ylabel({"s": "seconds", "ops": "per second", "bytes": "bytes"}.get(unit, ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("seconds before now", fontsize=7)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    fig.savefig(args.out, dpi=80, bbox_inches="tight")
    print(f"{args.out}: {len(panels)} panels, {series} series drawn, {hidden} all-zero series left out")


if __name__ == "__main__":
    main()
