"""Evaluation: dense vs LeanK masks vs baselines, in PyTorch with the server's semantics.

  python3 -m train.leank_eval --config train/configs/smollm2-eval.json

Every method runs the whole sequence (prompt and answer, teacher-forced) with the middle-key
rule of cache/README.md for EVERY query (also the prompt's: the server prunes prefill too):
middle keys for query i are S <= j < S + M(i + 1), M(n) = B * max(0, floor((n - S - W) / B)),
q.k over kept channels only, and heads keeping 0 channels skip middle keys and values.

Metrics
  accuracy   a sample is right when the greedy (argmax) token equals the answer token at every
             answer position, teacher-forced: the same as "greedy decoding starts with the answer"
  kl / top1  on plain held-out text: mean KL(dense || method) of next-token distributions and
             the share of positions whose argmax agrees with dense, over positions whose query
             has middle keys (i + 1 >= S + W + B); also on the answer positions of the tasks
Methods: dense; for each sparsity s: leank-s (trained), magnitude-s (ThinK-like static channel
scores on calibration text, same global rule), random-s (random channels, LeanK's per-head
counts). Samples are visited round-robin over (task, length) so that a time budget cuts every
cell evenly; the JSON says how many samples each cell has.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import torch

from train import st_io
from train.attention import MiddleSpec
from train.checks import (ConfigError, check_device, check_eval, check_out_file, check_samples,
                          check_targets, need_int, read_model_config, run_cli, sliding_window)
from train.data import Sample
from train.leank_train import (load_config, load_model, pick_device, read_samples, resolve,
                               sparsity_tag)
from train.masks import kept_counts, load_mask, magnitude_mask, random_mask
from train.model import LlamaModel


def channel_scores(model: LlamaModel, texts: List[Sample], tick=None) -> torch.Tensor:
    """ThinK-like score [L, H, D]: RMS of post-RoPE q (over the kv head's query heads and
    positions) times RMS of k, per channel."""
    mc = model.cfg
    g = mc.num_attention_heads // mc.num_key_value_heads
    q2 = torch.zeros(mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim, dtype=torch.float64)
    k2 = torch.zeros_like(q2)

    def obs(li, q, k):
        q2[li] += q.double().pow(2).reshape(mc.num_key_value_heads, g, -1, mc.head_dim).mean(
            (1, 2)).cpu()
        k2[li] += k.double().pow(2).mean(1).cpu()

    dev = model.embed_tokens.weight.device
    with torch.no_grad():
        for i, s in enumerate(texts):
            model(torch.tensor(s.prompt, device=dev), observer=obs)
            if tick is not None:
                tick(i + 1)
    return (q2.sqrt() * k2.sqrt()).float()


PROGRESS_EVERY_S = 30.0  # a progress line at most this often (and at the end of each phase)


def progress(what: str, total: int, t_start: float):
    """tick(done, note): prints `WHAT done/total note (elapsed)` on stdout, throttled."""
    last = [time.time()]

    def tick(done: int, note: str = "") -> None:
        now = time.time()
        if done == total or now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            print(f"{what} {done}/{total}{note} ({now - t_start:.0f}s)", flush=True)
    return tick


class Evaluator:
    def __init__(self, model: LlamaModel, sink: int, recent: int, block: int):
        self.model, self.sink, self.recent, self.block = model, sink, recent, block
        self.dev = model.embed_tokens.weight.device

    def spec(self, kept: Optional[torch.Tensor]) -> Optional[MiddleSpec]:
        if kept is None:
            return None
        return MiddleSpec.from_mask(kept.to(self.dev), self.sink, self.recent, self.block)

    def hidden(self, ids: List[int], kept) -> torch.Tensor:
        with torch.no_grad():
            return self.model(torch.tensor(ids, device=self.dev), spec=self.spec(kept))

    def logprobs(self, h: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.model.logits(h).float(), -1)

    def first_middle_pos(self) -> int:
        return self.sink + self.recent + self.block - 1


def compare(lp_ref: torch.Tensor, lp: torch.Tensor):
    """(sum KL(ref || lp), number of argmax agreements) over rows."""
    kl = (lp_ref.exp() * (lp_ref - lp)).sum(-1)
    return float(kl.sum()), int((lp_ref.argmax(-1) == lp.argmax(-1)).sum())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="LeanK evaluation")
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--root", default=".")
    ap.add_argument("--server", action="append", default=[], metavar="[NAME=]HOST:PORT",
                    help="evaluate through running leank-server(s) instead (train/eval_server.py);"
                         " NAME (dense, leank-sNN) defaults to what GetModelInfo reports")
    ap.add_argument("--server-bin", help="evaluate through leank-server: start one loopback "
                    "server per method (dense + leank at each sparsity), one at a time")
    a = ap.parse_args(argv)
    run_cli("leank_eval", "no results written",
            lambda: main_server(a) if a.server or a.server_bin else evaluate(a))


class Inputs:
    """The checked config, model and mask / sample readers of one evaluation."""

    def __init__(self, a, server: bool):
        self.cfg = cfg = load_config(a.config, a.set)
        self.root = Path(a.root)
        check_eval(cfg)
        hf = read_model_config(self.path(cfg["model"]))
        self.dev = check_device(cfg.get("device", "cpu")) if server else pick_device(cfg)
        self.model = load_model(self.path(cfg["model"]), cfg, self.dev)
        mc = self.model.cfg
        self.shape = (mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim)
        check_targets(cfg.get("sparsities"), cfg.get("align", 16), mc.head_dim, sparsity_tag,
                      keys=("sparsities", "align"))
        self.limits = dict(vocab_size=mc.vocab_size, max_positions=mc.max_position_embeddings,
                           window=sliding_window(hf))
        builtin = {"dense"} | {f"{m}-{sparsity_tag(t)}" for t in cfg["sparsities"]
                               for m in ("leank", "magnitude", "random")}
        taken = sorted(set(cfg.get("extra_masks", {})) & builtin)
        if taken:  # "dense" would have no reference; "leank-s50" would replace the trained one
            raise ConfigError(f"extra_masks.{taken[0]}: the name of a built-in method; use "
                              f"another name")
        self.out = self.path(cfg["out"])
        check_out_file(self.out, "out")

    def path(self, p: str) -> Path:
        return resolve(self.root, p)

    def leank_mask(self, s: float) -> torch.Tensor:
        """The trained mask of sparsity s (leank_masks with {tag}), whose K sparsity must be s
        within the alignment's rounding (else every leank-sNN number would be mislabelled)."""
        kept = self.mask("leank_masks", self.cfg["leank_masks"].format(tag=sparsity_tag(s)))
        got, tol = 1.0 - float(kept.mean()), self.cfg.get("align", 16) / (2 * kept.numel())
        if abs(got - s) > tol + 1e-9:
            path = self.path(self.cfg["leank_masks"].format(tag=sparsity_tag(s)))
            raise ConfigError(f"leank_masks: {path} has K sparsity {got:.4f}, but sparsities "
                              f"asks for {s} (a mask of another sparsity?)")
        return kept

    def mask(self, key: str, p: str) -> torch.Tensor:
        """A project-format mask of this model's shape, as float [L, H, D]."""
        path = self.path(p)
        if not path.is_file():
            raise ConfigError(f"{key}: {path} does not exist")
        try:
            kept, _ = load_mask(path)
        except (OSError, ValueError, KeyError) as e:
            msg = str(e.args[0]) if e.args else str(e)
            raise ConfigError(f"{key}: not a mask file: "
                              f"{msg if str(path) in msg else f'{path}: {msg}'}") from None
        if tuple(kept.shape) != self.shape:
            raise ConfigError(f"{key}: {path} has shape {list(kept.shape)}, the model needs "
                              f"{list(self.shape)} (layers, kv heads, head_dim)")
        return torch.from_numpy(kept).float()

    def samples(self, key: str, p: str, text: bool = False) -> List[Sample]:
        got = read_samples(self.path(p), key)
        check_samples(got, key, need_answer=not text, **self.limits)
        return got


