"""train/eval_server.py: the bucket KL and helpers (always), and a live cross-check of the real
leank-server against the PyTorch evaluation (skipped unless a leank-server binary, the SmolLM2
model and grpcio are present)."""

import glob
import importlib.util
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from train import eval_server as es

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"


def test_bucket_kl_is_exact_with_full_lists_and_a_lower_bound_otherwise():
    g = torch.Generator().manual_seed(5)
    for trial in range(20):
        v = 50
        p = torch.log_softmax(torch.randn(v, generator=g, dtype=torch.float64) * 2, -1)
        q = torch.log_softmax(p + 0.5 * torch.randn(v, generator=g, dtype=torch.float64), -1)
        full = float((p.exp() * (p - q)).sum())
        assert es.bucket_kl(es.top_list(p, v), es.top_list(q, v)) == pytest.approx(full, rel=1e-4,
                                                                                  abs=1e-6)
        for k in (1, 5, 20):
            b = es.bucket_kl(es.top_list(p, k), es.top_list(q, k))
            assert 0.0 <= b <= full + 1e-6, (trial, k, b, full)
    same = es.top_list(p, 20)
    assert es.bucket_kl(same, same) == pytest.approx(0.0, abs=1e-9)
    # disjoint lists: only the rest bucket, 0 when both lists hold the same total mass
    assert es.bucket_kl([(1, math.log(0.5))], [(2, math.log(0.5))]) == pytest.approx(0.0, abs=1e-9)


def test_common_prefix_and_method_name():
    assert es.common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert es.common_prefix([1, 2], [1, 2]) == 2
    assert es.common_prefix([], [5]) == 0
    assert es.method_name({"masked": False, "k_sparsity": 0.0}) == "dense"
    assert es.method_name({"masked": True, "k_sparsity": 0.7000001}) == "leank-s70"


def test_select_samples_takes_the_first_n_per_task():
    cfg = {"cells": [{"file": str(DATA / "smollm2-needles-384.npz.xz"),
                      "tasks": ["number"], "n": 5}],
           "texts": [{"file": str(DATA / "smollm2-needles-384.npz.xz"), "n": 1,
                      "prompt_len": 100, "gen": 4}]}
    got = es.select_samples(cfg, ROOT)
    assert [s["cell"] for s in got] == ["number@384", "text@100"]
    assert got[0]["max_tokens"] == len(got[0]["gold"]) == 8
    assert len(got[1]["prompt"]) == 96 and got[1]["gold"] is None


def test_cached_answer_logprobs_equal_a_full_forward(tiny_model):
    """TorchSide runs the prompt once and continuations from its cache: the same logprobs as
    leank_eval's full forward, with a mask, prefill pruned too."""
    ts = es.TorchSide(tiny_model, sink=8, recent=16, block=4)
    g = torch.Generator().manual_seed(1)
    kept = (torch.rand(2, 2, 16, generator=g) < 0.5).float()
    kept[0, 1] = 0  # one head keeping nothing: middle keys and values skipped
    prompt = torch.randint(0, 101, (70,), generator=g).tolist()
    cont = torch.randint(0, 101, (6,), generator=g).tolist()
    (lp,) = ts.answer_logprobs(prompt, [cont], kept)
    ref = ts.ev.logprobs(ts.ev.hidden(prompt + cont, kept)[len(prompt) - 1:-1])
    assert torch.allclose(lp, ref, atol=1e-5), float((lp - ref).abs().max())


def _server_bin():
    env = os.environ.get("LEANK_SERVER_BIN")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = [p for p in glob.glob(str(ROOT / "build*" / "bin" / "leank-server"))
             if os.access(p, os.X_OK)]
    return max(found, key=os.path.getmtime) if found else None


MODEL = Path(os.environ.get("LEANK_E2E_MODEL", ROOT / ".cache/models/smollm2-135m-instruct"))
MASK = ROOT / "train/masks/smollm2-135m-instruct/masks-s70.safetensors"
# ~14 s on torch 2.x; ~150 s on Debian's torch 1.13 (its CPU matmuls are ~15x slower here), so
# there (train/run_tests.sh's default interpreter) it runs only when asked for.
LIVE = os.environ.get("LEANK_LIVE_SERVER_TEST",
                      "1" if int(torch.__version__.split(".")[0]) >= 2 else "0") == "1"


@pytest.mark.skipif(not LIVE, reason="slow on torch < 2: set LEANK_LIVE_SERVER_TEST=1")
@pytest.mark.skipif(_server_bin() is None or not (MODEL / "model.safetensors").exists()
                    or importlib.util.find_spec("grpc") is None or shutil.which("protoc") is None
                    or not MASK.exists(),
                    reason="needs a built leank-server, the SmolLM2 model, grpcio and protoc")
def test_live_server_agrees_with_pytorch(tmp_path):
    """2 needle samples (384 tokens, sink 64 / recent 128: 192 middle tokens pruned) through a
    LeanK 70% server: its greedy tokens are PyTorch's, its top-20 logprobs match PyTorch's with
    the same mask to 1e-3, and they are measurably off PyTorch's dense ones (the server really
    prunes)."""
    from train.model import LlamaModel
    torch.set_num_threads(2)
    cfg = {"model": str(MODEL), "middle": {"sink": 64, "recent": 128, "block": 16},
           "sparsities": [0.7], "methods": ["leank-s70"],
           "leank_masks": str(MASK).replace("s70", "{tag}"),
           "cells": [{"file": str(DATA / "smollm2-needles-384.npz.xz"),
                      "tasks": ["number", "multikey"], "n": 1}],
           "server_threads": 2, "kv_cache_memory": "64MiB", "out": str(tmp_path / "e.json")}
    model = LlamaModel.load_hf(MODEL)
    res = es.run(cfg, ROOT, model, server_bin=_server_bin(), log=lambda m: None,
                 keep_outputs=True)
    info = res["servers"]["leank-s70"]
    assert info["masked"] and (info["sink"], info["recent"]) == (64, 128)
    a = res["summary"]["leank-s70"]["agreement"]
    assert a["samples"] == 2
    # A near-tie (margin < 1e-3 on either side) may legitimately flip greedy between two f32
    # implementations; anything else is a semantic mismatch.
    for d in a["first_diffs"]:
        assert min(d["server_margin"], d["torch_margin"]) < 1e-3, d
    assert a["lp_max_abs_diff"] < 1e-3, a
    for r in res["per_sample"]["leank-s70"].values():
        if r["greedy_equal"]:
            assert r["server_correct"] == r["torch_correct"]
    # against PyTorch dense on the same context: the bucket KL is far above the same-mask one
    ts = es.TorchSide(model, 64, 128, 16)
    kl_dense, n = 0.0, 0
    for s in es.select_samples(cfg, ROOT):
        g = res["server_outputs"]["leank-s70"][s["id"]]
        (lp,) = ts.answer_logprobs(s["prompt"], [g["tokens"]], None)
        for t, top in enumerate(g["top"]):
            kl_dense += es.bucket_kl(top, es.top_list(lp[t]))
            n += 1
    assert kl_dense / n > 1e-5 > 100 * a["lp_bucket_kl_mean"], (kl_dense / n, a)
