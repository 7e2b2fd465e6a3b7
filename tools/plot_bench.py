#!/usr/bin/env python3
"""PNG plots from leank-bench JSON results (``leank-bench --json FILE``).

    python3 tools/plot_bench.py bench/results/serving-*.json --out bench/results/

Runs are grouped into series by label (``--label`` of leank-bench; else "leank" when
the server had a K mask, else "dense") and placed on the x axis by concurrency (closed
loop) or request rate (open loop). Writes, per load mode present:

  <prefix>throughput-<mode>.png  output tok/s and requests/s against the load
  <prefix>latency-<mode>.png     TTFT, TPOT, ITL, E2E latency: p50 (solid) and p99 (dashed)
  <prefix>compare-<mode>.png     with two or more series: each series' output throughput
                                 and p99 TPOT relative to the first series, side by side
  <prefix>cdf.png                latency CDFs from the per-request records (when present)

Needs matplotlib (pip install matplotlib). Prints the files written. Each PNG is written
through a temporary file renamed into place. A file that is not a leank-bench result (or lacks
a field the plots read), an unreadable input or an unwritable --out: one line on stderr naming
it, exit status 1; bad flags exit 2.
"""

import argparse
import collections
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli_util import Failure, fail, read_json_file, replace_atomically  # noqa: E402


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_run(path, j):
    """The fields the plots read, so a damaged file is named before anything is drawn."""
    if not isinstance(j, dict):
        fail(f"{path}: not a leank-bench result (top level is a JSON {type(j).__name__})")
    if j.get("tool") != "leank-bench" or "results" not in j:
        fail(f"{path}: not a leank-bench result (no tool/results)")
    cfg, res = j.get("config"), j["results"]
    if not isinstance(cfg, dict) or cfg.get("mode") not in ("closed", "open"):
        fail(f"{path}: config.mode must be \"closed\" or \"open\"")
    x_key = "request_rate" if cfg["mode"] == "open" else "concurrency"
    if not is_number(cfg.get(x_key)):
        fail(f"{path}: config.{x_key} is {cfg.get(x_key)!r}, expected a number")
    if not isinstance(res, dict):
        fail(f"{path}: results is not an object")
    for key in ("output_throughput", "request_throughput"):
        if not is_number(res.get(key)):
            fail(f"{path}: results.{key} is {res.get(key)!r}, expected a number")
    for key, _ in METRICS:
        stats = res.get(key)
        if not isinstance(stats, dict) or not all(
                p in stats and (stats[p] is None or is_number(stats[p])) for p in ("p50", "p99")):
            fail(f"{path}: results.{key} has no p50/p99 numbers")
    if j.get("requests") is not None and not (
            isinstance(j["requests"], list) and all(isinstance(r, dict) for r in j["requests"])):
        fail(f"{path}: requests is not a list of objects")


def load(paths):
    runs = []
    for path in paths:
        j = read_json_file(path, "JSON (a leank-bench --json file)")
        check_run(path, j)
        runs.append((path, j))
    return runs


def save_atomic(fig, path):
    """savefig through a temporary file renamed into place: no half-written PNG."""
    replace_atomically(path, lambda f: fig.savefig(f, dpi=120, format="png"))


def series_label(j):
    if j.get("label"):
        return j["label"]
    server = j.get("server")
    return "leank" if isinstance(server, dict) and server.get("masked") else "dense"


def load_x(j):
    cfg = j["config"]
    if cfg["mode"] == "open":
        return "open", float(cfg["request_rate"])
    return "closed", float(cfg["concurrency"])


X_NAME = {"closed": "concurrency (clients)", "open": "request rate (req/s)"}
METRICS = [("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"), ("itl_ms", "ITL (ms)"),
           ("e2el_ms", "E2E latency (ms)")]


def grouped(runs):
    """{mode: {label: [(x, json) sorted by x]}}"""
    out = collections.defaultdict(lambda: collections.defaultdict(list))
    for _, j in runs:
        mode, x = load_x(j)
        out[mode][series_label(j)].append((x, j))
    for mode in out:
        for label in out[mode]:
            out[mode][label].sort(key=lambda p: p[0])
    return out


def set_x_axis(ax, mode, series):
    """Log2 x axis for wide sweeps (1, 8, 32, 64), ticks at the measured loads."""
    xs = sorted({x for pts in series.values() for x, _ in pts})
    if len(xs) > 2 and xs[0] > 0 and xs[-1] / xs[0] >= 8:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:g}" for x in xs])
    ax.set_xlabel(X_NAME[mode])


def plot_throughput(plt, mode, series, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, pts in series.items():
        xs = [x for x, _ in pts]
        axes[0].plot(xs, [j["results"]["output_throughput"] for _, j in pts], "o-", label=label)
        axes[1].plot(xs, [j["results"]["request_throughput"] for _, j in pts], "o-", label=label)
    axes[0].set_ylabel("output tokens/s")
    axes[1].set_ylabel("requests/s")
    for ax in axes:
        set_x_axis(ax, mode, series)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"Throughput ({mode} loop)")
    fig.tight_layout()
    save_atomic(fig, path)
    plt.close(fig)