def evaluate(a) -> None:
    inp = Inputs(a, server=False)
    cfg, model = inp.cfg, inp.model
    if "torch_threads" in cfg:
        torch.set_num_threads(cfg["torch_threads"])
    mid = cfg.get("middle", {"sink": 128, "recent": 768, "block": 16})
    ev = Evaluator(model, mid["sink"], mid["recent"], mid["block"])
    align = cfg.get("align", 16)
    # Every file is read (and checked) before the first forward pass.
    calib = inp.samples("calib", cfg["calib"], text=True) if "calib" in cfg else []
    texts = []
    for f in cfg.get("fidelity", []):
        texts += inp.samples("fidelity", f, text=True)
    p0 = ev.first_middle_pos()
    short = next((i for i, s in enumerate(texts) if len(s.prompt) <= p0), None)
    if short is not None:
        raise ConfigError(f"fidelity: sample {short} has {len(texts[short].prompt)} tokens; no "
                          f"query has middle keys before position {p0 + 1} (middle sink + "
                          "recent + block)")
    task_sets = [inp.samples("tasks", f) for f in cfg.get("tasks", [])]
    leank = {s: inp.leank_mask(s) for s in cfg["sparsities"]}
    extra = {n: inp.mask(f"extra_masks.{n}", p) for n, p in cfg.get("extra_masks", {}).items()}
    t_start = time.time()

    # ---- methods ----
    methods: Dict[str, Optional[torch.Tensor]] = {"dense": None}
    scores = channel_scores(model, calib, progress("calibration texts", len(calib), t_start)) \
        if calib else None
    for s in cfg["sparsities"]:
        tag = sparsity_tag(s)
        kept = leank[s]
        methods[f"leank-{tag}"] = kept
        if scores is not None:
            methods[f"magnitude-{tag}"] = magnitude_mask(scores, s, align)
        methods[f"random-{tag}"] = random_mask(kept_counts(kept), kept.shape[-1],
                                               seed=cfg.get("seed", 0) + int(100 * s))
    methods.update(extra)
    info = {n: (None if k is None else {"sparsity": 1 - float(k.mean()),
                                        "zero_heads": int((kept_counts(k) == 0).sum())})
            for n, k in methods.items()}
    print(json.dumps(info))

    budget = cfg.get("time_budget_s", 1e9)
    results = {"config": cfg, "methods": info, "tasks": {}, "fidelity": {},
               "semantics": "server (cache/README.md); prefill pruned too"}

    # ---- fidelity on plain text ----
    fid = defaultdict(lambda: defaultdict(lambda: [0.0, 0, 0]))  # [method][len] = kl, agree, n
    tick = progress("fidelity texts", len(texts), t_start)
    for ti, s in enumerate(texts):
        if time.time() - t_start > budget * cfg.get("fidelity_share", 0.25):
            print(f"fidelity: time share reached after {ti}/{len(texts)} texts", flush=True)
            break
        if ti:
            tick(ti)
        L = len(s.prompt)
        h_ref = ev.hidden(s.prompt, None)[p0:]
        for name, kept in methods.items():
            if kept is None:
                continue
            h = ev.hidden(s.prompt, kept)[p0:]
            acc = fid[name][L]
            for c in range(0, h.shape[0], 1024):
                kl, agree = compare(ev.logprobs(h_ref[c:c + 1024]), ev.logprobs(h[c:c + 1024]))
                acc[0] += kl
                acc[1] += agree
                acc[2] += min(1024, h.shape[0] - c)
    else:
        if texts:
            tick(len(texts))
    for name, byl in fid.items():
        results["fidelity"][name] = {
            str(L): {"kl": v[0] / v[2], "top1": v[1] / v[2], "positions": v[2]}
            for L, v in sorted(byl.items())}
    print(f"fidelity done in {time.time() - t_start:.0f}s", flush=True)

    # ---- tasks ----
    cells = defaultdict(list)  # (task, length) -> samples
    for got in task_sets:
        for s in got:
            L = len(s.prompt) + len(s.answer)
            cells[(s.task, L)].append(s)
    keys = sorted(cells)
    order = [(k, i) for i in range(max(len(v) for v in cells.values()) if cells else 0)
             for k in keys if i < len(cells[k])]
    acc = defaultdict(lambda: defaultdict(lambda: [0, 0, 0.0, 0, 0]))  # right, n, kl, agree, pos
    tick = progress("task samples", len(order), t_start)
    for n_done, (k, i) in enumerate(order):
        if time.time() - t_start > budget:
            print(f"time budget reached after {n_done}/{len(order)} task samples", flush=True)
            break
        if n_done:
            tick(n_done, f" (next: {k[0]}@{k[1]})")
        s = cells[k][i]
        ids = s.prompt + s.answer
        P, A = len(s.prompt), len(s.answer)
        gold = torch.tensor(s.answer, device=ev.dev)
        lp_ref = None
        for name, kept in methods.items():
            lp = ev.logprobs(ev.hidden(ids, kept)[P - 1:P + A - 1])
            c = acc[name][k]
            c[0] += int(bool(torch.all(lp.argmax(-1) == gold)))
            c[1] += 1
            if kept is None:
                lp_ref = lp
            else:
                kl, agree = compare(lp_ref, lp)
                c[2] += kl
                c[3] += agree
                c[4] += A
    else:
        if order:
            tick(len(order))
    for name, byk in acc.items():
        results["tasks"][name] = {f"{t}@{L}": {"acc": v[0] / v[1], "n": v[1],
                                              "answer_kl": v[2] / v[4] if v[4] else 0.0,
                                              "answer_top1": v[3] / v[4] if v[4] else 1.0}
                                  for (t, L), v in sorted(byk.items())}
    results["elapsed_s"] = time.time() - t_start
    st_io.write_atomic(inp.out, json.dumps(results, indent=1).encode())
    print(f"wrote {inp.out} in {results['elapsed_s']:.0f}s")


