#!/usr/bin/env python3
"""Combine and plot decode-kernel results.

  results.py merge OUT.json leank.json [peers.json]   # one list of records (peers' errors kept
                                                      # as records with impl "<name>" and "error")
  results.py plot RESULTS.json PNG                    # GB/s and speedup against context
  results.py table RESULTS.json                       # markdown table for docs/benchmarks.md

Inputs are leank-bench-kernels JSON (a list of records) or bench/kernels/peers.py output
({"records": [...], "errors": {...}}). OUT and PNG are written through a temporary file renamed
into place. Bad input is one line on stderr and exit status 1 (2 for a bad command line).
"""
import argparse
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from cli_util import Failure, fail, is_number, read_json_file, replace_atomically  # noqa: E402

PROG = "results.py"


def check_record(path, i, r):
    if not isinstance(r, dict):
        fail(f"{path}: record {i} is a JSON {type(r).__name__}, expected an object")
    if not isinstance(r.get("impl"), str):
        fail(f"{path}: record {i} has no \"impl\" name")
    if "time_us" in r:
        if not is_number(r["time_us"]) or r["time_us"] <= 0:
            fail(f"{path}: record {i} ({r['impl']}): time_us is {r['time_us']!r}, "
                 "expected a positive number")
        for key in ("batch", "context", "gbps", "read_gbps", "tflops"):
            if key in r and not is_number(r[key]):
                fail(f"{path}: record {i} ({r['impl']}): {key} is {r[key]!r}, expected a number")


def load(path):
    d = read_json_file(path, "JSON (a kernel results file)")
    if isinstance(d, dict):  # peers.py: {"records": [...], "errors": {...}}
        if not isinstance(d.get("records"), list):
            fail(f"{path}: an object without a \"records\" list (expected a list of records or "
                 "peers.py's {\"records\": [...], \"errors\": {...}})")
        errors = d.get("errors", {})
        if not isinstance(errors, dict):
            fail(f"{path}: \"errors\" is not an object")
        recs = list(d["records"])
        for k, v in errors.items():
            recs.append({"impl": k.split()[0] if k.split() else k, "error": v, "where": k})
    elif isinstance(d, list):
        recs = d
    else:
        fail(f"{path}: top level is a JSON {type(d).__name__}, expected a list of records")
    for i, r in enumerate(recs):
        check_record(path, i, r)
    return recs


def merge(out, *paths):
    recs = []
    for p in paths:
        recs += load(p)
    data = (json.dumps(recs, indent=1) + "\n").encode()
    replace_atomically(out, lambda f: f.write(data))
    print(f"{out}: {len(recs)} records from {len(paths)} files")


def grid(recs):
    t = defaultdict(dict)  # (batch, context) -> impl -> record
    for r in recs:
        if "time_us" in r and "batch" in r and "context" in r and not r["impl"].startswith("prefill"):
            t[(r["batch"], r["context"])][r["impl"]] = r
    return t


