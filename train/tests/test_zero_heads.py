"""stage2.zero_heads: the stage-2 forward of a head whose hard mask keeps 0 channels.
"drop" (default) must stay what the committed masks were trained with: the head's middle keys
and values left out (the server's semantics), no gradient to its factors. "logit0" (LeanK's
reference code): the middle keys stay in the softmax with logit exactly 0, and the STE passes
a gradient to the head's factors."""

import random

import pytest
import torch

from train.attention import MiddleSpec, middle_tokens
from train.masks import binarize, kept_counts
from train.trainer import (MiddleConfig, StageConfig, lr_factor, prefill, run_stage,
                           sample_loss, sample_losses, stage2_scale, ste_mask, tail_hidden)

MID = MiddleConfig(sink=8, recent=16, block=4)
ZERO = (0, 1)  # (layer, kv head) that keeps 0 channels at sparsity 0.5


def _alpha(mc, n=1):
    """Random factors [n, L, H, D] whose masks at 0.5 keep 0 channels in head ZERO."""
    a = torch.rand(n, mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim,
                   generator=torch.Generator().manual_seed(4))
    a[:, ZERO[0], ZERO[1]] *= 0.05
    assert all(kept_counts(binarize(a[i], 0.5, 16))[ZERO] == 0 for i in range(n))
    return a


def _stage2_before(model, data, alpha0, cfg, sparsities, align, seed):
    """run_stage's stage 2 as written before stage2.zero_heads existed (STE mask; 0-kept
    heads skip their middle keys and values), step for step."""
    R = alpha0.shape[0]
    alpha = alpha0.detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([alpha], lr=cfg.lr, weight_decay=0.0)
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_frac, cfg.decay_frac)
        for a in range(cfg.grad_accum):
            s = data[order[(step * cfg.grad_accum + a) % len(data)]]
            st = [ste_mask(alpha[r], sparsities[r], align) for r in range(R)]
            mses = sample_losses(model, s, MID, [x[0] for x in st], [x[2] for x in st])
            total = sum(m + cfg.reg * alpha[r].abs().mean() for r, m in enumerate(mses))
            (total / cfg.grad_accum).backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            alpha.clamp_(0.0, 1.0)
    return alpha.detach()


def test_drop_is_the_default_and_unchanged(tiny_model, samples):
    a0 = _alpha(tiny_model.cfg, 2)
    cfg = StageConfig(steps=5, lr=0.05, reg=0.0, grad_accum=2, log_every=100, ckpt_every=1000)
    kw = dict(stage=2, regs=[0.0, 0.0], sparsities=[0.5, 0.75], align=16, seed=2)
    before = _stage2_before(tiny_model, samples, a0, cfg, [0.5, 0.75], 16, seed=2)
    default = run_stage(tiny_model, samples, a0, cfg, MID, **kw)
    drop = run_stage(tiny_model, samples, a0, cfg, MID, zero_heads="drop", **kw)
    assert torch.equal(default, before) and torch.equal(drop, before)
    # The 0-kept head got no gradient in any step: its factors did not move.
    assert torch.equal(drop[:, ZERO[0], ZERO[1]], a0[:, ZERO[0], ZERO[1]])
    # ... while "logit0" trains them, so the comparison above can tell the two apart.
    logit0 = run_stage(tiny_model, samples, a0, cfg, MID, zero_heads="logit0", **kw)
    assert not torch.equal(logit0[0, ZERO[0], ZERO[1]], a0[0, ZERO[0], ZERO[1]])


def test_drop_forward_is_the_servers(tiny_model, samples):
    """"drop": the trained forward is the inference semantics of the hard mask (what
    validate() and the server use), and the 0-kept head's factors get exactly 0 gradient."""
    alpha = _alpha(tiny_model.cfg)[0].requires_grad_(True)
    scale, skip = stage2_scale(alpha, 0.5, 16)
    hard = binarize(alpha.detach(), 0.5, 16)
    served = MiddleSpec.from_mask(hard, MID.sink, MID.recent, MID.block)
    loss = sample_loss(tiny_model, samples[0], MID, scale, skip)
    assert torch.equal(skip, served.skip) and skip[ZERO]
    assert loss.item() == sample_loss(tiny_model, samples[0], MID, served.scale,
                                      served.skip).item()
    loss.backward()
    assert torch.all(alpha.grad[ZERO] == 0)
    assert alpha.grad.abs().sum() > 0


def _softmax_inputs(model, sample, scale, skip, monkeypatch):
    """The logits (after the causal / skip masking) each layer's attention hands to softmax
    for the graded tail, with the query and key positions."""
    ids = torch.tensor(sample.prompt + sample.answer, dtype=torch.long)
    split = len(sample.prompt) - 1
    cache = prefill(model, ids[:split])
    seen, softmax = [], torch.softmax

    def spy(x, *a, **k):
        seen.append(x.detach().clone())
        return softmax(x, *a, **k)

    monkeypatch.setattr(torch, "softmax", spy)
    tail_hidden(model, ids, split, cache, MiddleSpec(MID.sink, MID.recent, MID.block, scale,
                                                     skip))
    monkeypatch.undo()
    return seen, torch.arange(split, len(ids)), torch.arange(len(ids))


@pytest.mark.parametrize("mode", ["drop", "logit0"])
def test_zero_head_logits_and_gradient(tiny_model, samples, monkeypatch, mode):
    alpha = _alpha(tiny_model.cfg)[0].requires_grad_(True)
    scale, skip = stage2_scale(alpha, 0.5, 16, mode)
    assert (skip is None) == (mode == "logit0")
    sample = samples[0]
    logits, q_pos, k_pos = _softmax_inputs(tiny_model, sample, scale, skip, monkeypatch)
    assert len(logits) == tiny_model.cfg.num_hidden_layers
    m = middle_tokens(q_pos + 1, MID.sink, MID.recent, MID.block)
    is_mid = (k_pos[None, :] >= MID.sink) & (k_pos[None, :] < MID.sink + m[:, None])
    assert is_mid.sum() > 0
    zl = logits[ZERO[0]][ZERO[1]]  # [group, Tq, Tk] of the 0-kept head
    mid = zl[:, is_mid]
    if mode == "logit0":  # in the softmax, logit exactly 0 (their values mixed in)
        assert torch.all(mid == 0)
    else:  # left out
        assert torch.all(mid == float("-inf"))
    # The head's other keys and the other heads' middle keys keep their q.k logits.
    visible = (k_pos[None, :] <= q_pos[:, None]) & ~is_mid
    assert torch.all(torch.isfinite(zl[:, visible])) and torch.all(zl[:, visible] != 0)
    other = logits[ZERO[0]][1 - ZERO[1]][:, is_mid]
    assert torch.all(torch.isfinite(other)) and (other != 0).any()

    loss = sample_loss(tiny_model, sample, MID, scale, skip)
    loss.backward()
    g = alpha.grad[ZERO]
    if mode == "logit0":
        assert g.abs().sum() > 0 and (g != 0).sum() == tiny_model.cfg.head_dim
    else:
        assert torch.all(g == 0)


def test_unknown_zero_heads_is_refused(tiny_model, samples):
    a0 = _alpha(tiny_model.cfg)
    cfg = StageConfig(steps=1, log_every=100, ckpt_every=1000)
    with pytest.raises(ValueError, match="zero_heads"):
        run_stage(tiny_model, samples, a0, cfg, MID, stage=2, regs=[0.0], sparsities=[0.5],
                  zero_heads="keep")
