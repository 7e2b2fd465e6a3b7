#!/usr/bin/env python3
"""Makes the tiny committed test files of tests/model (run from anywhere; idempotent).

- dtypes.safetensors: the same exactly-representable values in F32/F16/BF16 plus f16 specials,
  written by the reference `safetensors` package (checks our reader against theirs).
- tiny_llama_sharded/: LlamaForCausalLM, bf16, untied, llama3 rope, saved in 2+ shards.
- tiny_qwen2/: Qwen2ForCausalLM, f16, tied embeddings, q/k/v biases, one file.
- expected.json: per tensor of the models: shape, dtype, float64 sum and first 4 values.
"""
import json
import pathlib

import torch
import transformers
from safetensors.torch import save_file

HERE = pathlib.Path(__file__).resolve().parent


def make_dtypes():
    base = (torch.arange(16, dtype=torch.float32) - 7) * 0.375  # exact in all three dtypes
    specials = torch.tensor([0x0001, 0x03FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00, 0x8000, 0x3C00],
                            dtype=torch.int32).to(torch.int16).view(torch.float16)
    tensors = {
        "f32": base.reshape(4, 4).contiguous(),
        "f16": base.to(torch.float16).reshape(2, 8).contiguous(),
        "bf16": base.to(torch.bfloat16).contiguous(),
        "f16_specials": specials.contiguous(),
    }
    save_file(tensors, HERE / "dtypes.safetensors", metadata={"origin": "make_test_models.py"})


def describe(model):
    out = {}
    for name, t in model.state_dict().items():
        f = t.detach().to(torch.float64)
        out[name] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                     "sum": f.sum().item(), "first": f.flatten()[:4].tolist()}
    return out


def make_models():
    torch.manual_seed(1234)
    expected = {}
    llama = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=[2, 3],
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    m = transformers.LlamaForCausalLM(llama).to(torch.bfloat16)
    m.save_pretrained(HERE / "tiny_llama_sharded", max_shard_size="20KB")
    sd = m.state_dict()
    expected["tiny_llama_sharded"] = describe(m)

    qwen = transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
        tie_word_embeddings=True)
    m = transformers.Qwen2ForCausalLM(qwen).to(torch.float16)
    with torch.no_grad():  # HF inits biases to zero; make them worth checking
        for layer in m.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_()
    m.save_pretrained(HERE / "tiny_qwen2")
    expected["tiny_qwen2"] = describe(m)
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    for d in ("tiny_llama_sharded", "tiny_qwen2"):
        gen = HERE / d / "generation_config.json"
        if gen.exists():
            gen.unlink()


if __name__ == "__main__":
    make_dtypes()
    make_models()
