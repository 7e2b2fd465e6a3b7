"""LeanK's two-stage training of per-(layer, kv head, channel) key factors (docs: ../README.md).

Why the forward is split: the factors only change the logits of *answer* queries against
*middle* keys, so everything before the answer (the context's hidden states, K and V) is the
dense model's. One no-grad dense pass over the prompt fills a K/V cache; then the last prompt
token and the answer tokens are run twice from that cache - once dense (the target), once with
the factors (the prediction, with grad) - and the loss is the MSE of their final hidden states.
This is LeanK's objective (one more graded position than LeanK's labels: the last prompt
token), at the cost of a forward over a few tokens per step. Where the trainer differs from
LeanK's reference code, and why: train/README.md, "Where this differs".
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from train.attention import MiddleSpec
from train.checks import ZERO_HEADS
from train.data import Sample
from train.masks import binarize, kept_counts
from train.model import KVCache, LlamaModel


@dataclass
class StageConfig:
    steps: int = 100
    lr: float = 0.02
    reg: Union[float, List[float]] = 0.06  # stage 1: a list trains one factor set per value
    grad_accum: int = 1
    warmup_frac: float = 0.2   # linear warm-up over the first fifth of steps
    decay_frac: float = 0.2    # linear decay to 0 over the last fifth
    log_every: int = 10
    ckpt_every: int = 50


@dataclass
class MiddleConfig:
    sink: int = 64      # LeanK trained with sink 64 / recent 256 (serving uses 128 / 768)
    recent: int = 256
    block: int = 16


def lr_factor(step: int, steps: int, warmup_frac: float, decay_frac: float) -> float:
    """Multiplier of the base lr at `step` (0-based): ramps up linearly over the first
    warmup_frac of steps, stays at 1, ramps down linearly over the last decay_frac, ending at 1/d (d = the decay
    steps) on the last step."""
    w = max(1, int(round(steps * warmup_frac)))
    d = max(1, int(round(steps * decay_frac)))
    if step < w:
        return (step + 1) / w
    if step >= steps - d:
        return max(0.0, (steps - step) / d)
    return 1.0


def split_point(sample: Sample) -> int:
    """First position of the graded tail: the last prompt token (it predicts the first answer
    token) followed by the answer tokens."""
    return len(sample.prompt) - 1


def prefill(model: LlamaModel, ids: torch.Tensor) -> KVCache:
    cache = KVCache()
    with torch.no_grad():
        model(ids, fill_cache=cache)
    return cache


def tail_hidden(model: LlamaModel, ids: torch.Tensor, split: int, cache: KVCache,
                spec: Optional[MiddleSpec]) -> torch.Tensor:
    """Final hidden states [T - split, hidden] of ids[split:], after the cached prefix."""
    return model(ids[split:], start=split, cache=cache, spec=spec)


def sample_losses(model: LlamaModel, sample: Sample, mid: MiddleConfig,
                  scales: Sequence[torch.Tensor],
                  skips: Optional[Sequence[Optional[torch.Tensor]]] = None) -> List[torch.Tensor]:
    """MSE between dense and factor-scaled final hidden states on the graded tail, one per
    scale [L, H, D] (several factor sets share one dense prefill and one target pass)."""
    dev = model.embed_tokens.weight.device
    ids = torch.tensor(sample.prompt + sample.answer, dtype=torch.long, device=dev)
    split = split_point(sample)
    cache = prefill(model, ids[:split])
    with torch.no_grad():
        target = tail_hidden(model, ids, split, cache, None).float()
    out = []
    for r, scale in enumerate(scales):
        skip = skips[r] if skips is not None else None
        spec = MiddleSpec(mid.sink, mid.recent, mid.block, scale, skip)
        out.append(F.mse_loss(tail_hidden(model, ids, split, cache, spec).float(), target))
    return out


def sample_loss(model: LlamaModel, sample: Sample, mid: MiddleConfig, scale: torch.Tensor,
                skip: Optional[torch.Tensor] = None) -> torch.Tensor:
    return sample_losses(model, sample, mid, [scale], [skip])[0]


def ste_mask(alpha: torch.Tensor, sparsity: float, align: int):
    """Stage 2's straight-through mask: forward = the aligned binary mask of the current
    factors, backward = identity to alpha. Returns (mask, hard, skip)."""
    hard = binarize(alpha, sparsity, align)
    return hard + (alpha - alpha.detach()), hard, hard.sum(-1) == 0


def stage2_scale(alpha: torch.Tensor, sparsity: float, align: int, zero_heads: str = "drop"):
    """Stage 2's forward for one factor set: (scale, skip) for sample_losses. zero_heads
    decides what a head whose hard mask keeps 0 channels does with its middle keys:
    "drop" (the server's semantics) leaves them and their values out, so its factors get no
    gradient; "logit0" (LeanK's reference code) keeps them in the softmax, their logits
    q.(0*k) exactly 0 and their values mixed in, and the STE passes q_c*k_c to the factors."""
    if zero_heads not in ZERO_HEADS:
        raise ValueError(f"zero_heads must be one of {ZERO_HEADS}, got {zero_heads!r}")
    mask, _, skip = ste_mask(alpha, sparsity, align)
    return mask, (skip if zero_heads == "drop" else None)


class Interrupted(Exception):
    """run_stage stopped at `step` because stop() said so; the checkpoint holds that step."""

    def __init__(self, step: int):
        super().__init__(f"stopped at step {step}")
        self.step = step


@dataclass
class Progress:
    """tqdm when installed, otherwise a line every `every` steps."""
    total: int
    start: int
    desc: str
    every: int = 10

    def __post_init__(self):
        try:
            if not sys.stderr.isatty():
                raise ImportError("no terminal: plain progress lines")
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, initial=self.start, desc=self.desc,
                            dynamic_ncols=True, file=sys.stderr)
        except ImportError:  # pragma: no cover
            self.bar = None
        self.t0 = time.time()
        self.n = self.start

    def update(self, info: Dict[str, float]) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()})
        elif self.n % self.every == 0 or self.n == self.total:
            rate = (self.n - self.start) / max(1e-9, time.time() - self.t0)
            print(f"{self.desc} {self.n}/{self.total} " + " ".join(
                f"{k}={v:.4g}" for k, v in info.items()) + f" ({rate:.2f} it/s)",
                file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_stage(model: LlamaModel, data: Sequence[Sample], alpha: torch.Tensor, cfg: StageConfig,
              mid: MiddleConfig, *, stage: int, regs: Sequence[float],
              sparsities: Optional[Sequence[float]] = None, align: int = 16,
              zero_heads: str = "drop", seed: int = 0,
              start_step: int = 0, opt_state: Optional[dict] = None,
              log: Optional[Callable[[dict], None]] = None,
              checkpoint: Optional[Callable[[int, torch.Tensor, dict], None]] = None,
              desc: str = "", stop: Optional[Callable[[], bool]] = None) -> torch.Tensor:
    """Trains R independent factor sets alpha [R, L, H, D] (run r with reg regs[r]) for
    stage 1 (clamped factors + L1) or stage 2 (STE on the aligned binary mask at
    sparsities[r]; zero_heads: see stage2_scale). The R runs share each sample's dense
    prefill; since AdamW is element-wise and the losses are separable, this equals R separate
    runs. Resumes at start_step with
    opt_state. The sample order depends only on (seed, step), so a resumed run sees the same
    data. stop() is asked before each step: when true, the state so far is checkpointed and
    Interrupted is raised (a signal handler sets it, so a step is never cut in half).
    Returns alpha [R, L, H, D]."""
    R = alpha.shape[0]
    if len(regs) != R or (stage == 2 and (sparsities is None or len(sparsities) != R)):
        raise ValueError("one reg (and in stage 2 one sparsity) per factor set")
    if zero_heads not in ZERO_HEADS:
        raise ValueError(f"zero_heads must be one of {ZERO_HEADS}, got {zero_heads!r}")
    alpha = alpha.detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([alpha], lr=cfg.lr, weight_decay=0.0)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    bar = Progress(cfg.steps, start_step, desc or f"stage{stage}", cfg.log_every)
    for step in range(start_step, cfg.steps):
        if stop is not None and stop():
            bar.close()
            if checkpoint is not None and step > start_step:
                checkpoint(step, alpha.detach(), opt.state_dict())
            raise Interrupted(step)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_frac, cfg.decay_frac)
        t0 = time.time()
        mse_sum = [0.0] * R
        for a in range(cfg.grad_accum):
            s = data[order[(step * cfg.grad_accum + a) % len(data)]]
            if stage == 1:
                scales, skips = [alpha[r] for r in range(R)], None
            else:
                st = [stage2_scale(alpha[r], sparsities[r], align, zero_heads)
                      for r in range(R)]
                scales, skips = [x[0] for x in st], [x[1] for x in st]
            mses = sample_losses(model, s, mid, scales, skips)
            total = sum(m + regs[r] * alpha[r].abs().mean() for r, m in enumerate(mses))
            (total / cfg.grad_accum).backward()
            for r in range(R):
                mse_sum[r] += mses[r].item() / cfg.grad_accum
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            alpha.clamp_(0.0, 1.0)
        bar.update({"mse": sum(mse_sum) / R, "a": alpha.mean().item()})
        if log is not None and ((step + 1) % cfg.log_every == 0 or step == start_step or
                                step + 1 == cfg.steps):
            for r in range(R):
                a_r = alpha[r].detach()
                info = {"mse": mse_sum[r], "reg_term": float(regs[r] * a_r.abs().mean()),
                        "alpha_mean": float(a_r.mean())}
                if stage == 1:
                    info["frac_lt_0.5"] = float((a_r < 0.5).float().mean())
                    info["frac_lt_0.05"] = float((a_r < 0.05).float().mean())
                else:
                    hard = binarize(a_r, sparsities[r], align)
                    info["sparsity"] = 1.0 - float(hard.mean())
                    info["zero_heads"] = int((kept_counts(hard) == 0).sum())
                log(dict(stage=stage, run=r, reg=regs[r], step=step + 1,
                         lr=opt.param_groups[0]["lr"], loss=info["mse"] + info["reg_term"],
                         sec=round(time.time() - t0, 4), tokens=len(s.prompt) + len(s.answer),
                         target_sparsity=sparsities[r] if stage == 2 else None, **info))
        if checkpoint is not None and ((step + 1) % cfg.ckpt_every == 0):
            checkpoint(step + 1, alpha.detach(), opt.state_dict())
    bar.close()
    return alpha.detach()


def validate(model: LlamaModel, data: Sequence[Sample], mid: MiddleConfig,
             masks: Sequence[torch.Tensor]) -> List[float]:
    """Mean tail MSE of each hard 0/1 mask [L, H, D] (inference semantics: 0-kept heads skip
    middle keys) over data, sharing each sample's prefill."""
    tot = [0.0] * len(masks)
    with torch.no_grad():
        for s in data:
            mses = sample_losses(model, s, mid, list(masks), [m.sum(-1) == 0 for m in masks])
            for i, m in enumerate(mses):
                tot[i] += m.item() / len(data)
    return tot