def main_server(a) -> None:
    """--server / --server-bin: the evaluation through the gRPC server, cross-checked against
    PyTorch on the same samples (train/eval_server.py; config e.g. smollm2-eval-server.json)."""
    from train import eval_server as es
    inp = Inputs(a, server=True)
    cfg, root, model = inp.cfg, inp.root, inp.model
    torch.set_num_threads(cfg.get("torch_threads", torch.get_num_threads()))
    for s in cfg["sparsities"]:  # read again by es.run; checked here before any server starts
        inp.leank_mask(s)
    for key in ("cells", "texts"):
        for i, item in enumerate(cfg.get(key, [])):
            if not isinstance(item, dict) or not isinstance(item.get("file"), str):
                raise ConfigError(f"{key}[{i}]: must be an object with a \"file\", got {item!r}")
            check_server_item(key, i, item)
            inp.samples(f"{key}[{i}].file", item["file"], text=key == "texts")
    if a.server_bin and not a.server and not (os.path.isfile(a.server_bin)
                                              and os.access(a.server_bin, os.X_OK)):
        raise ConfigError(f"--server-bin: {a.server_bin} is not an executable file")
    for item in a.server:
        if not item.rpartition("=")[2]:
            raise ConfigError(f"--server: {item!r}: expected [NAME=]HOST:PORT")
    try:
        es._client_module()
    except Exception as e:  # no grpcio, or no protoc to generate the stubs with
        raise ConfigError(f"--server: the gRPC client (tools/python_client) cannot be loaded: "
                          f"{_one_line(e)} (needs grpcio, protobuf and protoc or "
                          "grpc_tools)") from None
    try:
        servers = {}
        for item in a.server:
            name, _, target = item.rpartition("=")
            if not name:
                cl = es.ServerClient(target)
                cl.wait_serving(60)
                name = es.method_name(cl.info())
                cl.close()
            servers[name] = target
        res = es.run(cfg, root, model, servers or None, a.server_bin,
                     log=lambda m: print(m, flush=True))
    except es.ServerError as e:
        raise ConfigError(f"server: {_one_line(e)}") from None
    except Exception as e:
        if type(e).__module__.split(".")[0] != "grpc":  # an RpcError: a server went away
            raise
        raise ConfigError(f"server: {_one_line(e)}") from None
    es.write(res, inp.out)
    print(es.markdown(res))
    print(f"wrote {inp.out} in {res['elapsed_s']:.0f}s")


def _one_line(e: Exception) -> str:
    """An exception as one line (grpc's RpcError and protobuf messages print several)."""
    code = getattr(e, "code", None)
    if callable(code) and callable(getattr(e, "details", None)):
        return f"{code().name}: {e.details()}"
    return " ".join(str(e).split())


def check_server_item(key: str, i: int, item: dict) -> None:
    """cells[i]: {"file", "tasks": [..], "n" >= 1}; texts[i]: {"file", "n" >= 1, "prompt_len",
    "gen" >= 1 with gen < prompt_len} (train/eval_server.py's select_samples)."""
    where = f"{key}[{i}]"
    need_int(f"{where}.n", item.get("n"), 1)
    if key == "cells":
        t = item.get("tasks")
        if not isinstance(t, list) or not t or not all(isinstance(x, str) for x in t):
            raise ConfigError(f"{where}.tasks: must be a non-empty list of task names, got "
                              f"{t!r}")
    else:
        gen = need_int(f"{where}.gen", item.get("gen"), 1)
        need_int(f"{where}.prompt_len", item.get("prompt_len"), gen + 1)


if __name__ == "__main__":
    main()
