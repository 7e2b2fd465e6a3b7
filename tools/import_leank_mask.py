#!/usr/bin/env python3
"""Writes LeanK K-channel masks in the project's format (cache/README.md, cache/mask.h).

The format: a safetensors file with one tensor `leank.kept` uint8 [layers, kv_heads, head_dim]
(1 = keep) and __metadata__ {"format": "leank-mask/1", "sink", "recent", "align",
"target_sparsity", "model"} (strings).

Subcommands:
  import SRC OUT   SRC is one of LeanK's released masks: a `.pth`/`.pt` (torch float tensor of
                   0/1, [L, H, D]; needs torch) or the `.json` kept-channel index lists beside it.
  random OUT       a random aligned mask (target kept fraction, seed, align); always has at
                   least one head keeping 0 channels and one keeping all of them.
  info FILE        checks FILE as the C++ loader does (format tag, tensor, 0/1 values, align,
                   metadata) and prints the shape, kept fraction and the histogram of kept
                   counts; exit status 1 with the fault named when it is not a valid mask.

`--config PATH` (an HF config.json, or the model folder holding it) checks the mask against
the model's [layers, kv_heads, head_dim] (import, info) or takes the shape from it (random).
OUT is written through a temporary file in its folder renamed into place: an interrupted run
leaves no half-written mask. Any bad input is one line on stderr and exit status 1 (2 for bad
flags), never a traceback.

Examples:
  tools/import_leank_mask.py import /work/shared/leank-masks/llama3.1-8b-instruct.pth \
      tests/data/cache/llama3.1-8b-instruct.leank.safetensors --expect-counts 0:47,32:120,64:67,96:22
  tools/import_leank_mask.py random tests/data/cache/smollm2-random.leank.safetensors \
      --layers 30 --heads 3 --head-dim 64 --kept-fraction 0.3 --align 16 --seed 1
  tools/import_leank_mask.py info masks.safetensors --config /models/llama-3.1-8b-instruct
"""

import argparse
import collections
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli_util import (Failure, fail, float_arg, int_arg, is_int, read_json_file,  # noqa: E402
                      replace_atomically)

PROG = "import_leank_mask"
FORMAT = "leank-mask/1"
TENSOR = "leank.kept"
JSON_FORMAT = "kept-channel index lists, kept[layer][kv_head] = sorted channel indices"
DEFAULTS = {"sink": 128, "recent": 768, "align": 32}  # cache/mask.h when a file has none
ALIGNS = (16, 32)


