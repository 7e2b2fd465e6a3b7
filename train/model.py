"""A compact Llama/Qwen2-family decoder in plain PyTorch, with LeanK's key-channel masking.

Why not transformers' modules with hooks: the trainer must run on Debian's torch 1.13 (CI) and
on torch 2.x + transformers 5.x (GPU machine), and it needs an attention in which the keys of
"middle" tokens are seen through per-channel factors by some queries only. A ~250-line model
with one attention function is easier to keep right on both than hooks into a moving API.
tests/test_model.py checks its logits against transformers' LlamaForCausalLM and
Qwen2ForCausalLM wherever transformers is installed.

All tensors are for ONE sequence (batch 1): hidden [T, hidden_size]. Contexts differ in length,
LeanK trains with batch 1, and evaluation runs one sequence at a time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train import st_io
from train.attention import MiddleSpec, attention
from train.checks import kv_heads


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: q/k/v biases
    model_type: str = "llama"
    name: str = ""

    @staticmethod
    def from_hf(cfg: dict, name: str = "") -> "ModelConfig":
        rope_theta = cfg.get("rope_theta")
        rope_scaling = cfg.get("rope_scaling")
        rp = cfg.get("rope_parameters")  # transformers 5 spelling
        if isinstance(rp, dict):
            rope_theta = rp.get("rope_theta", rope_theta)
            if rp.get("rope_type", "default") != "default":
                rope_scaling = rp
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) in (
                None, "default"):
            rope_scaling = None
        model_type = cfg.get("model_type", "llama")
        heads = cfg["num_attention_heads"]
        return ModelConfig(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=kv_heads(cfg),
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
            rope_scaling=rope_scaling,
            max_position_embeddings=cfg.get("max_position_embeddings", 8192),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            model_type=model_type,
            name=name or cfg.get("_name_or_path", ""),
        )

    def to_hf(self) -> dict:
        arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[self.model_type]
        d = {
            "architectures": [arch], "model_type": self.model_type,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings, "hidden_act": "silu",
        }
        if self.model_type == "llama":
            d["attention_bias"] = self.attention_bias
        return d


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    rs = cfg.rope_scaling
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "llama3":
            factor = rs["factor"]
            low, high = rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
            old = rs.get("original_max_position_embeddings", 8192)
            low_wl, high_wl = old / low, old / high
            wl = 2 * math.pi / inv
            scaled = torch.where(wl > low_wl, inv / factor, inv)
            smooth = (old / wl - low) / (high - low)
            mid = (1 - smooth) * scaled / factor + smooth * scaled
            is_mid = (wl >= high_wl) & (wl <= low_wl)
            inv = torch.where(is_mid, mid, scaled)
        elif kind == "linear":
            inv = inv / rs["factor"]
        else:
            raise ValueError(f"rope_scaling type {kind!r} is not supported")
    return inv.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [H, T, d]; cos/sin: [T, d]. HF convention: rotate halves."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        b = cfg.attention_bias
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(h, nq * d, bias=b)
        self.k_proj = nn.Linear(h, nkv * d, bias=b)
        self.v_proj = nn.Linear(h, nkv * d, bias=b)
        self.o_proj = nn.Linear(nq * d, h, bias=False)
        self.gate_proj = nn.Linear(h, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(h, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, h, bias=False)
        self.nq, self.nkv, self.d = nq, nkv, d

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x: [T, h] -> q [nq, T, d], k/v [nkv, T, d] (q, k after RoPE)."""
        t = x.shape[0]
        hs = self.input_layernorm(x)
        q = self.q_proj(hs).view(t, self.nq, self.d).transpose(0, 1)
        k = self.k_proj(hs).view(t, self.nkv, self.d).transpose(0, 1)
        v = self.v_proj(hs).view(t, self.nkv, self.d).transpose(0, 1)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """attn: [nq, T, d] -> residual stream after attention and MLP."""
        x = x + self.o_proj(attn.transpose(0, 1).reshape(x.shape[0], -1))
        hs = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(hs)) * self.up_proj(hs))


# observer(layer, q [nq,T,d], k [nkv,T,d]) -- used for calibration statistics.
Observer = Callable[[int, torch.Tensor, torch.Tensor], None]


