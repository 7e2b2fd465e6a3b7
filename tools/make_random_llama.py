#!/usr/bin/env python3
"""Writes a seeded random-weight Llama-3.1-8B-shaped model in HF layout (config.json +
sharded model-0000N-of-0000M.safetensors + index), for benchmarks on the GPU machine.

Random weights give real timings, not real text. Values: N(0, 0.02) for matrices (HF's
initializer_range), 1 for norms, bf16. Tensors are drawn on the GPU when there is one
(torch.Generator seeded per tensor, so the bytes do not depend on the device order).

    python3 tools/make_random_llama.py --out /tmp/llama8b [--layers 32] [--seed 0] [--shard-gb 4]

Shards are drawn and written one at a time (a progress line each; the last line is the
summary). Nothing half-written looks complete: an existing config.json and index in OUT are
removed first, every file goes through a temporary name renamed into place, and config.json is
written last. Shards of an earlier run that the new index does not name are deleted. An OUT
holding another model (a config.json not written by this script) is refused. Bad flags or an
unwritable OUT: one line on stderr, exit status 1 or 2.
"""

import argparse
import glob
import json
import math
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli_util import Failure, fail, float_arg, int_arg  # noqa: E402,F401 (Failure: main)

PROG = "make_random_llama"
NAME_PREFIX = "random-llama3.1-8b"
SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors$")


LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "torch_dtype": "bfloat16",
    "initializer_range": 0.02,
    "pretraining_tp": 1,
    "use_cache": True,
}


def tensor_specs(cfg):
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    d, hq, hk = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    yield "model.embed_tokens.weight", (v, h), "normal"
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        yield p + "input_layernorm.weight", (h,), "ones"
        yield p + "self_attn.q_proj.weight", (hq * d, h), "normal"
        yield p + "self_attn.k_proj.weight", (hk * d, h), "normal"
        yield p + "self_attn.v_proj.weight", (hk * d, h), "normal"
        yield p + "self_attn.o_proj.weight", (h, hq * d), "normal"
        yield p + "post_attention_layernorm.weight", (h,), "ones"
        yield p + "mlp.gate_proj.weight", (i, h), "normal"
        yield p + "mlp.up_proj.weight", (i, h), "normal"
        yield p + "mlp.down_proj.weight", (h, i), "normal"
    yield "model.norm.weight", (h,), "ones"
    yield "lm_head.weight", (v, h), "normal"


def plan_shards(cfg, shard_gb):
    """[[(k, name, shape, kind), ...] per shard]: a shard closes once it holds shard_gb GB."""
    shards, cur, cur_bytes = [], [], 0
    for k, (name, shape, kind) in enumerate(tensor_specs(cfg)):
        cur.append((k, name, shape, kind))
        cur_bytes += math.prod(shape) * 2
        if cur_bytes >= shard_gb * 1e9:
            shards.append(cur)
            cur, cur_bytes = [], 0
    if cur:
        shards.append(cur)
    return shards


def check_out(out):
    if os.path.exists(out) and not os.path.isdir(out):
        fail(f"--out {out}: exists and is not a folder")
    cfg_path = os.path.join(out, "config.json")
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path) as f:
                name = json.load(f).get("_name_or_path", "")
        except (OSError, ValueError, AttributeError):
            name = None
        if not isinstance(name, str) or not name.startswith(NAME_PREFIX):
            fail(f"--out {out}: holds another model (its config.json was not written by this "
                 f"script: _name_or_path {name!r}); give a new or empty folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        fail(f"--out {out}: cannot create the folder: {e.strerror or e}")
    if not os.access(out, os.W_OK):
        fail(f"--out {out}: folder is not writable")


def replace_atomically(path, write):
    tmp = path + ".tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
    replace_atomically(path, write)


def generate(args, base_cfg=LLAMA31_8B, log=print):
    cfg = dict(base_cfg, num_hidden_layers=args.layers)
    out = args.out
    check_out(out)
    try:
        import torch
        from safetensors.torch import save_file
    except ImportError as e:
        fail(f"needs torch and safetensors ({e.name or e} is not installed here)")
    # A killed run must not leave a folder that looks complete: the old config and index go
    # first, and come back (new) only after every shard is in place.
    for name in ("config.json", "model.safetensors.index.json"):
        if os.path.exists(os.path.join(out, name)):
            os.unlink(os.path.join(out, name))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    plan = plan_shards(cfg, args.shard_gb)
    weight_map, total = {}, 0
    for s, specs in enumerate(plan):
        t_shard = time.time()
        tensors = {}
        for k, name, shape, kind in specs:
            if kind == "ones":
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                g = torch.Generator(device=dev).manual_seed(args.seed * 100003 + k)
                t = (torch.randn(shape, generator=g, device=dev, dtype=torch.float32) *
                     cfg["initializer_range"]).to(torch.bfloat16).cpu()
            tensors[name] = t
        fname = f"model-{s + 1:05d}-of-{len(plan):05d}.safetensors"
        replace_atomically(os.path.join(out, fname),
                           lambda tmp, ts=tensors: save_file(ts, tmp, metadata={"format": "pt"}))
        nbytes = sum(t.numel() * 2 for t in tensors.values())
        for name in tensors:
            weight_map[name] = fname
        total += nbytes
        log(f"{PROG}: shard {s + 1}/{len(plan)} {fname}: {nbytes / 1e9:.2f} GB in "
            f"{time.time() - t_shard:.1f} s ({dev})")
    keep = set(weight_map.values())
    for path in glob.glob(os.path.join(out, "model-*-of-*.safetensors")):
        if SHARD_RE.search(os.path.basename(path)) and os.path.basename(path) not in keep:
            os.unlink(path)  # an earlier run's shard the new index does not name
    write_json(os.path.join(out, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})
    write_json(os.path.join(out, "config.json"),
               dict(cfg, _name_or_path=f"{NAME_PREFIX}-seed{args.seed}"))
    log(f"{PROG}: {total / 1e9:.2f} GB in {len(plan)} shards to {out} "
        f"in {time.time() - t0:.1f} s")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (created; see the notes above)")
    ap.add_argument("--seed", type=int_arg(0), default=0)
    ap.add_argument("--layers", type=int_arg(1), default=32, help="fewer layers for quick checks")
    ap.add_argument("--shard-gb", type=float_arg(0.0, lo_open=True), default=4.0,
                    help="a shard closes once it holds this many GB (default 4)")
    return ap.parse_args(argv)


def main(argv=None, base_cfg=LLAMA31_8B):
    args = parse_args(argv)
    try:
        generate(args, base_cfg, log=lambda m: print(m, flush=True))
    except Failure as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{PROG}: cannot write {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {args.out} has no config.json (incomplete)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