def plot(path, png):
    recs = load(path)
    t = grid(recs)
    if not t:
        fail(f"{path}: no decode records (impl, batch, context, time_us) to plot")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("plot needs matplotlib (pip install matplotlib)")
    batches = sorted({b for b, _ in t})
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colors = {"dense": "tab:blue", "leank": "tab:red", "sdpa_cudnn": "tab:green",
              "sdpa_flash": "tab:olive", "flashinfer": "tab:purple"}
    styles = ["-", "--", ":", "-."]
    read = [r["read_gbps"] for r in recs if "read_gbps" in r and r["impl"] == "dense"]
    for bi, b in enumerate(batches):
        ctxs = sorted(c for bb, c in t if bb == b)
        for impl, col in colors.items():
            if b not in (batches[0], batches[-1]):
                break  # bandwidth panel: smallest and largest batch only, for legibility
            pts = [(c, t[(b, c)][impl]["gbps"]) for c in ctxs
                   if impl in t[(b, c)] and "gbps" in t[(b, c)][impl]]
            if pts:
                axes[0].plot([p[0] for p in pts], [p[1] for p in pts], styles[bi % 4], color=col,
                             marker="o", ms=3, label=f"{impl}, batch {b}")
        sp = [(c, t[(b, c)]["dense"]["time_us"] / t[(b, c)]["leank"]["time_us"]) for c in ctxs
              if "dense" in t[(b, c)] and "leank" in t[(b, c)]]
        if sp:
            axes[1].plot([p[0] for p in sp], [p[1] for p in sp], styles[bi % 4], color="tab:red",
                         marker="o", label=f"leank / our dense, batch {b}")
        peers = [(c, min(t[(b, c)][i]["time_us"] for i in ("sdpa_cudnn", "sdpa_flash", "flashinfer")
                         if i in t[(b, c)]) / t[(b, c)]["leank"]["time_us"]) for c in ctxs
                 if "leank" in t[(b, c)] and any(i in t[(b, c)] for i in ("sdpa_cudnn", "sdpa_flash", "flashinfer"))]
        if peers:
            axes[1].plot([p[0] for p in peers], [p[1] for p in peers], styles[bi % 4], color="tab:green",
                         marker="s", label=f"leank / best peer, batch {b}")
    if read:
        axes[0].axhline(read[0], color="gray", lw=1, label=f"read-only reduction {read[0]:.0f} GB/s")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("context (tokens)")
    axes[0].set_ylabel("GB/s (bytes that must move / time)")
    axes[0].set_title("Decode attention bandwidth, Llama-3.1-8B shape")
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].axhline(1.6, color="gray", ls="--", lw=1, label="target 1.6x")
    axes[1].axhline(1.29, color="black", ls=":", lw=1, label="LeanK paper kernel 1.29x")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("context (tokens)")
    axes[1].set_ylabel("speedup")
    axes[1].set_title("LeanK decode speedup (released Llama mask, 32 layers)")
    axes[1].legend(fontsize=7)
    dev = next((r["device"] for r in recs if "device" in r), "")
    fig.suptitle(dev)
    fig.tight_layout()
    fmt = os.path.splitext(png)[1].lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        fail(f"{png}: unknown image type .{fmt} (use .png, .svg or .pdf)")
    replace_atomically(png, lambda f: fig.savefig(f, dpi=110, format=fmt))
    print(png)


def table(path):
    recs = load(path)
    t = grid(recs)
    impls = ["dense", "leank", "sdpa_cudnn", "sdpa_flash", "flashinfer"]
    print("| batch | context | " + " | ".join(f"{i} us" for i in impls) +
          " | dense % read | leank % read | leank/dense | leank/best peer |")
    print("|" + "---|" * (len(impls) + 6))
    for (b, c) in sorted(t):
        row = t[(b, c)]
        cells = [f"{row[i]['time_us']:.1f}" if i in row else "-" for i in impls]
        d, l = row.get("dense"), row.get("leank")
        peers = [row[i]["time_us"] for i in impls[2:] if i in row]
        fr = (lambda r: f"{100 * r['gbps'] / r['read_gbps']:.0f}%"
              if r and r.get("gbps") is not None and r.get("read_gbps") else "-")
        sp = f"{d['time_us'] / l['time_us']:.2f}x" if d and l else "-"
        spp = f"{min(peers) / l['time_us']:.2f}x" if peers and l else "-"
        print(f"| {b} | {c} | " + " | ".join(cells) + f" | {fr(d)} | {fr(l)} | {sp} | {spp} |")
    for r in recs:
        if r["impl"].startswith("prefill") and all(k in r for k in ("time_us", "context", "tflops")):
            print(f"\n{r['impl']}: {r['time_us']:.0f} us per layer at {r['context']} tokens causal, "
                  f"{r['tflops']:.0f} TFLOP/s")


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:6]))
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="combine result files into one list of records")
    m.add_argument("out")
    m.add_argument("inputs", nargs="+")
    p = sub.add_parser("plot", help="GB/s and speedup against context")
    p.add_argument("results")
    p.add_argument("png")
    t = sub.add_parser("table", help="markdown table for docs/benchmarks.md")
    t.add_argument("results")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "merge":
            merge(a.out, *a.inputs)
        elif a.cmd == "plot":
            plot(a.results, a.png)
        else:
            table(a.results)
    except Failure as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # table | head
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
