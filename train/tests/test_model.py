"""The compact model against transformers: the committed golden outputs of
tests/data/golden/ (always), and a live transformers model (when installed); the attention
semantics against a per-query reference written straight from cache/README.md."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from train import st_io
from train.attention import LayerMiddle, MiddleSpec, attention
from train.model import KVCache, LlamaModel, rope_inv_freq

GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "data" / "golden"
# Folders whose architecture the trainer supports (tests/data/golden/README.md): GQA, llama3
# rope scaling, Qwen2 biases + tied embeddings, bf16 weights.
GOLDEN_MODELS = ["llama_gqa", "llama_gqa_bf16", "llama3_rope", "qwen2_tied", "qwen2_tied_bf16"]
HF4_KEYS = ("rope_theta", "rope_scaling", "torch_dtype")  # what hub checkpoints have
HF5_KEYS = ("rope_parameters", "dtype")                  # transformers 5's spelling


def _golden_copy(tmp_path, name, drop):
    """The golden model in a temporary folder, with the config keys `drop` removed."""
    dst = tmp_path / name
    shutil.copytree(GOLDEN / name, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for k in drop:
        cfg.pop(k, None)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("keys", ["both", "hf4", "hf5"])
@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_logits_match_golden_transformers_outputs(tmp_path, name, keys):
    """Every prompt position's logits, then a cached decode of the greedy continuation, against
    what transformers computed for the same weights (float32; README: <= 1e-4). The config is
    read with both key spellings, with only the 4.x keys, and with only the 5.x keys."""
    drop = {"both": (), "hf4": HF5_KEYS, "hf5": HF4_KEYS}[keys]
    folder = _golden_copy(tmp_path, name, drop) if drop else GOLDEN / name
    exp = st_io.load(GOLDEN / name / "expected.safetensors")
    prompt = torch.from_numpy(exp["prompt_ids"].astype("int64"))
    greedy = torch.from_numpy(exp["greedy_ids"].astype("int64"))
    m = LlamaModel.load_hf(folder)
    with torch.no_grad():
        cache = KVCache()
        got = m.logits(m(prompt, fill_cache=cache))
        want = torch.from_numpy(exp["prompt_logits"])
        assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
        rows = [got[-1]]
        for i, t in enumerate(greedy.tolist()):  # teacher-forced decode, one token a step
            step = KVCache()
            h = m(torch.tensor([t]), start=len(prompt) + i, cache=cache, fill_cache=step)
            cache.k = [torch.cat((a, b), dim=1) for a, b in zip(cache.k, step.k)]
            cache.v = [torch.cat((a, b), dim=1) for a, b in zip(cache.v, step.v)]
            rows.append(m.logits(h)[0])
    got = torch.stack(rows)
    want = torch.from_numpy(exp["logits"])
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
    assert torch.equal(got[:-1].argmax(-1), greedy)


# transformers 4.46.3's _compute_llama3_parameters (modeling_rope_utils) for factor 8, low 1,
# high 4, keyed by (rope_theta, head_dim, original_max_position_embeddings). The golden
# llama3_rope model has no wavelength inside the smoothed band [old/high, old/low]; these do
# (the first's index 0, the second's indices 15-17).
LLAMA3_INV_FREQ = {
    (10000.0, 16, 16): [
        0.5760563611984253, 0.03952847048640251, 0.012500000186264515, 0.0039528473280370235,
        0.0012499999720603228, 0.00039528473280370235, 0.0001250000059371814,
        3.9528473280370235e-05],
    (500000.0, 64, 8192): [
        1.0, 0.663601279258728, 0.44036662578582764, 0.2922278344631195, 0.193922758102417,
        0.12868738174438477, 0.08539710193872452, 0.05666961893439293, 0.03760603070259094,
        0.02495540864765644, 0.016560440883040428, 0.010989529080688953, 0.00729266507551074,
        0.00483942124992609, 0.0032114461064338684, 0.0013718936825171113,
        0.0005248460220173001, 0.0001785077911335975, 7.784655463183299e-05,
        5.165906986803748e-05, 3.428102354519069e-05, 2.2748929040972143e-05,
        1.5096217794052791e-05, 1.0017868589784484e-05, 6.647869668086059e-06,
        4.411534519022098e-06, 2.927499735960737e-06, 1.9426925064180978e-06,
        1.289173155782919e-06, 8.554969213037111e-07, 5.677088097399974e-07,
        3.76732259610435e-07],
}


@pytest.mark.parametrize("key", sorted(LLAMA3_INV_FREQ))
def test_llama3_inv_freq_matches_transformers(key):
    theta, d, old = key
    cfg = tiny_config(hidden_size=4 * d, head_dim=d, rope_theta=theta,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": old})
    want = torch.tensor(LLAMA3_INV_FREQ[key])
    assert torch.allclose(rope_inv_freq(cfg), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["llama_gqa", "qwen2_tied"])
def test_save_hf_writes_transformers_names(tmp_path, name):
    """save_hf writes the tensors of a checkpoint that transformers wrote (names, shapes; no
    lm_head when tied) and a config that reads back to the same model."""
    m = LlamaModel.load_hf(GOLDEN / name)
    m.save_hf(tmp_path / "out")
    ours = st_io.tensor_info(tmp_path / "out" / "model.safetensors")
    theirs = st_io.tensor_info(GOLDEN / name / "model.safetensors")
    assert {k: list(v[1]) for k, v in ours.items()} == {k: list(v[1]) for k, v in theirs.items()}
    ids = torch.randint(0, m.cfg.vocab_size, (40,), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.equal(m(ids), LlamaModel.load_hf(tmp_path / "out")(ids))


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_logits_match_transformers(tmp_path, model_type):
    transformers = pytest.importorskip("transformers")
    kw = {}
    if model_type == "llama":
        kw["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    m = LlamaModel.random(tiny_config(model_type, **kw), seed=1)
    m.save_hf(tmp_path)
    try:  # transformers >= 4.56 spells it dtype; older ones pass unknown kwargs to the model
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
    except TypeError:
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path),
                                                               torch_dtype=torch.float32)
    ids = torch.randint(0, 101, (50,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
        ours = LlamaModel.load_hf(tmp_path).logits(m(ids))
    assert torch.allclose(ours, ref, atol=2e-5, rtol=1e-4), (ours - ref).abs().max()


def test_save_load_roundtrip(tmp_path, tiny_model):
    tiny_model.save_hf(tmp_path)
    m2 = LlamaModel.load_hf(tmp_path)
    ids = torch.arange(30) % 101
    with torch.no_grad():
        assert torch.equal(tiny_model(ids), m2(ids))


def test_cached_tail_equals_full_forward(tiny_model):
    ids = torch.randint(0, 101, (70,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = tiny_model(ids)
        cache = KVCache()
        tiny_model(ids[:50], fill_cache=cache)
        tail = tiny_model(ids[50:], start=50, cache=cache)
    assert torch.allclose(full[50:], tail, atol=1e-5)


def reference_attention(q, k, v, mid):
    """One query at a time, literally: middle keys S <= j < S + M(i+1) use q.(scale*k) and are
    dropped for skip heads; other keys j <= i use q.k."""
    nq, T, d = q.shape
    g = nq // k.shape[0]
    out = torch.zeros_like(q)
    for h in range(nq):
        kh = h // g
        for i in range(T):
            n = i + 1
            M = mid.block * max(0, (n - mid.sink - mid.recent) // mid.block)
            logits, vals = [], []
            for j in range(i + 1):
                middle = mid.sink <= j < mid.sink + M
                if middle and mid.skip is not None and bool(mid.skip[kh]):
                    continue
                kk = k[kh, j] * mid.scale[kh] if middle else k[kh, j]
                logits.append(float(q[h, i] @ kk) / math.sqrt(d))
                vals.append(v[kh, j])
            p = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0).float()
            out[h, i] = (p[:, None] * torch.stack(vals)).sum(0)
    return out


@pytest.mark.parametrize("factors", ["mask", "training"])
@pytest.mark.parametrize("chunk", [7, 1024])
def test_attention_semantics(chunk, factors):
    """"mask": a 0/1 mask as served (head 1 keeps nothing and skips); "training": stage 1's
    fractional factors in (0, 1), no head skipped (a 0/1 mask alone cannot tell k*s from,
    say, k*s*s)."""
    g = torch.Generator().manual_seed(5)
    nq, nkv, T, d = 4, 2, 40, 8
    q, k, v = (torch.randn(n, T, d, generator=g) for n in (nq, nkv, nkv))
    if factors == "mask":
        kept = (torch.rand(nkv, d, generator=g) > 0.5).float()
        kept[1] = 0  # head 1 keeps nothing: it skips middle keys and values
        mid = LayerMiddle(sink=4, recent=8, block=4, scale=kept, skip=kept.sum(-1) == 0)
    else:
        kept = 0.05 + 0.9 * torch.rand(nkv, d, generator=g)
        mid = LayerMiddle(sink=4, recent=8, block=4, scale=kept, skip=None)
    pos = torch.arange(T)
    ours = attention(q, k, v, pos, pos, mid, chunk=chunk)
    assert torch.allclose(ours, reference_attention(q, k, v, mid), atol=1e-5)


def test_all_ones_mask_equals_dense(tiny_model):
    ids = torch.randint(0, 101, (60,), generator=torch.Generator().manual_seed(6))
    mc = tiny_model.cfg
    spec = MiddleSpec.from_mask(torch.ones(mc.num_hidden_layers, mc.num_key_value_heads,
                                           mc.head_dim), sink=4, recent=8, block=4)
    with torch.no_grad():
        assert torch.allclose(tiny_model(ids), tiny_model(ids, spec=spec), atol=1e-5)
        sparse = MiddleSpec.from_mask(torch.zeros(2, 2, 16), sink=4, recent=8, block=4)
        assert not torch.allclose(tiny_model(ids), tiny_model(ids, spec=sparse), atol=1e-3)
