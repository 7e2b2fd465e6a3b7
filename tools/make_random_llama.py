#!/usr/bin/env python3
"""Writes a seeded random-weight Llama-3.1-8B-shaped model in HF layout (config.json +
sharded model-0000N-of-0000M.safetensors + index), for benchmarks on the GPU machine.

Random weights give real timings, not real text. Values: N(0, 0.02) for matrices (HF's
initializer_range), 1 for norms, bf16. Tensors are drawn on the GPU when there is one
(torch.Generator seeded per tensor, so the bytes do not depend on the device order).

    python3 tools/make_random_llama.py --out /tmp/llama8b [--layers 32] [--seed 0]
"""

import argparse
import json
import os
import time

import torch
from safetensors.torch import save_file

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=32, help="fewer layers for quick checks")
    ap.add_argument("--shard-gb", type=float, default=4.0)
    args = ap.parse_args()
    cfg = dict(LLAMA31_8B, num_hidden_layers=args.layers)
    os.makedirs(args.out, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    shards, cur, cur_bytes = [], {}, 0
    for k, (name, shape, kind) in enumerate(tensor_specs(cfg)):
        if kind == "ones":
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            g = torch.Generator(device=dev).manual_seed(args.seed * 100003 + k)
            t = (torch.randn(shape, generator=g, device=dev, dtype=torch.float32) *
                 cfg["initializer_range"]).to(torch.bfloat16).cpu()
        cur[name] = t
        cur_bytes += t.numel() * 2
        if cur_bytes >= args.shard_gb * 1e9:
            shards.append(cur)
            cur, cur_bytes = {}, 0
    if cur:
        shards.append(cur)
    weight_map, total = {}, 0
    for s, tensors in enumerate(shards):
        fname = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, os.path.join(args.out, fname), metadata={"format": "pt"})
        for name, t in tensors.items():
            weight_map[name] = fname
            total += t.numel() * 2
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(dict(cfg, _name_or_path=f"random-llama3.1-8b-seed{args.seed}"), f, indent=1)
    print(f"make_random_llama: {total / 1e9:.2f} GB in {len(shards)} shards to {args.out} "
          f"in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
