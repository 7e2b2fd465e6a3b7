"""CLI: two-stage LeanK mask training, resumable, exporting project-format masks.

  python3 -m train.leank_train --config train/configs/smollm2.json [--set stage1.steps=50 ...]

Outputs in out_dir: train_log.jsonl (one JSON line per logged step), stage1.ckpt.pt /
stage2.ckpt.pt (resume points), alpha_stage1.safetensors, alpha_stage2.safetensors,
masks-sNN.safetensors (project format), plots (PNG, when matplotlib is installed).
Rerunning the same command resumes: finished stages are loaded, unfinished ones continue from
their last checkpoint. SIGINT / SIGTERM checkpoint the steps done and exit 128 + signal.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from train import st_io
from train.checks import (ConfigError, check_device, check_run, check_samples, check_stage,
                          check_targets, check_zero_heads, read_model_config, sliding_window)
from train.data import checked_dataset, checked_generator, load_samples
from train.masks import binarize, kept_counts, save_mask
from train.model import LlamaModel
from train.trainer import Interrupted, MiddleConfig, StageConfig, run_stage, validate


def load_config(path, overrides=()) -> dict:
    try:
        text = Path(path).read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml  # optional
            cfg = yaml.safe_load(text)
        else:
            cfg = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # yaml's errors are ValueErrors too
        raise ConfigError(f"config {path}: cannot read: {e}") from None
    except ImportError:
        raise ConfigError(f"config {path}: YAML needs PyYAML (python3-yaml)") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"config {path}: top level must be an object")
    for o in overrides:  # "a.b=value" (value parsed as JSON when possible)
        if "=" not in o:
            raise ConfigError(f"--set {o!r}: expected KEY=VALUE, e.g. stage1.steps=10")
        key, val = o.split("=", 1)
        try:
            val = json.loads(val)
        except json.JSONDecodeError:
            pass
        d = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"--set {o!r}: {p} is not an object in the config")
        d[parts[-1]] = val
    return cfg


def _dc(cls, d: dict):
    names = {f.name for f in fields(cls)}
    bad = set(d) - names
    if bad:
        raise ConfigError(f"{cls.__name__}: unknown config keys {sorted(bad)}")
    return cls(**d)


def sparsity_tag(s: float) -> str:
    return f"s{int(round(s * 100)):02d}"


def resolve(base: Path, p: str) -> Path:
    q = Path(os.path.expandvars(p))
    return q if q.is_absolute() else base / q


def load_data(cfg: dict, root: Path):
    d = cfg["data"]
    if "file" in d:
        return read_samples(resolve(root, d["file"]), "data.file")
    g = d["generate"]  # checked by check_run
    gen = checked_generator(resolve(root, cfg["model"]), g["haystack"], g.get("keys", "train"),
                            g.get("template", "chatml"), "data.generate (model)",
                            "data.generate.haystack")
    return checked_dataset(gen, g["n"], g.get("seed", 1), g["min_len"], g["max_len"],
                           g["tasks"], "data.generate.min_len")


def read_samples(path: Path, key: str):
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist")
    try:
        return load_samples(path)
    except Exception as e:  # numpy/lzma/zip errors of a file that is not a sample set
        raise ConfigError(f"{key}: {path} is not a sample file of train.data: {e}") from None


# Keys that do not change what a run computes: a resumed run may differ in these.
_RESUME_FREE = {"out_dir", "device", "tf32", "stage1.log_every", "stage1.ckpt_every",
                "stage2.log_every", "stage2.ckpt_every"}
_OUTPUTS = ("train_log.jsonl", "alpha_stage*.safetensors", "stage*.ckpt.pt", "stage*.ckpt.pt.tmp",
            "masks-s*.safetensors", "plot-*.png", "*.safetensors.tmp")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_out_dir(out: Path, cfg: dict, overwrite: bool) -> None:
    """Resuming is only right for the same run: a finished stage of another config would be
    reused silently (its masks exported under the new targets). So out_dir must be new, hold
    a run of the same config (train_log.jsonl's last start event), or --overwrite is given
    (the earlier outputs are deleted)."""
    found = sorted({f for pat in _OUTPUTS for f in out.glob(pat)}) if out.is_dir() else []
    if not found:
        return
    if overwrite:
        for f in found:
            f.unlink()
        print(f"--overwrite: removed {len(found)} files of an earlier run from {out}")
        return
    prev = None
    log = out / "train_log.jsonl"
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("event") == "start":
                prev = rec.get("config")
    hint = "use another out_dir, or --overwrite to delete the earlier outputs"
    if not isinstance(prev, dict):
        raise ConfigError(f"out_dir {out}: holds trainer outputs ({found[0].name}, ...) but no "
                          f"config to resume from; {hint}")
    a, b = _flat(prev), _flat(cfg)
    diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in _RESUME_FREE and a.get(k) != b.get(k)]
    if diff:
        raise ConfigError(f"out_dir {out}: holds a run of another config ({'; '.join(diff)});"
                          f" {hint}")


class StageInterrupted(Exception):
    def __init__(self, tag: str, step: int, ckpt):
        super().__init__(tag, step, ckpt)
        self.tag, self.step, self.ckpt = tag, step, ckpt


class StopOnSignal:
    """SIGINT / SIGTERM ask the training loop to checkpoint and stop after the current step;
    a second signal gets the default action (Ctrl-C twice quits at once)."""

    def __init__(self):
        self.signum = 0
        self.old = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def handle(self, signum, frame) -> None:
        self.signum = signum
        signal.signal(signum, self.old[signum])
        print(f"leank_train: {signal.Signals(signum).name}: stopping after this step",
              file=sys.stderr, flush=True)

    def __call__(self) -> bool:
        return self.signum != 0

    def restore(self) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)


class Run:
    def __init__(self, cfg: dict, root: Path):
        self.cfg, self.root = cfg, root
        self.out = resolve(root, cfg["out_dir"])
        self.log_path = self.out / "train_log.jsonl"
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a"):
                pass
        except OSError as e:
            raise ConfigError(f"out_dir: cannot write {self.log_path}: {e.strerror}") from None

    def log(self, rec: dict) -> None:
        rec = {k: v for k, v in rec.items() if v is not None}
        rec["time"] = round(time.time(), 1)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def save_alpha(self, alpha: torch.Tensor, name: str, meta: dict) -> None:
        st_io.save({"alpha": alpha.detach().float().cpu().numpy()}, self.out / name,
                   {k: str(v) for k, v in meta.items()})

    def load_alpha(self, name: str, shape) -> torch.Tensor:
        path = self.out / name
        try:
            alpha = torch.from_numpy(st_io.load(path)["alpha"])
        except (OSError, ValueError, KeyError) as e:
            raise self.unusable(path, e) from None
        if tuple(alpha.shape) != tuple(shape):
            raise self.unusable(path, f"factors of shape {list(alpha.shape)}, this run needs "
                                      f"{list(shape)}")
        return alpha

    def load_checkpoint(self, path: Path, shape, device) -> dict:
        try:
            st = torch.load(str(path), map_location=device)
            ok = (isinstance(st, dict) and isinstance(st.get("step"), int)
                  and isinstance(st.get("alpha"), torch.Tensor) and isinstance(st.get("opt"), dict))
        except Exception as e:  # pickle / zip / torch errors of a damaged file
            raise self.unusable(path, f"not a readable checkpoint ({e})") from None
        if not ok:
            raise self.unusable(path, "not a checkpoint of leank_train")
        if tuple(st["alpha"].shape) != tuple(shape):
            raise self.unusable(path, f"factors of shape {list(st['alpha'].shape)}, this run "
                                      f"needs {list(shape)}")
        return st

    @staticmethod
    def unusable(path: Path, why) -> ConfigError:
        why = why.args[0] if isinstance(why, Exception) and why.args and \
            isinstance(why.args[0], str) else str(why)
        why = why[len(f"{path}: "):] if why.startswith(f"{path}: ") else why
        return ConfigError(f"out_dir: cannot resume from {path}: {why}; delete it to redo "
                           "that stage, or rerun with --overwrite")

    def stage(self, model, data, alpha, scfg: StageConfig, mid: MiddleConfig, *, stage: int,
              tag: str, regs, sparsities=None, align: int = 16, zero_heads: str = "drop",
              stop=None) -> torch.Tensor:
        done, ckpt = f"alpha_{tag}.safetensors", self.out / f"{tag}.ckpt.pt"
        if (self.out / done).exists():
            print(f"{tag}: finished earlier, loading {done}")
            return self.load_alpha(done, alpha.shape).to(alpha.device)
        start, opt_state = 0, None
        if ckpt.exists():
            st = self.load_checkpoint(ckpt, alpha.shape, alpha.device)
            start, opt_state, alpha = st["step"], st["opt"], st["alpha"].to(alpha.device)
            print(f"{tag}: resuming at step {start}")
            self.log({"event": "resume", "tag": tag, "step": start})

        def checkpoint(step, a, opt):
            torch.save({"step": step, "alpha": a.cpu(), "opt": opt}, str(ckpt) + ".tmp")
            os.replace(str(ckpt) + ".tmp", ckpt)

        try:
            alpha = run_stage(model, data, alpha, scfg, mid, stage=stage, regs=regs,
                              sparsities=sparsities, align=align, zero_heads=zero_heads,
                              seed=self.cfg.get("seed", 0) + stage, start_step=start,
                              opt_state=opt_state, log=self.log, checkpoint=checkpoint,
                              desc=tag, stop=stop)
        except Interrupted as e:
            self.log({"event": "interrupted", "tag": tag, "step": e.step})
            raise StageInterrupted(tag, e.step, ckpt if ckpt.exists() else None) from None
        self.save_alpha(alpha, done, {"stage": stage, "regs": json.dumps(list(regs)),
                                      "sparsities": json.dumps(list(sparsities or []))})
        if ckpt.exists():
            ckpt.unlink()
        return alpha


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="LeanK two-stage mask trainer")
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], help="override, e.g. stage1.steps=10")
    ap.add_argument("--root", default=".", help="paths in the config are relative to this")
    ap.add_argument("--overwrite", action="store_true",
                    help="delete an earlier run's outputs in out_dir (default: resume the same "
                         "config, refuse another)")
    a = ap.parse_args(argv)
    stop = StopOnSignal()
    try:
        train(a, stop)
    except ConfigError as e:
        print(f"leank_train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except StageInterrupted as e:
        saved = f"{e.ckpt} holds it" if e.ckpt else "nothing was saved (no step finished)"
        print(f"leank_train: interrupted in {e.tag} at step {e.step}; {saved}. Rerun the same "
              "command to resume.", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None
    except OSError as e:  # a full disk: every output is written atomically, so nothing is lost
        print(f"leank_train: error: {e}; the files already in out_dir are complete: rerun the "
              "same command to resume", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        stop.restore()


def pick_device(cfg: dict) -> str:
    """cfg's device (default: cuda when there is one); sets tf32 when asked."""
    dev = check_device(cfg.get("device", "cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.get("tf32", False) and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    return dev


def load_model(model_dir: Path, cfg: dict, dev: str) -> LlamaModel:
    """The model of a folder read_model_config accepted; ConfigError for missing or
    mis-shaped weights (the message names the file)."""
    try:
        return LlamaModel.load_hf(model_dir, dtype=getattr(torch, cfg.get("dtype", "float32")),
                                  device=dev)
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(e.args[0] if e.args and isinstance(e.args[0], str) else str(e)) \
            from None


def setup(cfg: dict, root: Path):
    """Checks the whole config, the model folder and the samples before any training:
    returns (device, middle, stage1, stage2, targets, align, zero_heads, model, data, val)."""
    check_run(cfg)
    model_dir = resolve(root, cfg["model"])
    hf = read_model_config(model_dir)
    mid = _dc(MiddleConfig, cfg.get("middle", {}))
    s1 = _dc(StageConfig, cfg.get("stage1", {}))
    check_stage("stage1", asdict(s1), multi_reg=True)
    s2cfg = dict(cfg.get("stage2", {}))
    targets = s2cfg.pop("targets", [0.7])
    align = s2cfg.pop("align", 16)
    zero_heads = check_zero_heads(s2cfg.pop("zero_heads", "drop"))
    s2 = _dc(StageConfig, {"lr": 0.01, "reg": 0.0, **s2cfg})
    check_stage("stage2", asdict(s2), multi_reg=False)
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    check_targets(targets, align, head_dim, sparsity_tag)
    dev = pick_device(cfg)
    model = load_model(model_dir, cfg, dev)
    data = load_data(cfg, root)
    mc = model.cfg
    limits = dict(vocab_size=mc.vocab_size, max_positions=mc.max_position_embeddings,
                  window=sliding_window(hf))
    check_samples(data, "data", **limits)
    need, longest = mid.sink + mid.recent + mid.block, max(len(s.prompt) + len(s.answer)
                                                           for s in data)
    if longest < need:  # the loss would be 0 on every sample: masks from the L1 term alone
        raise ConfigError(f"middle: no answer query of any sample has middle keys: that needs "
                          f">= {need} tokens (sink + recent + block), the longest sample has "
                          f"{longest}")
    val = read_samples(resolve(root, cfg["data"]["val"]), "data.val") \
        if "val" in cfg["data"] else []
    val = val[: cfg.get("val_n", len(val))]
    check_samples(val, "data.val", allow_empty=True, **limits)
    return dev, mid, s1, s2, targets, align, zero_heads, model, data, val


def train(a, stop=None) -> None:
    cfg = load_config(a.config, a.set)
    root = Path(a.root)
    torch.manual_seed(cfg.get("seed", 0) if isinstance(cfg.get("seed", 0), int) else 0)
    dev, mid, s1, s2, targets, align, zero_heads, model, data, val = setup(cfg, root)
    exp = cfg.get("export", {})
    check_out_dir(resolve(root, cfg["out_dir"]), cfg, a.overwrite)
    run = Run(cfg, root)
    run.log({"event": "start", "config": cfg, "device": dev, "torch": torch.__version__,
             "samples": len(data)})
    mc = model.cfg
    regs = s1.reg if isinstance(s1.reg, list) else [s1.reg]
    shape = (mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim)
    alpha1 = run.stage(model, data, torch.ones(len(regs), *shape, device=dev), s1, mid,
                       stage=1, tag="stage1", regs=regs, stop=stop)
    best, best_v = 0, float("inf")
    if val:
        # Pick the stage-1 run (reg) whose binarised masks fit dense best on held-out samples;
        # the "before stage 2" numbers also show what stage 2 adds.
        for r in range(len(regs)):
            hard = [binarize(alpha1[r], t, align) for t in targets]
            v = validate(model, val, mid, hard)
            run.log({"event": "val_stage1", "run": r, "reg": regs[r],
                     "val_mse": dict(zip(map(str, targets), v)), "mean": sum(v) / len(v)})
            print(f"stage1 run {r} reg {regs[r]}: val mse {v}")
            if r == 0 or sum(v) < best_v:
                best, best_v = r, sum(v)
        run.log({"event": "select", "run": best, "reg": regs[best]})
    a1 = alpha1[best]
    alpha2 = run.stage(model, data, a1[None].repeat(len(targets), 1, 1, 1), s2, mid, stage=2,
                       tag="stage2", regs=[s2.reg] * len(targets), sparsities=targets,
                       align=align, zero_heads=zero_heads, stop=stop)
    finals = [binarize(alpha2[i].cpu(), t, align) for i, t in enumerate(targets)]
    if val:
        v = validate(model, val, mid, [k.to(dev) for k in finals])
        run.log({"event": "val_stage2", "val_mse": dict(zip(map(str, targets), v))})
        print(f"stage2 val mse {v}")
    for t, kept in zip(targets, finals):
        path = run.out / f"masks-{sparsity_tag(t)}.safetensors"
        save_mask(kept, path, sink=exp.get("sink", 128), recent=exp.get("recent", 768),
                  align=align, target_sparsity=t, model=exp.get("model", mc.name))
        counts = kept_counts(kept)
        run.log({"event": "export", "file": path.name, "target_sparsity": t,
                 "sparsity": 1.0 - float(kept.mean()),
                 "kept_count_hist": {str(int(c)): int((counts == c).sum())
                                     for c in torch.unique(counts)}})
        print(f"wrote {path}: sparsity {1.0 - float(kept.mean()):.4f}")
        try:
            from train.plots import plot_mask
            plot_mask(a1.cpu(), kept, run.out / f"plot-{sparsity_tag(t)}.png",
                      title=f"{exp.get('model', mc.name)} LeanK {int(round(t * 100))}%")
        except ImportError as e:  # matplotlib missing
            print(f"no plots: {e}")
    try:
        from train.plots import plot_alpha_channels
        plot_alpha_channels(a1.cpu(), run.out / "plot-alpha-stage1.png",
                            title=f"stage-1 factors (reg {regs[best]})")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
