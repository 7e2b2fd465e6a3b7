"""Training mechanics on a tiny random model (CPU): gradients reach only alpha, stage 1 lowers
the loss, checkpoints resume exactly, the CLI writes valid masks."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import random_samples, tiny_config
from train.data import save_samples
from train.masks import load_mask, target_total
from train.attention import MiddleSpec
from train.model import KVCache, LlamaModel
from train.trainer import MiddleConfig, StageConfig, lr_factor, run_stage, sample_loss

MID = MiddleConfig(sink=8, recent=16, block=4)


def test_gradients_reach_only_alpha(tiny_model, samples):
    mc = tiny_model.cfg
    alpha = torch.full((mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim), 0.5,
                       requires_grad=True)
    loss = sample_loss(tiny_model, samples[0], MID, alpha)
    assert loss.item() > 0
    loss.backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in tiny_model.parameters())


def test_alpha_gradient_is_the_loss_gradient(tiny_model, samples):
    """The gradient that reaches alpha is the derivative of the loss: its projection on random
    directions equals a central finite difference (float64 model; the norms and softmax
    compute in float32, hence rtol 2e-3). A detach() on a path the factors' effect travels
    (the residual stream, a later layer's query) still lets the loss fall, but not this."""
    m = tiny_model.double()
    mc = m.cfg
    g = torch.Generator().manual_seed(12)
    alpha = torch.rand(mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim,
                       generator=g, dtype=torch.float64).requires_grad_(True)
    sample_loss(m, samples[0], MID, alpha).backward()
    eps = 1e-3
    for _ in range(3):
        v = torch.randn(alpha.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            fd = (sample_loss(m, samples[0], MID, alpha + eps * v) -
                  sample_loss(m, samples[0], MID, alpha - eps * v)).item() / (2 * eps)
        got = float((alpha.grad * v).sum())
        assert abs(got - fd) <= 2e-3 * abs(fd) and abs(fd) > 1e-3, (got, fd)


def test_loss_is_the_tail_mse_from_the_last_prompt_token(tiny_model, samples):
    """sample_loss = MSE, over the last prompt token and the answer tokens, between the dense
    final hidden states of one uncached forward and those whose queries (only theirs) use the
    factors: computed here from those definitions."""
    mc = tiny_model.cfg
    alpha = torch.rand(mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim,
                       generator=torch.Generator().manual_seed(13))
    s = samples[2]
    ids = torch.tensor(s.prompt + s.answer)
    first = len(s.prompt) - 1
    spec = MiddleSpec(MID.sink, MID.recent, MID.block, alpha, None)
    with torch.no_grad():
        dense = tiny_model(ids)[first:]
        cache = KVCache()
        tiny_model(ids[:first], fill_cache=cache)
        scaled = tiny_model(ids[first:], start=first, cache=cache, spec=spec)
        want = ((scaled - dense) ** 2).mean().item()
        got = sample_loss(tiny_model, s, MID, alpha).item()
    assert want > 0 and got == pytest.approx(want, rel=1e-4)


def test_stage1_l1_pulls_factors_down(tiny_model, samples):
    """Stage 1's L1 term: from the same start, a large reg ends with smaller factors than
    reg 0 and smaller than where it started (a sign error in the term pushes them up)."""
    mc = tiny_model.cfg
    a0 = torch.full((1, mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim), 0.5)
    a0 = (a0 + 0.2 * torch.rand(a0.shape, generator=torch.Generator().manual_seed(14))).repeat(
        2, 1, 1, 1)
    cfg = StageConfig(steps=6, lr=0.05, log_every=100, ckpt_every=1000)
    out = run_stage(tiny_model, samples, a0, cfg, MID, stage=1, regs=[0.0, 1.0])
    assert out[1].mean() < a0[1].mean() - 0.05, (out[1].mean(), a0[1].mean())
    assert out[1].mean() < out[0].mean() - 0.05, (out[1].mean(), out[0].mean())


def test_identity_factors_give_zero_loss(tiny_model, samples):
    mc = tiny_model.cfg
    ones = torch.ones(mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim)
    assert sample_loss(tiny_model, samples[1], MID, ones).item() == 0.0


def test_lr_schedule():
    f = [lr_factor(s, 10, 0.2, 0.2) for s in range(10)]
    assert f == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]


def _mean_loss(model, data, alpha, reg):
    with torch.no_grad():
        return float(np.mean([sample_loss(model, s, MID, alpha).item() + reg * alpha.abs().mean()
                              for s in data]))


def test_short_stage1_lowers_loss(tiny_model, samples):
    mc = tiny_model.cfg
    g = torch.Generator().manual_seed(9)
    alpha0 = torch.rand(1, mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim,
                        generator=g)
    reg = 1e-3
    before = _mean_loss(tiny_model, samples, alpha0[0], reg)
    cfg = StageConfig(steps=24, lr=0.05, reg=reg, log_every=100, ckpt_every=1000)
    alpha = run_stage(tiny_model, samples, alpha0, cfg, MID, stage=1, regs=[reg])
    after = _mean_loss(tiny_model, samples, alpha[0], reg)
    assert after < 0.7 * before, (before, after)
    assert alpha.min() >= 0 and alpha.max() <= 1


def test_joint_runs_equal_separate_runs(tiny_model, samples):
    mc = tiny_model.cfg
    shape = (mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim)
    cfg = StageConfig(steps=5, lr=0.05, log_every=100, ckpt_every=1000)
    a0 = torch.ones(2, *shape)
    joint = run_stage(tiny_model, samples, a0, cfg, MID, stage=1, regs=[0.01, 0.2])
    for r, reg in enumerate([0.01, 0.2]):
        alone = run_stage(tiny_model, samples, a0[r:r + 1], cfg, MID, stage=1, regs=[reg])
        assert torch.allclose(joint[r], alone[0], atol=1e-6)


class Stop(Exception):
    pass


@pytest.mark.parametrize("stage", [1, 2])
def test_resume_is_exact(tiny_model, samples, stage):
    mc = tiny_model.cfg
    a0 = torch.rand(1, mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim,
                    generator=torch.Generator().manual_seed(10))
    cfg = StageConfig(steps=6, lr=0.05, reg=0.01, log_every=100, ckpt_every=3)
    kw = dict(stage=stage, regs=[0.01], sparsities=[0.5] if stage == 2 else None)
    full = run_stage(tiny_model, samples, a0, cfg, MID, **kw)
    saved = {}

    def ck(step, a, opt):
        saved.update(step=step, alpha=a.clone(), opt=opt)
        raise Stop

    with pytest.raises(Stop):
        run_stage(tiny_model, samples, a0, cfg, MID, checkpoint=ck, **kw)
    resumed = run_stage(tiny_model, samples, saved["alpha"], cfg, MID, start_step=saved["step"],
                        opt_state=saved["opt"], **kw)
    assert torch.allclose(full, resumed, atol=1e-6)


def test_cli_end_to_end_and_resume(tmp_path, capsys):
    from train import leank_train
    model = LlamaModel.random(tiny_config(), seed=3, std=0.15)
    model.save_hf(tmp_path / "model")
    save_samples(random_samples(6), tmp_path / "train.npz.xz")
    save_samples(random_samples(3, seed=1), tmp_path / "val.npz")
    cfg = {"model": "model", "out_dir": "out", "device": "cpu",
           "data": {"file": "train.npz.xz", "val": "val.npz"}, "middle": vars(MID),
           "stage1": {"steps": 4, "lr": 0.05, "reg": [0.01, 0.1], "log_every": 1,
                      "ckpt_every": 2},
           "stage2": {"steps": 3, "targets": [0.5, 0.75], "align": 16, "log_every": 1},
           "export": {"sink": 128, "recent": 768, "model": "tiny"}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    leank_train.main(["--config", str(tmp_path / "cfg.json"), "--root", str(tmp_path)])
    for t, tag in ((0.5, "s50"), (0.75, "s75")):
        kept, meta = load_mask(tmp_path / "out" / f"masks-{tag}.safetensors")
        assert int(kept.sum()) == target_total(kept.size, t, 16)
        assert meta["target_sparsity"] == repr(t) and meta["align"] == "16"
    log = [json.loads(l) for l in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("stage") == 1 and r.get("run") == 1 for r in log)
    assert any(r.get("event") == "select" for r in log)
    # A second run finds the finished stages and does not train again.
    n = len(log)
    leank_train.main(["--config", str(tmp_path / "cfg.json"), "--root", str(tmp_path)])
    log2 = (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()
    assert not any(json.loads(l).get("stage") for l in log2[n:])


def test_stop_checkpoints_the_steps_done_and_resumes_exactly(tiny_model, samples):
    from train.trainer import Interrupted
    mc = tiny_model.cfg
    a0 = torch.rand(1, mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim,
                    generator=torch.Generator().manual_seed(11))
    cfg = StageConfig(steps=7, lr=0.05, reg=0.01, log_every=100, ckpt_every=1000)
    full = run_stage(tiny_model, samples, a0, cfg, MID, stage=1, regs=[0.01])
    saved, asked = {}, []

    def stop():  # as a signal arriving during step 4 (0-based 3)
        asked.append(1)
        return len(asked) > 4

    def ck(step, a, opt):
        saved.update(step=step, alpha=a.clone(), opt=opt)

    with pytest.raises(Interrupted) as e:
        run_stage(tiny_model, samples, a0, cfg, MID, stage=1, regs=[0.01], checkpoint=ck,
                  stop=stop)
    assert e.value.step == 4 and saved["step"] == 4  # ckpt_every 1000: saved because stopped
    resumed = run_stage(tiny_model, samples, saved["alpha"], cfg, MID, stage=1, regs=[0.01],
                        start_step=4, opt_state=saved["opt"])
    assert torch.allclose(full, resumed, atol=1e-6)


def _start_cli(tmp_path):
    import subprocess
    import sys
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    cmd = [sys.executable, "-m", "train.leank_train", "--config", str(tmp_path / "cfg.json"),
           "--root", str(tmp_path)]
    return subprocess.Popen(cmd, cwd=root, stderr=subprocess.STDOUT, stdout=subprocess.PIPE,
                            text=True)


def _wait_for(proc, needle):
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError("".join(lines))


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_cli_signal_saves_a_checkpoint_and_no_mask(tmp_path, sig):
    """SIGTERM / Ctrl-C: the steps done are checkpointed (not only every ckpt_every), the exit
    status is 128 + signal, no mask is written, and the same command resumes there."""
    import signal
    model = LlamaModel.random(tiny_config(), seed=3, std=0.15)
    model.save_hf(tmp_path / "model")
    save_samples(random_samples(4), tmp_path / "train.npz")
    cfg = {"model": "model", "out_dir": "out", "device": "cpu", "data": {"file": "train.npz"},
           "middle": vars(MID),
           "stage1": {"steps": 10 ** 7, "reg": [0.01], "log_every": 5, "ckpt_every": 10 ** 6},
           "stage2": {"steps": 3, "targets": [0.5]}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    signum = getattr(signal, sig)
    proc = _start_cli(tmp_path)
    try:
        _wait_for(proc, "stage1 10/")
        proc.send_signal(signum)
        err = proc.stdout.read()
        assert proc.wait(timeout=60) == 128 + signum, err
    finally:
        proc.kill()
    assert "Traceback" not in err and "Rerun the same command to resume" in err, err
    out = tmp_path / "out"
    assert (out / "stage1.ckpt.pt").exists()
    assert not list(out.glob("masks-*")) and not list(out.glob("*.tmp"))
    step = torch.load(str(out / "stage1.ckpt.pt"))["step"]
    assert step >= 10
    proc = _start_cli(tmp_path)
    try:
        lines = _wait_for(proc, "resuming at step")
        proc.send_signal(signal.SIGTERM)
        proc.stdout.read()
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert f"stage1: resuming at step {step}" in lines[-1]
