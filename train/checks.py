"""Checks of the trainer's inputs (run config, model folder, samples) before any work starts.

Every problem a user can cause raises ConfigError with one message naming the key, file or
sample and what is allowed; the CLIs print it and exit 2, with no traceback. The limits are the
ones the server applies when it loads a mask (cache/mask_io.cc, cache/mask.cc): align 16 or 32
dividing head_dim, sink/recent positive, target_sparsity in [0, 1], so the trainer never
writes a mask that `leank-server --masks` refuses.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
ALIGNS = (16, 32)  # what cache/mask.cc accepts
DTYPES = ("float32", "float16", "bfloat16")
# stage2.zero_heads: the stage-2 forward of a head whose current hard mask keeps 0 channels
# (trainer.stage2_scale); "drop" (the server's semantics) is the default.
ZERO_HEADS = ("drop", "logit0")


class ConfigError(ValueError):
    """A bad input the user can fix (printed without a traceback)."""


def run_cli(prog: str, interrupted: str, fn: Callable[[], None]) -> None:
    """Runs a command-line entry point: a ConfigError is one line `PROG: error: ...` and exit
    2, Ctrl-C one line `PROG: interrupted; INTERRUPTED` and exit 130, an OSError (a full disk)
    one line and exit 1 (no traceback)."""
    try:
        fn()
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as e:  # a full disk mid-run: one line, exit 1 (outputs are atomic)
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


INT32_MAX = 2**31 - 1  # the C++ loaders read mask metadata into an int (absl::SimpleAtoi)


def need_int(where: str, v, lo: int, hi: int = 0) -> int:
    """An int >= lo (and <= hi when hi is given)."""
    if not _is_int(v) or v < lo or (hi and v > hi):
        rng = f"in [{lo}, {hi}]" if hi else f">= {lo}"
        raise ConfigError(f"{where}: must be an integer {rng}, got {v!r}")
    return v


def need_path(where: str, v) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where}: must be a path, got {v!r}")
    return v


def need_object(where: str, v) -> dict:
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: must be an object, got {v!r}")
    return v


def need_number(where: str, v, lo: float, hi: float = math.inf, lo_open: bool = False) -> float:
    ok = _is_number(v) and (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        if hi == math.inf:
            rng = f"a finite number {'>' if lo_open else '>='} {lo}"
        else:
            rng = f"a number in {'(' if lo_open else '['}{lo}, {hi}]"
        raise ConfigError(f"{where}: must be {rng}, got {v!r}")
    return float(v)


# ---- model folder ----------------------------------------------------------------------------

def read_model_config(folder) -> dict:
    """config.json of a Llama-family model folder, or ConfigError naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"model folder {folder} does not exist")
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{folder}: no config.json (not a Hugging Face model folder)")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read as JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: top level must be a JSON object")
    check_model_config(cfg, path)
    return cfg


