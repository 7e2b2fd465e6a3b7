#!/usr/bin/env python3
"""Independent check of tests/data/golden/: a plain numpy (float64) forward pass
that reads only the hub-style keys of config.json (as the C++ engine does) and
model.safetensors, compared to expected.safetensors from transformers.
It validates both the fixtures and the README's description of them.

Usage: python3 tests/golden/check_fixtures_numpy.py [DIR]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"


def load_tensors(path: Path) -> dict[str, np.ndarray]:
    # framework "pt" would need torch; numpy cannot hold bf16, so read raw bytes.
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + header_len])
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        buf = raw[base + start:base + end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype={"F32": np.float32, "I32": np.int32}[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).astype(np.float64 if arr.dtype != np.int32 else np.int32)
    return out


def inv_freq(cfg: dict) -> np.ndarray:
    d = cfg["head_dim"]
    freq = 1.0 / cfg["rope_theta"] ** (np.arange(0, d, 2) / d)
    rs = cfg.get("rope_scaling")
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        old = rs["original_max_position_embeddings"]
        low_wl, high_wl = old / rs["low_freq_factor"], old / rs["high_freq_factor"]
        wl = 2 * math.pi / freq
        smooth = (old / wl - rs["low_freq_factor"]) / (rs["high_freq_factor"] - rs["low_freq_factor"])
        mid = (1 - smooth) * freq / rs["factor"] + smooth * freq
        freq = np.where(wl > low_wl, freq / rs["factor"], np.where(wl < high_wl, freq, mid))
    elif rs:
        raise ValueError(f"rope_scaling {rs} not handled")
    return freq


def rope(x: np.ndarray, pos: np.ndarray, freq: np.ndarray) -> np.ndarray:
    # x: [T, heads, head_dim]; HF "rotate half" layout.
    ang = pos[:, None] * freq[None, :]  # [T, d/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def forward(cfg: dict, w: dict, ids: np.ndarray) -> np.ndarray:
    """Logits [T, vocab] for token ids [T] (causal, positions 0..T-1)."""
    eps, nh, nkv, hd = cfg["rms_norm_eps"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    bias = cfg["model_type"] == "qwen2" or cfg.get("attention_bias", False)
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    freq = inv_freq(cfg)

    def norm(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if bias and name + ".bias" in w else y

    h = w["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = norm(h, w[p + "input_layernorm.weight"])
        q = rope(lin(x, p + "self_attn.q_proj").reshape(T, nh, hd), pos, freq)
        k = rope(lin(x, p + "self_attn.k_proj").reshape(T, nkv, hd), pos, freq)
        v = lin(x, p + "self_attn.v_proj").reshape(T, nkv, hd)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / math.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", s, v).reshape(T, nh * hd)
        h = h + o @ w[p + "self_attn.o_proj.weight"].T
        x = norm(h, w[p + "post_attention_layernorm.weight"])
        g, u = x @ w[p + "mlp.gate_proj.weight"].T, x @ w[p + "mlp.up_proj.weight"].T
        h = h + (g / (1 + np.exp(-g)) * u) @ w[p + "mlp.down_proj.weight"].T
    h = norm(h, w["model.norm.weight"])
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return h @ head.T


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN
    bad = 0
    for folder in sorted(p for p in root.iterdir() if (p / "expected.safetensors").exists()):
        cfg = json.loads((folder / "config.json").read_text())
        w = load_tensors(folder / "model.safetensors")
        exp = load_tensors(folder / "expected.safetensors")
        seq = np.concatenate([exp["prompt_ids"], exp["greedy_ids"]])
        logits = forward(cfg, w, seq)
        n = len(exp["prompt_ids"])
        err_last = np.abs(logits[n - 1:] - exp["logits"]).max()
        err_prompt = np.abs(logits[:n] - exp["prompt_logits"]).max()
        greedy_ok = np.array_equal(logits[n - 1:-1].argmax(-1), exp["greedy_ids"])
        ok = err_last < 1e-3 and err_prompt < 1e-3 and greedy_ok
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {folder.name:16s} max|dlogits| decode {err_last:.2e} "
              f"prompt {err_prompt:.2e} greedy {'same' if greedy_ok else 'DIFFERENT'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
