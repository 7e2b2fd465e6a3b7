#!/usr/bin/env python3
"""Writes LeanK K-channel masks in the project's format (cache/README.md, cache/mask.h).

The format: a safetensors file with one tensor `leank.kept` uint8 [layers, kv_heads, head_dim]
(1 = keep) and __metadata__ {"format": "leank-mask/1", "sink", "recent", "align",
"target_sparsity", "model"} (strings).

Subcommands:
  import SRC OUT   SRC is one of LeanK's released masks: a `.pth` (torch float tensor of 0/1,
                   [L, H, D]; needs torch) or the `.json` kept-channel index lists beside it.
  random OUT       a random aligned mask (target kept fraction, seed, align); always has at
                   least one head keeping 0 channels and one keeping all of them.
  info FILE        prints the shape, kept fraction and the histogram of kept counts.

Examples:
  tools/import_leank_mask.py import /work/shared/leank-masks/llama3.1-8b-instruct.pth \
      tests/data/cache/llama3.1-8b-instruct.leank.safetensors --expect-counts 0:47,32:120,64:67,96:22
  tools/import_leank_mask.py random tests/data/cache/smollm2-random.leank.safetensors \
      --layers 30 --heads 3 --head-dim 64 --kept-fraction 0.3 --align 16 --seed 1
"""

import argparse
import collections
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

FORMAT = "leank-mask/1"
TENSOR = "leank.kept"
JSON_FORMAT = "kept-channel index lists, kept[layer][kv_head] = sorted channel indices"


def fail(msg):
    sys.exit(f"import_leank_mask: {msg}")


def load_pth(path):
    try:
        import torch
    except ImportError:
        fail(f"{path}: reading .pth needs torch (pip install torch), which is not installed here; "
             "import the .json beside it instead (same mask as kept-channel index lists)")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):  # tolerate {"mask": tensor} style files
        tensors = [v for v in obj.values() if hasattr(v, "shape")]
        if len(tensors) != 1:
            fail(f"{path}: expected one tensor, found keys {list(obj)}")
        obj = tensors[0]
    arr = obj.detach().float().numpy()
    if arr.ndim != 3:
        fail(f"{path}: tensor shape {list(arr.shape)}, expected [layers, kv_heads, head_dim]")
    bad = ~np.isin(arr, (0.0, 1.0))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        fail(f"{path}: value {arr[idx]} at (layer, head, channel) {idx} is not 0 or 1")
    return arr.astype(np.uint8), {}


def load_json(path):
    with open(path) as f:
        d = json.load(f)
    fmt = d.get("format")
    if fmt != JSON_FORMAT:
        fail(f"{path}: format {fmt!r}, expected {JSON_FORMAT!r}")
    L, H, D = d["num_layers"], d["num_kv_heads"], d["head_dim"]
    kept = d["kept"]
    if len(kept) != L or any(len(layer) != H for layer in kept):
        fail(f"{path}: kept lists are not [{L}][{H}]")
    arr = np.zeros((L, H, D), dtype=np.uint8)
    for l in range(L):
        for h in range(H):
            ch = kept[l][h]
            if ch != sorted(set(ch)) or any(c < 0 or c >= D for c in ch):
                fail(f"{path}: layer {l} head {h}: channels must be sorted, unique, in [0, {D})")
            arr[l, h, ch] = 1
    meta = {k: d[k] for k in ("sink", "recent", "align", "model") if k in d}
    return arr, meta


def counts_histogram(arr):
    return dict(sorted(collections.Counter(int(c) for c in arr.sum(axis=2).ravel()).items()))


def check_aligned(arr, align):
    D = arr.shape[2]
    if align not in (16, 32) or D % align:
        fail(f"align {align} must be 16 or 32 and divide head_dim {D}")
    counts = arr.sum(axis=2)
    for (l, h), c in np.ndenumerate(counts):
        if c % align:
            fail(f"layer {l}, head {h} keeps {c} channels, not a multiple of align {align}")


def write(arr, out, *, sink, recent, align, target_sparsity, model):
    check_aligned(arr, align)
    meta = {"format": FORMAT, "sink": str(sink), "recent": str(recent), "align": str(align),
            "target_sparsity": str(target_sparsity), "model": model}
    save_file({TENSOR: np.ascontiguousarray(arr, dtype=np.uint8)}, out, metadata=meta)
    print(f"{out}: shape {list(arr.shape)}, kept {arr.mean():.4f}, "
          f"heads by kept count {counts_histogram(arr)}")


