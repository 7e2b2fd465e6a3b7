#!/usr/bin/env python3
"""Builds the tiny random golden models in tests/data/golden/ and their
transformers reference outputs. See tests/data/golden/README.md for the format.

Each model folder gets:
  config.json          hub-style (transformers 4.x keys: rope_theta, rope_scaling,
                       torch_dtype) plus the transformers 5 keys (rope_parameters, dtype)
  model.safetensors    float32 (bf16 for *_bf16 folders); no lm_head.weight when tied
  expected.safetensors prompt_ids, greedy_ids, prompt_logits, logits (see README)

Reference: torch CPU, float32, eager attention, full (uncached) forward passes.
Usage: python3 tests/golden/make_fixtures.py [--out DIR]
Deterministic: fixed seeds; re-running rewrites identical files.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

OUT_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"
PROMPT_LEN = 64
DECODE_STEPS = 16

COMMON = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 512,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "use_cache": True,
}

# name -> (seed, hub-style config). bf16: also write a <name>_bf16 variant.
MODELS = {
    # (a) Llama with GQA (4 q heads, 2 kv heads), untied LM head.
    "llama_gqa": (1, {
        **COMMON, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 384, "num_hidden_layers": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "rope_scaling": None, "attention_bias": False,
        "mlp_bias": False, "tie_word_embeddings": False,
    }),
    # (b) Llama 3 rope scaling; original_max_position_embeddings 32 < 80 positions
    # used, and head_dim 16 with theta 500000 puts frequencies in all three bands
    # (unscaled, smoothed, scaled by 1/factor).
    "llama3_rope": (7, {
        **COMMON, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 320, "num_hidden_layers": 3, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
        "bos_token_id": 0, "eos_token_id": [5, 6],
    }),
    # (c) Qwen2: q/k/v biases, tied embeddings, theta 1e6, eps 1e-6.
    "qwen2_tied": (3, {
        **COMMON, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": 448, "num_hidden_layers": 2, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "rope_scaling": None, "tie_word_embeddings": True,
        "use_sliding_window": False, "sliding_window": None, "max_window_layers": 2,
        "bos_token_id": None, "eos_token_id": 3,
    }),
    # (d) Mistral, no sliding window.
    "mistral": (4, {
        **COMMON, "architectures": ["MistralForCausalLM"], "model_type": "mistral",
        "vocab_size": 256, "num_hidden_layers": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "rope_scaling": None, "sliding_window": None,
        "tie_word_embeddings": False,
    }),
}
BF16_VARIANTS = ["llama_gqa", "qwen2_tied"]


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Realistic-scale random weights: linear std 0.1 (so attention is not
    uniform and logits are not flat), embeddings std 1 (0.2 when tied to the LM
    head, so logits keep std ~1.6 and greedy does not collapse), norms near 1."""
    tied = model.config.tie_word_embeddings
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            elif "embed_tokens" in name:
                p.copy_((0.2 if tied else 1.0) * noise)
            elif "lm_head" in name:
                p.copy_(0.2 * noise)
            else:
                p.copy_(0.1 * noise)


def write_config(folder: Path, hub_config: dict, dtype: str) -> None:
    cfg = dict(hub_config)
    cfg["torch_dtype"] = dtype
    cfg["dtype"] = dtype
    rope = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    if cfg["rope_scaling"]:
        rope.update(cfg["rope_scaling"])
        cfg["rope_scaling"] = {**cfg["rope_scaling"], "type": cfg["rope_scaling"]["rope_type"]}
    cfg["rope_parameters"] = rope
    cfg["transformers_version"] = transformers.__version__
    with open(folder / "config.json", "w") as f:
        json.dump(dict(sorted(cfg.items())), f, indent=2)
        f.write("\n")


