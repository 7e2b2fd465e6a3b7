"""Attention with LeanK's middle-key rule: the same semantics as the server (cache/README.md,
"Attention semantics").

With S = sink, W = recent, B = block and M(n) = B * max(0, floor((n - S - W) / B)), key j is
*middle for query i* when S <= j < S + M(i + 1). For a middle key the logit q.k is taken with
the key's channels multiplied by a per-(kv head, channel) factor `scale` (a 0/1 mask at
inference: q.k over kept channels only; the learnable alpha while training), and if the head is
marked `skip` (keeps 0 channels) the middle key and its value are left out entirely. Every other
key j <= i uses the full q.k. Since q.(s*k) = (s*q).k, the factor is applied to the query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


def middle_tokens(n: torch.Tensor, sink: int, recent: int, block: int) -> torch.Tensor:
    """M(n) for a tensor of token counts n."""
    return block * torch.clamp(torch.div(n - sink - recent, block, rounding_mode="floor"), min=0)


@dataclass
class LayerMiddle:
    sink: int
    recent: int
    block: int
    scale: Optional[torch.Tensor] = None  # [nkv, d] factor on middle keys' channels
    skip: Optional[torch.Tensor] = None   # [nkv] bool: head ignores middle keys and values


@dataclass
class MiddleSpec:
    """Per-model middle rule: scale [L, nkv, d] (float), skip [L, nkv] (bool); either may be
    None (no factor / no skipping)."""
    sink: int = 128
    recent: int = 768
    block: int = 16
    scale: Optional[torch.Tensor] = None
    skip: Optional[torch.Tensor] = None

    @staticmethod
    def from_mask(kept: torch.Tensor, sink: int, recent: int, block: int,
                  dtype=torch.float32) -> "MiddleSpec":
        """Inference semantics of a 0/1 mask kept [L, nkv, d]."""
        kept = kept.to(dtype)
        return MiddleSpec(sink, recent, block, kept, kept.sum(-1) == 0)

    def for_layer(self, li: int) -> LayerMiddle:
        return LayerMiddle(self.sink, self.recent, self.block,
                           None if self.scale is None else self.scale[li],
                           None if self.skip is None else self.skip[li])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
              k_pos: torch.Tensor, mid: Optional[LayerMiddle] = None,
              chunk: int = 1024) -> torch.Tensor:
    """q: [nq, Tq, d]; k, v: [nkv, Tk, d]; q_pos [Tq], k_pos [Tk] absolute positions.
    Causal (key j visible to query i iff j <= i). Returns [nq, Tq, d]."""
    nq, tq, d = q.shape
    nkv = k.shape[0]
    g = nq // nkv
    if mid is None and hasattr(torch.nn.functional, "scaled_dot_product_attention") \
            and tq == k.shape[1] and q.is_cuda:
        # Plain causal self-attention over the whole sequence: the fused kernel (torch >= 2).
        kk = k.repeat_interleave(g, dim=0)
        vv = v.repeat_interleave(g, dim=0)
        return torch.nn.functional.scaled_dot_product_attention(q, kk, vv, is_causal=True)
    qg = q.reshape(nkv, g, tq, d)
    kt = k.transpose(1, 2).unsqueeze(1)  # [nkv, 1, d, Tk]
    vg = v.unsqueeze(1)                  # [nkv, 1, Tk, d]
    sm = 1.0 / math.sqrt(d)
    outs = []
    for s in range(0, tq, chunk):
        qc = qg[:, :, s:s + chunk]
        pc = q_pos[s:s + chunk]
        logits = torch.matmul(qc, kt) * sm  # [nkv, g, C, Tk]
        allowed = (k_pos[None, :] <= pc[:, None])[None, None]  # [1, 1, C, Tk]
        if mid is not None:
            m = middle_tokens(pc + 1, mid.sink, mid.recent, mid.block)
            is_mid = (k_pos[None, :] >= mid.sink) & (k_pos[None, :] < mid.sink + m[:, None])
            is_mid = is_mid[None, None]  # [1, 1, C, Tk]
            if mid.scale is not None:
                qs = qc * mid.scale[:, None, None, :].to(qc.dtype)
                logits = torch.where(is_mid, torch.matmul(qs, kt) * sm, logits)
            if mid.skip is not None:
                allowed = allowed & ~(is_mid & mid.skip[:, None, None, None])
        logits = logits.float().masked_fill(~allowed, float("-inf"))
        p = torch.softmax(logits, dim=-1).to(v.dtype)
        outs.append(torch.matmul(p, vg))  # [nkv, g, C, d]
    return torch.cat(outs, dim=2).reshape(nq, tq, d)