def parse_counts(s):
    return {int(k): int(v) for k, v in (item.split(":") for item in s.split(","))}


def cmd_import(a):
    if a.src.endswith(".pth") or a.src.endswith(".pt"):
        arr, meta = load_pth(a.src)
    elif a.src.endswith(".json"):
        arr, meta = load_json(a.src)
    else:
        fail(f"{a.src}: expected a .pth or .json LeanK mask")
    align = a.align or int(meta.get("align", 32))
    model = a.model or meta.get("model") or os.path.splitext(os.path.basename(a.src))[0]
    if a.expect_counts:
        want, got = parse_counts(a.expect_counts), counts_histogram(arr)
        if want != got:
            fail(f"{a.src}: heads by kept count {got}, expected {want}")
    write(arr, a.out, sink=a.sink or meta.get("sink", 128), recent=a.recent or meta.get("recent", 768),
          align=align, target_sparsity=round(1.0 - float(arr.mean()), 6), model=model)


def random_mask(layers, heads, head_dim, kept_fraction, align, seed):
    if head_dim % align:
        fail(f"align {align} does not divide head_dim {head_dim}")
    rng = np.random.default_rng(seed)
    units_per_head = head_dim // align
    n_heads = layers * heads
    units = np.zeros(n_heads, dtype=np.int64)
    target = int(round(kept_fraction * n_heads * units_per_head))
    order = rng.permutation(n_heads)
    # One head keeps everything, one keeps nothing (when there are two heads); the rest of
    # the target is spread one align-unit at a time over random heads that are not full.
    if n_heads >= 2:
        units[order[0]] = units_per_head
        target -= units_per_head
        candidates = list(order[2:])
    else:
        candidates = list(order)
    while target > 0:
        open_heads = [h for h in candidates if units[h] < units_per_head]
        if not open_heads:
            break
        units[open_heads[rng.integers(len(open_heads))]] += 1
        target -= 1
    arr = np.zeros((n_heads, head_dim), dtype=np.uint8)
    for i in range(n_heads):
        ch = rng.choice(head_dim, size=units[i] * align, replace=False)
        arr[i, ch] = 1
    return arr.reshape(layers, heads, head_dim)


def cmd_random(a):
    arr = random_mask(a.layers, a.heads, a.head_dim, a.kept_fraction, a.align, a.seed)
    write(arr, a.out, sink=a.sink, recent=a.recent, align=a.align,
          target_sparsity=round(1.0 - a.kept_fraction, 6), model=a.model)


def cmd_info(a):
    from safetensors import safe_open
    with safe_open(a.file, framework="numpy") as f:
        meta = f.metadata()
    arr = load_file(a.file)[TENSOR]
    print(f"{a.file}: metadata {meta}")
    print(f"shape {list(arr.shape)}, kept {arr.mean():.4f}, heads by kept count {counts_histogram(arr)}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("import", help="import a released LeanK .pth/.json mask")
    i.add_argument("src")
    i.add_argument("out")
    i.add_argument("--model", default="")
    i.add_argument("--sink", type=int, default=0, help="default: the source's, else 128")
    i.add_argument("--recent", type=int, default=0, help="default: the source's, else 768")
    i.add_argument("--align", type=int, default=0, help="default: the source's, else 32")
    i.add_argument("--expect-counts", default="", help="e.g. 0:47,32:120,64:67,96:22; fail otherwise")
    i.set_defaults(fn=cmd_import)
    r = sub.add_parser("random", help="a random aligned mask")
    r.add_argument("out")
    r.add_argument("--layers", type=int, default=30)
    r.add_argument("--heads", type=int, default=3)
    r.add_argument("--head-dim", type=int, default=64)
    r.add_argument("--kept-fraction", type=float, default=0.3)
    r.add_argument("--align", type=int, default=16)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--sink", type=int, default=128)
    r.add_argument("--recent", type=int, default=768)
    r.add_argument("--model", default="random")
    r.set_defaults(fn=cmd_random)
    f = sub.add_parser("info", help="describe a project-format mask file")
    f.add_argument("file")
    f.set_defaults(fn=cmd_info)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