class KVCache:
    """Post-RoPE K and V of a prefix, per layer: k/v [nkv, T, d]."""

    def __init__(self):
        self.k: List[torch.Tensor] = []
        self.v: List[torch.Tensor] = []

    def __len__(self) -> int:
        return 0 if not self.k else self.k[0].shape[1]


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(
            cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)  # the model's own weights are always frozen

    # ---- construction -------------------------------------------------------------------
    @staticmethod
    def random(cfg: ModelConfig, seed: int = 0, std: float = 0.08) -> "LlamaModel":
        g = torch.Generator().manual_seed(seed)
        m = LlamaModel(cfg)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.endswith("layernorm.weight") or name == "norm.weight":
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(std * torch.randn(p.shape, generator=g))
        return m

    def hf_state_dict(self) -> Dict[str, torch.Tensor]:
        out = {}
        for name, p in self.state_dict().items():
            if name == "inv_freq":
                continue
            if name.startswith("layers."):
                i, rest = name[len("layers."):].split(".", 1)
                group = "mlp" if rest.split(".")[0] in ("gate_proj", "up_proj", "down_proj") \
                    else ("self_attn" if "proj" in rest else "")
                name = f"model.layers.{i}.{group + '.' if group else ''}{rest}"
            elif name.startswith("lm_head"):
                pass
            else:
                name = "model." + name
            out[name] = p
        return out

    def save_hf(self, folder) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.cfg.to_hf(), indent=2))
        st_io.save({k: v.detach().float().cpu().numpy() for k, v in self.hf_state_dict().items()},
                   folder / "model.safetensors", {"format": "pt"})

    @staticmethod
    def load_hf(folder, dtype=torch.float32, device="cpu") -> "LlamaModel":
        folder = Path(folder)
        cfg = ModelConfig.from_hf(json.loads((folder / "config.json").read_text()),
                                  name=folder.name)
        m = LlamaModel(cfg)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{folder}: no *.safetensors weights")
        hf = {}
        for f in files:
            for name in st_io.tensor_info(f):
                hf[name] = f
        mapping = m.hf_state_dict()  # hf name -> our parameter tensor
        with torch.no_grad():
            for hf_name, target in mapping.items():
                if hf_name not in hf:
                    raise KeyError(f"{folder}: tensor {hf_name!r} missing from the checkpoint")
                dt, shape, raw = st_io.read_raw(hf[hf_name], hf_name)
                arr = _decode(dt, raw).reshape(shape)
                if list(arr.shape) != list(target.shape):
                    raise ValueError(f"{folder}: tensor {hf_name!r} has shape {list(arr.shape)},"
                                     f" expected {list(target.shape)}")
                target.copy_(torch.from_numpy(arr))
        return m.to(device=device, dtype=dtype)

    # ---- forward ------------------------------------------------------------------------
    def rope(self, pos: torch.Tensor, dtype):
        f = pos.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((f, f), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, ids: torch.Tensor, start: int = 0, cache: Optional[KVCache] = None,
                spec: Optional[MiddleSpec] = None, fill_cache: Optional[KVCache] = None,
                observer: Optional[Observer] = None, chunk: int = 1024) -> torch.Tensor:
        """Runs tokens ids [T] at positions start..start+T-1 after an optional cached prefix
        (cache, len == start). spec applies the LeanK middle-key rule (attention.py) to the
        queries of these tokens. fill_cache, if given, receives this call's K/V per layer.
        Returns the final hidden states after the last norm: [T, hidden]."""
        if cache is not None and len(cache) != start:
            raise ValueError(f"cache holds {len(cache)} tokens, start is {start}")
        dev = self.embed_tokens.weight.device
        dtype = self.embed_tokens.weight.dtype
        pos = torch.arange(start, start + ids.shape[0], device=dev)
        cos, sin = self.rope(pos, dtype)
        kpos = torch.arange(0, start + ids.shape[0], device=dev)
        x = self.embed_tokens(ids.to(dev))
        for li, layer in enumerate(self.layers):
            q, k, v = layer.qkv(x, cos, sin)
            if observer is not None:
                observer(li, q, k)
            if fill_cache is not None:
                fill_cache.k.append(k.detach())
                fill_cache.v.append(v.detach())
            if cache is not None and start > 0:
                k = torch.cat((cache.k[li], k), dim=1)
                v = torch.cat((cache.v[li], v), dim=1)
            a = attention(q, k, v, pos, kpos, spec.for_layer(li) if spec else None, chunk)
            x = layer.finish(x, a)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return hidden @ w.t()


def _decode(dtype: str, raw: bytes) -> np.ndarray:
    if dtype == "BF16":
        u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
        return u.view(np.float32)
    table = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
    if dtype not in table:
        raise ValueError(f"weights of dtype {dtype} are not supported")
    return np.frombuffer(raw, dtype=table[dtype]).astype(np.float32)
