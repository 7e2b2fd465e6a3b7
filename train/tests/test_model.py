"""The compact model against transformers (when installed), and the attention semantics
against a per-query reference written straight from cache/README.md."""

import math

import pytest
import torch

from conftest import tiny_config
from train.attention import LayerMiddle, MiddleSpec, attention
from train.model import KVCache, LlamaModel


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_logits_match_transformers(tmp_path, model_type):
    transformers = pytest.importorskip("transformers")
    kw = {}
    if model_type == "llama":
        kw["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    m = LlamaModel.random(tiny_config(model_type, **kw), seed=1)
    m.save_hf(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
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


@pytest.mark.parametrize("chunk", [7, 1024])
def test_attention_semantics(chunk):
    g = torch.Generator().manual_seed(5)
    nq, nkv, T, d = 4, 2, 40, 8
    q, k, v = (torch.randn(n, T, d, generator=g) for n in (nq, nkv, nkv))
    kept = (torch.rand(nkv, d, generator=g) > 0.5).float()
    kept[1] = 0  # head 1 keeps nothing: it skips middle keys and values
    mid = LayerMiddle(sink=4, recent=8, block=4, scale=kept, skip=kept.sum(-1) == 0)
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