def check_model_config(cfg: dict, where) -> None:
    """What model.py implements: Llama / Mistral / Qwen2, SwiGLU without MLP biases, RoPE
    default / linear / llama3, no sliding window shorter than the positions (checked against
    the samples in check_samples)."""
    mt = cfg.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"{where}: model_type {mt!r} is not supported "
                          f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads"):
        if key not in cfg:
            raise ConfigError(f"{where}: {key} is missing")
        need_int(f"{where}: {key}", cfg[key], 1)
    heads = cfg["num_attention_heads"]
    kv = need_int(f"{where}: num_key_value_heads", kv_heads(cfg), 1)
    if heads % kv:
        raise ConfigError(f"{where}: num_key_value_heads ({kv}) must divide "
                          f"num_attention_heads ({heads})")
    hd = cfg.get("head_dim")
    if hd is None:
        if cfg["hidden_size"] % heads:
            raise ConfigError(f"{where}: num_attention_heads ({heads}) must divide hidden_size "
                              f"({cfg['hidden_size']}) when head_dim is not given")
        hd = cfg["hidden_size"] // heads
    need_int(f"{where}: head_dim", hd, 2)
    if hd % 2:
        raise ConfigError(f"{where}: head_dim {hd} must be even (RoPE rotates channel pairs)")
    need_int(f"{where}: max_position_embeddings", cfg.get("max_position_embeddings", 8192), 1)
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act {cfg['hidden_act']!r} is not supported "
                          "(supported: silu)")
    if cfg.get("mlp_bias", False):
        raise ConfigError(f"{where}: mlp_bias is not supported")
    rs = cfg.get("rope_scaling")
    rp = cfg.get("rope_parameters")  # transformers 5 spelling
    for key, r in (("rope_scaling", rs), ("rope_parameters", rp)):
        if r is None:
            continue
        if not isinstance(r, dict):
            raise ConfigError(f"{where}: {key} must be an object or null, got {r!r}")
        kind = r.get("rope_type", r.get("type", "default"))
        if kind not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(f"{where}: {key} type {kind!r} is not supported "
                              f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
        if kind != "default":
            need_number(f"{where}: {key}.factor", r.get("factor"), 0, lo_open=True)
        if kind == "llama3":
            lo = need_number(f"{where}: {key}.low_freq_factor", r.get("low_freq_factor", 1.0), 0,
                             lo_open=True)
            need_number(f"{where}: {key}.high_freq_factor", r.get("high_freq_factor", 4.0), lo,
                        lo_open=True)
            need_int(f"{where}: {key}.original_max_position_embeddings",
                     r.get("original_max_position_embeddings", 8192), 1)


def kv_heads(cfg: dict):
    """num_key_value_heads as transformers (and leank-server) read config.json: an absent key
    takes the config class's default (MistralConfig 8, Qwen2Config 32, LlamaConfig the head
    count); null means the head count."""
    if "num_key_value_heads" not in cfg:
        return {"mistral": 8, "qwen2": 32}.get(cfg.get("model_type"), cfg["num_attention_heads"])
    kv = cfg["num_key_value_heads"]
    return cfg["num_attention_heads"] if kv is None else kv


def sliding_window(cfg: dict) -> int:
    """The model's attention window (0: none), as transformers and the server read it: an
    absent sliding_window is 4096 (null: none); Qwen2 slides only with use_sliding_window, and
    only layers >= max_window_layers (default 28) or those layer_types names sliding."""
    window = int(cfg.get("sliding_window") or 0) if "sliding_window" in cfg else 4096
    if cfg.get("model_type") == "qwen2":
        if not cfg.get("use_sliding_window"):
            return 0
        types = cfg.get("layer_types")
        if isinstance(types, list):
            sliding = "sliding_attention" in types
        else:
            sliding = cfg["num_hidden_layers"] > cfg.get("max_window_layers", 28)
        return window if sliding else 0
    if cfg.get("model_type") == "mistral":
        return window
    return 0


# ---- samples ---------------------------------------------------------------------------------

def check_samples(samples: Sequence, what: str, vocab_size: int, max_positions: int,
                  window: int = 0, allow_empty: bool = False, need_answer: bool = True) -> None:
    """Every sample has a prompt and an answer (plain text: need_answer False), token ids
    inside the vocabulary and fits the model's positions (and its sliding window, which
    model.py does not implement)."""
    if not samples and not allow_empty:
        raise ConfigError(f"{what}: no samples")
    for i, s in enumerate(samples):
        n = len(s.prompt) + len(s.answer)
        if not need_answer:
            if len(s.prompt) < 1:
                raise ConfigError(f"{what}: sample {i} has no tokens")
        elif len(s.prompt) < 2 or len(s.answer) < 1:
            raise ConfigError(f"{what}: sample {i} needs >= 2 prompt tokens and >= 1 answer "
                              f"token, has {len(s.prompt)} and {len(s.answer)}")
        if n > max_positions:
            raise ConfigError(f"{what}: sample {i} has {n} tokens, more than the model's "
                              f"max_position_embeddings {max_positions}")
        if window and n > window:
            raise ConfigError(f"{what}: sample {i} has {n} tokens, more than the model's "
                              f"sliding_window {window} (the trainer has no sliding-window "
                              "attention)")
        bad = [t for t in list(s.prompt) + list(s.answer) if not 0 <= t < vocab_size]
        if bad:
            raise ConfigError(f"{what}: sample {i} has token id {bad[0]} outside the model's "
                              f"vocabulary [0, {vocab_size})")


# ---- run config ------------------------------------------------------------------------------

def check_stage(name: str, d: dict, multi_reg: bool) -> None:
    """A stage's settings (after defaults): see trainer.StageConfig."""
    need_int(f"{name}.steps", d["steps"], 1)
    need_number(f"{name}.lr", d["lr"], 0, lo_open=True)
    regs = d["reg"]
    if isinstance(regs, list):
        if not multi_reg:
            raise ConfigError(f"{name}.reg: must be one number, got a list {regs!r}")
        if not regs:
            raise ConfigError(f"{name}.reg: the list is empty")
    for r in regs if isinstance(regs, list) else [regs]:
        need_number(f"{name}.reg", r, 0)
    need_int(f"{name}.grad_accum", d["grad_accum"], 1)
    need_number(f"{name}.warmup_frac", d["warmup_frac"], 0, 1)
    need_number(f"{name}.decay_frac", d["decay_frac"], 0, 1)
    need_int(f"{name}.log_every", d["log_every"], 1)
    need_int(f"{name}.ckpt_every", d["ckpt_every"], 1)


def check_targets(targets, align: int, head_dim: int, tag,
                  keys=("stage2.targets", "stage2.align")) -> None:
    """stage2.targets: distinct sparsities in [0, 1] (distinct file names); stage2.align: what
    the server's mask loader accepts and a divisor of head_dim. `keys` names them in messages
    (leank_eval: sparsities, align)."""
    tk, ak = keys
    if not isinstance(targets, list) or not targets:
        raise ConfigError(f"{tk}: must be a non-empty list of sparsities in [0, 1], "
                          f"got {targets!r}")
    for t in targets:
        need_number(tk, t, 0, 1)
    tags = [tag(t) for t in targets]
    dup = next((x for x in tags if tags.count(x) > 1), None)
    if dup:
        raise ConfigError(f"{tk}: {targets!r} give two masks the same file name "
                          f"(masks-{dup}.safetensors)")
    if align not in ALIGNS:
        raise ConfigError(f"{ak}: must be 16 or 32 (what leank-server accepts), "
                          f"got {align!r}")
    if head_dim % align:
        raise ConfigError(f"{ak}: {align} does not divide the model's head_dim "
                          f"{head_dim}")


def check_zero_heads(v) -> str:
    """stage2.zero_heads: one of ZERO_HEADS."""
    if not isinstance(v, str) or v not in ZERO_HEADS:
        raise ConfigError(f"stage2.zero_heads: must be one of {', '.join(ZERO_HEADS)}, "
                          f"got {v!r}")
    return v


def check_run(cfg: dict) -> None:
    """Top-level keys, middle and export sections (stages: check_stage, targets:
    check_targets)."""
    known = {"model", "out_dir", "device", "dtype", "tf32", "seed", "data", "val_n", "middle",
             "stage1", "stage2", "export"}
    bad = sorted(set(cfg) - known)
    if bad:
        raise ConfigError(f"unknown config keys {bad} (known: {', '.join(sorted(known))})")
    for key in ("model", "out_dir"):
        need_path(key, cfg.get(key))
    for key in ("stage1", "stage2", "export"):
        need_object(key, cfg.get(key, {}))
    data = cfg.get("data")
    if not isinstance(data, dict) or ("file" not in data) == ("generate" not in data):
        raise ConfigError("data: must be an object with exactly one of \"file\" or \"generate\"")
    for key in ("file", "val"):
        if key in data:
            need_path(f"data.{key}", data[key])
    if "generate" in data:
        check_generate(data["generate"])
    if cfg.get("dtype", "float32") not in DTYPES:
        raise ConfigError(f"dtype: must be one of {', '.join(DTYPES)}, got {cfg['dtype']!r}")
    need_int("seed", cfg.get("seed", 0), 0)
    if "val_n" in cfg:
        need_int("val_n", cfg["val_n"], 0)
    check_middle(cfg.get("middle", {}))
    exp = cfg.get("export", {})
    for key in ("sink", "recent"):  # the server refuses a mask whose sink/recent are not
        if key in exp:              # positive ints (cache/mask_io.cc)
            need_int(f"export.{key}", exp[key], 1, INT32_MAX)
    if "model" in exp and not isinstance(exp["model"], str):
        raise ConfigError(f"export.model: must be a string, got {exp['model']!r}")


def check_generate(g) -> None:
    """data.generate: what `python3 -m train.data` takes (n, min_len, max_len, tasks, haystack;
    seed, keys, template optional), checked like its options."""
    from train.data import HAYSTACKS, TASKS
    need_object("data.generate", g)
    known = {"n", "seed", "min_len", "max_len", "tasks", "haystack", "keys", "template"}
    bad = sorted(set(g) - known)
    if bad:
        raise ConfigError(f"data.generate: unknown keys {bad} (known: {', '.join(sorted(known))})")
    for key in ("n", "min_len", "max_len", "tasks", "haystack"):
        if key not in g:
            raise ConfigError(f"data.generate.{key}: missing")
    need_int("data.generate.n", g["n"], 1)
    need_int("data.generate.seed", g.get("seed", 1), 0)
    need_int("data.generate.min_len", g["min_len"], 1)
    need_int("data.generate.max_len", g["max_len"], g["min_len"])
    tasks = g["tasks"]
    if not isinstance(tasks, list) or not tasks or not all(t in TASKS for t in tasks):
        raise ConfigError(f"data.generate.tasks: must be a non-empty list of "
                          f"{', '.join(TASKS)}, got {tasks!r}")
    choices = {"haystack": (HAYSTACKS, None), "keys": (("train", "eval"), "train"),
               "template": (("chatml", "plain"), "chatml")}
    for key, (allowed, default) in choices.items():
        if g.get(key, default) not in allowed:
            raise ConfigError(f"data.generate.{key}: must be one of {', '.join(allowed)}, "
                              f"got {g[key]!r}")


def check_device(dev) -> str:
    """A torch device string this machine has (cuda[:N] only with such a GPU)."""
    import torch
    try:
        d = torch.device(dev) if isinstance(dev, str) else None
    except RuntimeError:
        d = None
    if d is None:
        raise ConfigError(f"device: must be a torch device such as \"cpu\", \"cuda\" or "
                          f"\"cuda:0\", got {dev!r}")
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"device: {dev!r} but torch sees no CUDA device (use \"cpu\")")
        if d.index is not None and d.index >= n:
            raise ConfigError(f"device: {dev!r} but torch sees {n} CUDA device(s)")
    return dev


