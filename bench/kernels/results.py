#!/usr/bin/env python3
"""Combine and plot decode-kernel results.

  results.py merge OUT.json leank.json [peers.json]   # one list of records (peers' errors kept
                                                      # as records with impl "<name>" and "error")
  results.py plot RESULTS.json PNG                    # GB/s and speedup against context
  results.py table RESULTS.json                       # markdown table for docs/benchmarks.md
"""
import json
import sys
from collections import defaultdict


def load(path):
    d = json.load(open(path))
    if isinstance(d, dict):  # peers.py: {"records": [...], "errors": {...}}
        recs = list(d["records"])
        for k, v in d.get("errors", {}).items():
            recs.append({"impl": k.split()[0], "error": v, "where": k})
        return recs
    return d


def merge(out, *paths):
    recs = []
    for p in paths:
        recs += load(p)
    json.dump(recs, open(out, "w"), indent=1)


def grid(recs):
    t = defaultdict(dict)  # (batch, context) -> impl -> record
    for r in recs:
        if "time_us" in r and "batch" in r and not r["impl"].startswith("prefill"):
            t[(r["batch"], r["context"])][r["impl"]] = r
    return t


def plot(path, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = load(path)
    t = grid(recs)
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
            pts = [(c, t[(b, c)][impl]["gbps"]) for c in ctxs if impl in t[(b, c)]]
            if pts:
                axes[0].plot([p[0] for p in pts], [p[1] for p in pts], styles[bi % 4], color=col,
                             marker="o", ms=3, label=f"{impl}, batch {b}")
        sp = [(c, t[(b, c)]["dense"]["time_us"] / t[(b, c)]["leank"]["time_us"]) for c in ctxs
              if "dense" in t[(b, c)] and "leank" in t[(b, c)]]
        axes[1].plot([p[0] for p in sp], [p[1] for p in sp], styles[bi % 4], color="tab:red", marker="o",
                     label=f"leank / our dense, batch {b}")
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
    fig.savefig(png, dpi=110)


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
        fr = lambda r: f"{100 * r['gbps'] / r['read_gbps']:.0f}%" if r else "-"
        sp = f"{d['time_us'] / l['time_us']:.2f}x" if d and l else "-"
        spp = f"{min(peers) / l['time_us']:.2f}x" if peers and l else "-"
        print(f"| {b} | {c} | " + " | ".join(cells) + f" | {fr(d)} | {fr(l)} | {sp} | {spp} |")
    for r in recs:
        if r.get("impl", "").startswith("prefill"):
            print(f"\n{r['impl']}: {r['time_us']:.0f} us per layer at {r['context']} tokens causal, "
                  f"{r['tflops']:.0f} TFLOP/s")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "merge":
        merge(sys.argv[2], *sys.argv[3:])
    elif cmd == "plot":
        plot(sys.argv[2], sys.argv[3])
    elif cmd == "table":
        table(sys.argv[2])