def plot_latency(plt, mode, series, path):
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (key, title), ax in zip(METRICS, axes.flat):
        for i, (label, pts) in enumerate(series.items()):
            c = colors[i % len(colors)]
            xs = [x for x, _ in pts]
            ax.plot(xs, [j["results"][key]["p50"] for _, j in pts], "o-", color=c,
                    label=f"{label} p50")
            ax.plot(xs, [j["results"][key]["p99"] for _, j in pts], "s--", color=c,
                    label=f"{label} p99")
        ax.set_title(title)
        set_x_axis(ax, mode, series)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Latency percentiles ({mode} loop)")
    fig.tight_layout()
    save_atomic(fig, path)
    plt.close(fig)


def plot_compare(plt, mode, series, path):
    labels = list(series)
    base = {x: j for x, j in series[labels[0]]}
    xs = sorted(base)
    width = 0.8 / max(1, len(labels) - 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, (key, title) in enumerate([("output_throughput", "output tok/s"),
                                      ("tpot_ms.p99", "p99 TPOT")]):
        ax = axes[k]
        for i, label in enumerate(labels[1:]):
            pts = dict(series[label])
            ratios = []
            for x in xs:
                if x not in pts:
                    ratios.append(float("nan"))
                    continue
                a, b = base[x]["results"], pts[x]["results"]
                if "." in key:
                    m, p = key.split(".")
                    a, b = a[m][p], b[m][p]
                else:
                    a, b = a[key], b[key]
                # leank-bench writes a percentile it could not compute as null (no
                # successful request, or one output token each: no TPOT): no ratio.
                ok = is_number(a) and is_number(b) and a
                ratios.append(b / a if ok else float("nan"))
            pos = [n + (i - (len(labels) - 2) / 2) * width for n in range(len(xs))]
            bars = ax.bar(pos, ratios, width, label=f"{label} / {labels[0]}")
            for rect, r in zip(bars, ratios):
                if not math.isnan(r):
                    ax.annotate(f"{r:.2f}x", (rect.get_x() + rect.get_width() / 2, r),
                                ha="center", va="bottom", fontsize=8)
        ax.axhline(1.0, color="gray", lw=1)
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels([f"{x:g}" for x in xs])
        ax.set_xlabel(X_NAME[mode])
        ax.set_title(f"{title}, relative to {labels[0]}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_atomic(fig, path)
    plt.close(fig)


def plot_cdf(plt, runs, path):
    with_requests = [(p, j) for p, j in runs if j.get("requests")]
    if not with_requests:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for (key, title), ax in zip([("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"),
                                 ("e2el_ms", "E2E latency (ms)")], axes):
        for _, j in with_requests:
            vals = sorted(r[key] for r in j["requests"] if r.get("ok") and r.get(key) is not None)
            if not vals:
                continue
            mode, x = load_x(j)
            name = f"{series_label(j)} {'c' if mode == 'closed' else 'rate '}{x:g}"
            ax.plot(vals, [(i + 1) / len(vals) for i in range(len(vals))], label=name)
        ax.set_title(title)
        ax.set_ylabel("fraction of requests")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Latency CDFs")
    fig.tight_layout()
    save_atomic(fig, path)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="leank-bench --json files")
    ap.add_argument("--out", default=".", help="output folder (default: .)")
    ap.add_argument("--prefix", default="serving-", help="file name prefix (default: serving-)")
    args = ap.parse_args(argv)
    if os.sep in args.prefix or (os.altsep and os.altsep in args.prefix):
        ap.error(f"--prefix {args.prefix!r}: a file name prefix, not a path (use --out)")
    try:
        runs = load(args.results)  # bad input is named with or without matplotlib
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            fail(f"--out {args.out}: exists and is not a folder")
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            fail("needs matplotlib: pip install matplotlib")
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            fail(f"--out {args.out}: cannot create the folder: {e.strerror or e}")
        written = []
        for mode, series in sorted(grouped(runs).items()):
            p = os.path.join(args.out, f"{args.prefix}throughput-{mode}.png")
            plot_throughput(plt, mode, series, p)
            written.append(p)
            p = os.path.join(args.out, f"{args.prefix}latency-{mode}.png")
            plot_latency(plt, mode, series, p)
            written.append(p)
            if len(series) >= 2:
                p = os.path.join(args.out, f"{args.prefix}compare-{mode}.png")
                plot_compare(plt, mode, series, p)
                written.append(p)
        p = os.path.join(args.out, f"{args.prefix}cdf.png")
        if plot_cdf(plt, runs, p):
            written.append(p)
    except Failure as e:
        print(f"plot_bench.py: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"plot_bench.py: cannot write {e.filename or args.out}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