def need(module):
    """Imports numpy / safetensors, naming the missing package instead of a traceback."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        pip = module.split(".")[0]
        fail(f"needs the Python package '{pip}' (pip install {pip}), which is not installed here")


def shape_text(shape):
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


# ---------------------------------------------------------------------------------------------
# Reading


def check_source_file(path):
    if not os.path.exists(path):
        fail(f"{path}: no such file")
    if os.path.isdir(path):
        fail(f"{path}: is a directory, expected a LeanK .pth or .json mask")


def load_pth(path):
    np = need("numpy")
    check_source_file(path)
    try:
        import torch
    except ImportError:
        fail(f"{path}: reading .pth needs torch (pip install torch), which is not installed here; "
             "import the .json beside it instead (same mask as kept-channel index lists)")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except TypeError:  # torch older than 1.13 has no weights_only
            obj = torch.load(path, map_location="cpu")
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(f"{path}: not a readable torch file ({detail})")
    if isinstance(obj, dict):  # tolerate {"mask": tensor} style files
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            fail(f"{path}: expected one tensor, found keys {list(obj)}")
        obj = tensors[0]
    if not isinstance(obj, torch.Tensor):
        fail(f"{path}: holds a {type(obj).__name__}, expected a tensor [layers, kv_heads, head_dim]")
    if obj.is_complex():
        fail(f"{path}: tensor has complex dtype {obj.dtype}, expected 0/1 values")
    arr = obj.detach().cpu().double().numpy()
    if arr.ndim != 3 or 0 in arr.shape:
        fail(f"{path}: tensor shape {list(arr.shape)}, expected [layers, kv_heads, head_dim] "
             "with every dimension positive")
    bad = ~np.isin(arr, (0.0, 1.0))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        fail(f"{path}: value {arr[idx]:g} at (layer, head, channel) {idx} is not 0 or 1")
    return arr.astype(np.uint8), {}


def load_json(path):
    np = need("numpy")
    d = read_json_file(path, "a LeanK .json mask")
    if not isinstance(d, dict):
        fail(f"{path}: top level is a JSON {type(d).__name__}, expected an object")
    fmt = d.get("format")
    if fmt != JSON_FORMAT:
        fail(f"{path}: format {fmt!r}, expected {JSON_FORMAT!r}")
    dims = []
    for key in ("num_layers", "num_kv_heads", "head_dim"):
        if key not in d:
            fail(f"{path}: no \"{key}\"")
        if not is_int(d[key]) or d[key] <= 0:
            fail(f"{path}: \"{key}\" is {d[key]!r}, expected a positive integer")
        dims.append(d[key])
    L, H, D = dims
    kept = d.get("kept")
    if not isinstance(kept, list) or len(kept) != L or any(
            not isinstance(layer, list) or len(layer) != H for layer in kept):
        fail(f"{path}: \"kept\" is not a [{L}][{H}] list of channel lists "
             "(num_layers x num_kv_heads)")
    arr = np.zeros((L, H, D), dtype=np.uint8)
    for l in range(L):
        for h in range(H):
            ch = kept[l][h]
            if (not isinstance(ch, list) or not all(is_int(c) for c in ch) or ch != sorted(set(ch))
                    or any(c < 0 or c >= D for c in ch)):
                fail(f"{path}: layer {l} head {h}: channels must be a list of sorted, unique "
                     f"integers in [0, {D})")
            arr[l, h, ch] = 1
    meta = {}
    for key in ("sink", "recent", "align"):
        if key in d:
            if not is_int(d[key]) or d[key] <= 0:
                fail(f"{path}: \"{key}\" is {d[key]!r}, expected a positive integer")
            meta[key] = d[key]
    if "model" in d:
        if not isinstance(d["model"], str):
            fail(f"{path}: \"model\" is {d['model']!r}, expected a string")
        meta["model"] = d["model"]
    return arr, meta


def model_shape(path):
    """[layers, kv_heads, head_dim] from an HF config.json (or the folder holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    c = read_json_file(path, "a model config.json")
    if not isinstance(c, dict):
        fail(f"{path}: top level is a JSON {type(c).__name__}, expected an object")

    def get(key, default=None):
        v = c.get(key)
        if v is None:
            if default is None:
                fail(f"{path}: no \"{key}\" (not a model config.json?)")
            return default
        if not is_int(v) or v <= 0:
            fail(f"{path}: \"{key}\" is {v!r}, expected a positive integer")
        return v

    layers = get("num_hidden_layers")
    heads = get("num_attention_heads")
    # An absent key takes the transformers config class's default, as the C++ loader does
    # (MistralConfig 8, Qwen2Config 32); null, or another architecture: the head count.
    kv_default = {"mistral": 8, "qwen2": 32}.get(c.get("model_type"), heads)
    kv_heads = get("num_key_value_heads", heads if "num_key_value_heads" in c else kv_default)
    if c.get("head_dim") is None and get("hidden_size") % heads:
        fail(f"{path}: hidden_size {c['hidden_size']} is not a multiple of num_attention_heads "
             f"{heads} and there is no head_dim")
    head_dim = get("head_dim", c.get("hidden_size", 0) // heads)
    return (layers, kv_heads, head_dim), path


def check_model(arr_shape, config, what):
    if not config:
        return
    want, cpath = model_shape(config)
    if tuple(arr_shape) != want:
        fail(f"{what}: mask shape {shape_text(arr_shape)} does not match the model's "
             f"{shape_text(want)} (layers, kv heads, head_dim) from {cpath}: a mask for another model?")


# ---------------------------------------------------------------------------------------------
# Checking and writing


def counts_histogram(arr):
    return dict(sorted(collections.Counter(int(c) for c in arr.sum(axis=2).ravel()).items()))


def check_aligned(arr, align, what):
    D = arr.shape[2]
    if align not in ALIGNS or D % align:
        fail(f"{what}: align {align} must be 16 or 32 and divide head_dim {D}")
    counts = arr.sum(axis=2)
    for (l, h), c in need("numpy").ndenumerate(counts):
        if c % align:
            fail(f"{what}: layer {l}, head {h} keeps {c} channels, not a multiple of align {align}"
                 + ("" if align == 16 or c % 16 else " (try --align 16)"))


def check_output_path(out):
    if os.path.isdir(out):
        fail(f"{out}: is a directory; give the mask file's path")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        fail(f"{out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        fail(f"{out}: folder {folder} is not writable")


def write(arr, out, *, sink, recent, align, target_sparsity, model, what):
    np = need("numpy")
    st = need("safetensors.numpy")
    check_aligned(arr, align, what)
    check_output_path(out)
    meta = {"format": FORMAT, "sink": str(sink), "recent": str(recent), "align": str(align),
            "target_sparsity": str(target_sparsity), "model": model}
    data = st.save({TENSOR: np.ascontiguousarray(arr, dtype=np.uint8)}, metadata=meta)
    replace_atomically(out, lambda f: f.write(data))
    print(f"{out}: shape {list(arr.shape)}, kept {arr.mean():.4f}, "
          f"heads by kept count {counts_histogram(arr)}")


def parse_counts(s):
    counts = {}
    for item in s.split(","):
        k, sep, v = item.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            counts[int(k)] = int(v)
        except ValueError:
            fail(f"--expect-counts {s!r}: expected KEPT:HEADS pairs separated by commas, "
                 f"e.g. 0:47,32:120 (bad item {item!r})")
    return counts


# ---------------------------------------------------------------------------------------------
# Subcommands


def cmd_import(a):
    want = parse_counts(a.expect_counts) if a.expect_counts else None
    src = a.src
    if os.path.realpath(src) == os.path.realpath(a.out):
        fail(f"{a.out}: is the source itself; give another output path")
    if src.endswith(".pth") or src.endswith(".pt"):
        arr, meta = load_pth(src)
    elif src.endswith(".json"):
        arr, meta = load_json(src)
    else:
        fail(f"{src}: expected a LeanK mask file ending in .pth, .pt or .json")
    check_model(arr.shape, a.config, src)
    align = a.align or int(meta.get("align", DEFAULTS["align"]))
    model = a.model or meta.get("model") or os.path.splitext(os.path.basename(src))[0]
    if want is not None:
        got = counts_histogram(arr)
        if want != got:
            fail(f"{src}: heads by kept count {got}, expected {want}")
    write(arr, a.out, sink=a.sink or meta.get("sink", DEFAULTS["sink"]),
          recent=a.recent or meta.get("recent", DEFAULTS["recent"]), align=align,
          target_sparsity=round(1.0 - float(arr.mean()), 6), model=model, what=src)


def random_mask(layers, heads, head_dim, kept_fraction, align, seed):
    np = need("numpy")
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
    given = {"--layers": a.layers, "--heads": a.heads, "--head-dim": a.head_dim}
    if a.config:
        shape, cpath = model_shape(a.config)
        for (flag, v), m in zip(given.items(), shape):
            if v is not None and v != m:
                fail(f"{flag} {v} disagrees with the model's {m} in {cpath} "
                     "(layers, kv heads, head_dim); leave it out to use the model's")
        layers, heads, head_dim = shape
    else:
        layers = a.layers if a.layers is not None else 30
        heads = a.heads if a.heads is not None else 3
        head_dim = a.head_dim if a.head_dim is not None else 64
    if layers * heads * head_dim > (1 << 28):
        fail(f"shape [{layers}, {heads}, {head_dim}] is far larger than any model's mask")
    if head_dim % a.align:
        fail(f"--align {a.align} does not divide head_dim {head_dim}")
    arr = random_mask(layers, heads, head_dim, a.kept_fraction, a.align, a.seed)
    write(arr, a.out, sink=a.sink, recent=a.recent, align=a.align,
          target_sparsity=round(1.0 - a.kept_fraction, 6), model=a.model, what="random mask")


def read_mask(path):
    """Reads and checks a project-format mask file as cache/mask_io.cc's ReadMask does."""
    np = need("numpy")
    st = need("safetensors")
    check_source_file(path)
    try:
        with st.safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            names = list(f.keys())
            if TENSOR not in names:
                more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                fail(f"{path}: no tensor \"{TENSOR}\" (it holds {', '.join(names[:3]) or 'none'}"
                     f"{more}): not a LeanK mask file")
            arr = f.get_tensor(TENSOR)
    except Failure:
        raise
    except Exception as e:  # SafetensorError, OSError, ...
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(f"{path}: not a readable safetensors file ({detail})")
    if "format" not in meta:
        fail(f"{path}: metadata has no \"format\" (expected \"{FORMAT}\")")
    if meta["format"] != FORMAT:
        fail(f"{path}: format is \"{meta['format']}\", expected \"{FORMAT}\"")
    if arr.dtype not in (np.uint8, np.bool_):
        fail(f"{path}: tensor \"{TENSOR}\" has dtype {arr.dtype}, expected uint8")
    if arr.ndim != 3 or 0 in arr.shape:
        fail(f"{path}: tensor \"{TENSOR}\" has shape {list(arr.shape)}, expected "
             "[layers, kv_heads, head_dim] with every dimension positive")
    arr = arr.astype(np.uint8)
    bad = arr > 1
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        fail(f"{path}: value {arr[idx]} at (layer, head, channel) {idx} is not 0 or 1")

    def positive(key):
        # absl::SimpleAtoi into an int: ASCII digits (str.isdigit also takes "²" and "١"),
        # at most INT32_MAX.
        v = meta.get(key, str(DEFAULTS[key]))
        if not (v.isascii() and v.isdigit()) or not 0 < int(v) <= 2**31 - 1:
            fail(f"{path}: metadata \"{key}\" must be a positive integer, got \"{v}\"")
        return int(v)

    align = positive("align")
    check_aligned(arr, align, path)
    positive("sink")
    positive("recent")
    if "target_sparsity" in meta:
        try:
            ts = float(meta["target_sparsity"])
        except ValueError:
            ts = math.nan
        if not 0.0 <= ts <= 1.0:
            fail(f"{path}: metadata \"target_sparsity\" must be a number in [0, 1], "
                 f"got \"{meta['target_sparsity']}\"")
    return arr, meta


def cmd_info(a):
    arr, meta = read_mask(a.file)
    check_model(arr.shape, a.config, a.file)
    print(f"{a.file}: metadata {meta}")
    print(f"shape {list(arr.shape)}, kept {arr.mean():.4f}, heads by kept count {counts_histogram(arr)}")


# ---------------------------------------------------------------------------------------------
# Flags


def align_value(text):
    v = int_arg(1)(text)
    if v not in ALIGNS:
        raise argparse.ArgumentTypeError(f"{text} must be 16 or 32")
    return v


def main(argv=None):
    p = argparse.ArgumentParser(prog="import_leank_mask.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    cfg_help = "HF config.json (or its model folder): the mask must have this model's shape"
    i = sub.add_parser("import", help="import a released LeanK .pth/.json mask")
    i.add_argument("src", help="LeanK mask: .pth/.pt (needs torch) or .json")
    i.add_argument("out", help="output .safetensors (written atomically)")
    i.add_argument("--model", default="", help="metadata model name (default: the source's, "
                                                "else the source's file name)")
    i.add_argument("--sink", type=int_arg(1), default=None,
                   help="default: the source's, else 128")
    i.add_argument("--recent", type=int_arg(1), default=None,
                   help="default: the source's, else 768")
    i.add_argument("--align", type=align_value, default=None,
                   help="16 or 32; default: the source's, else 32")
    i.add_argument("--expect-counts", default="",
                   help="e.g. 0:47,32:120,64:67,96:22 (kept count:heads); fail otherwise")
    i.add_argument("--config", default="", help=cfg_help)
    i.set_defaults(fn=cmd_import)
    r = sub.add_parser("random", help="a random aligned mask")
    r.add_argument("out", help="output .safetensors (written atomically)")
    r.add_argument("--layers", type=int_arg(1), default=None, help="default: 30 (or --config's)")
    r.add_argument("--heads", type=int_arg(1), default=None,
                   help="kv heads; default: 3 (or --config's)")
    r.add_argument("--head-dim", type=int_arg(1), default=None,
                   help="default: 64 (or --config's)")
    r.add_argument("--kept-fraction", type=float_arg(0.0, 1.0), default=0.3, help="in [0, 1]; default 0.3")
    r.add_argument("--align", type=align_value, default=16, help="16 or 32; default 16")
    r.add_argument("--seed", type=int_arg(0), default=0)
    r.add_argument("--sink", type=int_arg(1), default=DEFAULTS["sink"])
    r.add_argument("--recent", type=int_arg(1), default=DEFAULTS["recent"])
    r.add_argument("--model", default="random")
    r.add_argument("--config", default="", help="take layers, kv heads and head_dim from this "
                                                "HF config.json (or its model folder)")
    r.set_defaults(fn=cmd_random)
    f = sub.add_parser("info", help="check and describe a project-format mask file")
    f.add_argument("file")
    f.add_argument("--config", default="", help=cfg_help)
    f.set_defaults(fn=cmd_info)
    a = p.parse_args(argv)
    try:
        a.fn(a)
    except Failure as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