def check_middle(mid, required: bool = False) -> None:
    """middle.sink / recent >= 0, block >= 1 (all three given when `required`)."""
    if not isinstance(mid, dict):
        raise ConfigError(f"middle: must be an object with sink, recent, block, got {mid!r}")
    for key, lo in (("sink", 0), ("recent", 0), ("block", 1)):
        if key in mid:
            need_int(f"middle.{key}", mid[key], lo)
        elif required:
            raise ConfigError(f"middle.{key}: missing")


# ---- evaluation config (leank_eval, eval_server) ----------------------------------------------

EVAL_KEYS = {"model", "dtype", "device", "tf32", "seed", "middle", "sparsities", "align",
             "leank_masks", "calib", "fidelity", "tasks", "extra_masks", "time_budget_s",
             "fidelity_share", "out", "torch_threads", "cells", "texts", "server_threads",
             "kv_cache_memory", "methods", "keep_outputs"}


def check_eval(cfg: dict) -> None:
    """leank_eval's config, before the model is read (sparsities / align need head_dim:
    check_targets)."""
    bad = sorted(set(cfg) - EVAL_KEYS)
    if bad:
        raise ConfigError(f"unknown config keys {bad} (known: {', '.join(sorted(EVAL_KEYS))})")
    for key in ("model", "out", "leank_masks"):
        if not isinstance(cfg.get(key), str) or not cfg[key]:
            raise ConfigError(f"{key}: must be a path, got {cfg.get(key)!r}")
    if "{tag}" not in cfg["leank_masks"]:
        raise ConfigError(f"leank_masks: must contain {{tag}} (e.g. masks-{{tag}}.safetensors), "
                          f"got {cfg['leank_masks']!r}")
    if cfg.get("dtype", "float32") not in DTYPES:
        raise ConfigError(f"dtype: must be one of {', '.join(DTYPES)}, got {cfg['dtype']!r}")
    need_int("seed", cfg.get("seed", 0), 0)
    check_middle(cfg.get("middle", {"sink": 128, "recent": 768, "block": 16}), required=True)
    need_number("time_budget_s", cfg.get("time_budget_s", 1e9), 0, lo_open=True)
    need_number("fidelity_share", cfg.get("fidelity_share", 0.25), 0, 1)
    for key in ("torch_threads", "server_threads"):
        if key in cfg:
            need_int(key, cfg[key], 1)
    for key in ("fidelity", "tasks", "cells", "texts"):
        if not isinstance(cfg.get(key, []), list):
            raise ConfigError(f"{key}: must be a list, got {cfg[key]!r}")
    for key in ("fidelity", "tasks"):
        for i, p in enumerate(cfg.get(key, [])):
            need_path(f"{key}[{i}]", p)
    for key in ("calib",):
        if key in cfg and (not isinstance(cfg[key], str) or not cfg[key]):
            raise ConfigError(f"{key}: must be a path, got {cfg[key]!r}")
    extra = cfg.get("extra_masks", {})
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise ConfigError(f"extra_masks: must be an object NAME -> mask file, got {extra!r}")


def check_out_file(path, key: str) -> None:
    """`path` can be written (its folder is made): checked before hours of work, not after.
    An existing file is replaced (atomically, by the writer); a folder is refused."""
    path = Path(path)
    try:  # is_dir() and exists() raise too (a name longer than NAME_MAX: ENAMETOOLONG)
        if path.is_dir():
            raise ConfigError(f"{key}: {path} is a folder, expected a file name")
        up = next((q for q in path.parents if q.exists()), None)
        if up is not None and not up.is_dir():
            raise ConfigError(f"{key}: cannot write {path}: {up} is not a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(path.name + ".tmp")
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{key}: cannot write {path}: {e.strerror}") from None
