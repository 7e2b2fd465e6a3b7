"""Turns eval.json (leank_eval) into markdown tables and PNG plots for docs/accuracy.md.

  python3 -m train.report train/masks/smollm2-135m-instruct/eval.json docs/img/accuracy
Prints markdown to stdout; writes <prefix>-acc.png and <prefix>-fidelity.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def method_order(names):
    def key(n):
        if n == "dense":
            return (0, 0, "")
        kind, tag = n.rsplit("-", 1)
        return (1, tag, {"leank": 0, "magnitude": 1, "random": 2}.get(kind, 3), kind)
    return sorted(names, key=key)


def tables(r: dict) -> str:
    out = []
    tasks = r["tasks"]
    methods = method_order(tasks)
    cells = sorted({c for m in tasks.values() for c in m},
                   key=lambda c: (c.split("@")[0], int(c.split("@")[1])))
    task_names = sorted({c.split("@")[0] for c in cells})
    lengths = sorted({int(c.split("@")[1]) for c in cells})

    def agg(m, pred):
        right = n = 0
        for c, v in tasks[m].items():
            if pred(c):
                right += v["acc"] * v["n"]
                n += v["n"]
        return (100.0 * right / n, n) if n else (float("nan"), 0)

    out.append("| method | K sparsity | zero heads | " + " | ".join(task_names) +
               " | " + " | ".join(f"all@{L}" for L in lengths) + " | all |")
    out.append("|" + "---|" * (4 + len(task_names) + len(lengths)))
    for m in methods:
        info = r["methods"].get(m) or {"sparsity": 0.0, "zero_heads": 0}
        row = [m, f"{info['sparsity']:.3f}", str(info["zero_heads"])]
        row += [f"{agg(m, lambda c, t=t: c.startswith(t + '@'))[0]:.1f}" for t in task_names]
        row += [f"{agg(m, lambda c, L=L: c.endswith(f'@{L}'))[0]:.1f}" for L in lengths]
        row.append(f"{agg(m, lambda c: True)[0]:.1f}")
        out.append("| " + " | ".join(row) + " |")
    n = {c: tasks["dense"][c]["n"] for c in cells}
    out.append("")
    out.append(f"Accuracy in %, greedy exact match; samples per (task, length) cell: "
               f"{min(n.values())}-{max(n.values())}.")
    out.append("")
    out.append("Per (task, length), accuracy %:")
    out.append("")
    out.append("| method | " + " | ".join(cells) + " |")
    out.append("|" + "---|" * (1 + len(cells)))
    for m in methods:
        out.append(f"| {m} | " + " | ".join(f"{100 * tasks[m][c]['acc']:.0f}"
                                            for c in cells) + " |")
    out.append("")
    fid = r["fidelity"]
    flens = sorted({int(L) for v in fid.values() for L in v})
    out.append("Fidelity to dense on held-out text (positions with middle keys): KL(dense || method) "
               "in nats / top-1 agreement %; and on the tasks' answer positions:")
    out.append("")
    out.append("| method | " + " | ".join(f"text@{L}" for L in flens) + " | answers (all tasks) |")
    out.append("|" + "---|" * (2 + len(flens)))
    for m in method_order(fid):
        cols = []
        for L in flens:
            v = fid[m].get(str(L))
            cols.append(f"{v['kl']:.4f} / {100 * v['top1']:.1f}" if v else "-")
        kl = top = pos = 0.0
        for c, v in tasks[m].items():
            kl += v["answer_kl"] * v["n"]
            top += v["answer_top1"] * v["n"]
            pos += v["n"]
        cols.append(f"{kl / pos:.4f} / {100 * top / pos:.1f}" if pos else "-")
        out.append(f"| {m} | " + " | ".join(cols) + " |")
    return "\n".join(out)


def plots(r: dict, prefix: str) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = r["tasks"]
    lengths = sorted({int(c.split("@")[1]) for m in tasks.values() for c in m})
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
    style = {"dense": ("k", "-"), "leank": ("tab:blue", "-"), "magnitude": ("tab:orange", "--"),
             "random": ("tab:gray", ":")}
    for m in method_order(tasks):
        kind = m.split("-")[0]
        if m != "dense" and not m.endswith("s70"):
            continue
        ys = []
        for L in lengths:
            v = [x for c, x in tasks[m].items() if c.endswith(f"@{L}")]
            ys.append(100 * sum(x["acc"] * x["n"] for x in v) / max(1, sum(x["n"] for x in v)))
        c, ls = style.get(kind, ("tab:green", "-"))
        ax[0].plot(lengths, ys, color=c, ls=ls, marker="o", label=m)
    ax[0].set_xscale("log", base=2)
    ax[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax[0].set(xlabel="context tokens", ylabel="accuracy % (all tasks)",
              title="accuracy vs length (70% K sparsity)")
    ax[0].set_xticks(lengths, [str(L) for L in lengths])
    ax[0].legend()
    fid = r["fidelity"]
    for kind in ("leank", "magnitude", "random"):
        xs, ys = [], []
        for m in method_order(fid):
            if m.startswith(kind + "-"):
                v = fid[m]
                L = max(v, key=int)
                xs.append(100 * r["methods"][m]["sparsity"])
                ys.append(v[L]["kl"])
        if xs:
            c, ls = style[kind]
            ax[1].plot(xs, ys, color=c, ls=ls, marker="o", label=kind)
    ax[1].set(yscale="log", xlabel="K sparsity %", ylabel="KL(dense || method), nats",
              title="fidelity on held-out text (longest length)")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(prefix + "-summary.png", dpi=110)
    plt.close(fig)


def main() -> None:
    r = json.loads(Path(sys.argv[1]).read_text())
    print(tables(r))
    if len(sys.argv) > 2:
        Path(sys.argv[2]).parent.mkdir(parents=True, exist_ok=True)
        plots(r, sys.argv[2])


if __name__ == "__main__":
    main()