def load(folder: Path) -> torch.nn.Module:
    """Loads the folder as transformers reads it (config from our config.json)."""
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def save_weights(model: torch.nn.Module, folder: Path, dtype: torch.dtype) -> None:
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # as hub checkpoints of tied models
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def reference(model: torch.nn.Module, vocab: int, seed: int) -> tuple[dict, float]:
    gen = torch.Generator().manual_seed(1000 + seed)
    prompt = torch.randint(7, vocab, (PROMPT_LEN,), generator=gen)
    seq = prompt.clone()
    gaps = []
    with torch.no_grad():
        for _ in range(DECODE_STEPS):
            last = model(seq[None]).logits[0, -1]
            top2 = torch.topk(last, 2).values
            gaps.append(float(top2[0] - top2[1]))
            seq = torch.cat([seq, last.argmax()[None]])
        # One teacher-forced pass over prompt + 16 generated ids: rows 63..79.
        all_logits = model(seq[None]).logits[0].float()
    greedy = seq[PROMPT_LEN:]
    logits = all_logits[PROMPT_LEN - 1:]  # [17, vocab]
    assert torch.equal(logits[:DECODE_STEPS].argmax(-1), greedy), "greedy/teacher-forced mismatch"
    last = logits[-1]
    top2 = torch.topk(last, 2).values
    gaps.append(float(top2[0] - top2[1]))
    tensors = {
        "prompt_ids": prompt.to(torch.int32).contiguous(),
        "greedy_ids": greedy.to(torch.int32).contiguous(),
        "prompt_logits": all_logits[:PROMPT_LEN].clone(),
        "logits": logits.clone(),
    }
    return tensors, min(gaps)


def check_loaded(model: torch.nn.Module, hub: dict) -> None:
    """Guards against transformers silently reading our config differently."""
    cfg = model.config
    rope = cfg.rope_parameters
    assert rope["rope_theta"] == hub["rope_theta"], (rope, hub["rope_theta"])
    want = (hub["rope_scaling"] or {}).get("rope_type", "default")
    assert rope["rope_type"] == want, (rope, want)
    assert cfg.tie_word_embeddings == hub["tie_word_embeddings"]
    assert model.model.layers[0].self_attn.head_dim == hub["head_dim"]
    if hub["model_type"] == "qwen2":
        assert model.model.layers[0].self_attn.q_proj.bias is not None


def check_scaling_matters(folder: Path, tensors: dict) -> None:
    """The fixture must fail an engine that ignores rope_scaling."""
    config = AutoConfig.from_pretrained(folder)
    config.rope_parameters = {"rope_type": "default",
                              "rope_theta": config.rope_parameters["rope_theta"]}
    plain = AutoModelForCausalLM.from_pretrained(
        folder, config=config, dtype=torch.float32, attn_implementation="eager").eval()
    seq = torch.cat([tensors["prompt_ids"], tensors["greedy_ids"]]).long()
    with torch.no_grad():
        logits = plain(seq[None]).logits[0, PROMPT_LEN - 1:]
    diff = (logits - tensors["logits"]).abs().max().item()
    print(f"{folder.name}: max |logit diff| without rope scaling = {diff:.3f}")
    assert diff > 0.1, "rope scaling barely changes the logits; the fixture would not catch it"


def build(out: Path, name: str, seed: int, hub: dict, bf16: bool) -> None:
    folder = out / (name + ("_bf16" if bf16 else ""))
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_config(folder, hub, "bfloat16" if bf16 else "float32")
    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, seed)
    # bf16 variant: round the same random weights to bf16; reference uses them upcast.
    save_weights(model, folder, torch.bfloat16 if bf16 else torch.float32)
    model = load(folder)  # exactly what is on disk, as transformers reads it
    check_loaded(model, hub)
    tensors, min_gap = reference(model, hub["vocab_size"], seed)
    if hub["rope_scaling"]:
        check_scaling_matters(folder, tensors)
    meta = {
        "format": "leank-golden/1",
        "model": folder.name,
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                     "CPU float32, eager attention",
        "weights_dtype": "bfloat16" if bf16 else "float32",
        "min_top2_gap": f"{min_gap:.6f}",
    }
    # One metadata key: safetensors writes several keys in random order, and the
    # files should be byte-identical across regenerations.
    save_file(tensors, str(folder / "expected.safetensors"),
              metadata={"leank_golden": json.dumps(meta, sort_keys=True)})
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"{folder.name:18s} vocab {hub['vocab_size']:4d} layers {hub['num_hidden_layers']} "
          f"greedy {tensors['greedy_ids'].tolist()} min gap {min_gap:.4f} "
          f"logit std {tensors['logits'].std():.3f} ({size / 1024:.0f} KiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # bitwise reproducible reductions
    for name, (seed, hub) in MODELS.items():
        build(args.out, name, seed, hub, bf16=False)
        if name in BF16_VARIANTS:
            build(args.out, name, seed, hub, bf16=True)
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"total {total / 1024 / 1024:.2f} MiB in {args.out}")
    assert total <= 5 * 1024 * 1024, "golden data must stay under 5 MB"


if __name__ == "__main__":
    main()
