#pragma once
// A tiny random Llama model written to a folder the engine can load (config.json,
// model.safetensors, tokenizer.json of tests/data/tokenizer/llama3-mini): for engine
// tests that need Engine::Create. head_dim 64 so the CUDA backend's fast kernels (and
// its decode graphs) apply.

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "engine/model/safetensors.h"
#include "gtest/gtest.h"

namespace leank::testing {

constexpr int kTinyVocab = 3256;  // llama3-mini: 3000 + 256 added tokens

// Attention shape of the tiny model (hidden 64, head_dim 64 either way).
struct TinyModelShape {
  int layers = 2;
  int heads = 2;
  int kv_heads = 1;
};

// Writes the model into `dir` (created); weights N(0, 1/fan_in) f32, embeddings N(0, 1),
// a scaled lm_head so logits spread over a few units (near-ties rare).
inline void WriteTinyModel(const std::filesystem::path& dir, uint64_t seed,
                           TinyModelShape shape = {}) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  const int hidden = 64, inter = 128, head_dim = 64;
  const int layers = shape.layers, heads = shape.heads, kv_heads = shape.kv_heads;
  {
    std::ofstream f(dir / "config.json");
    f << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "attention_bias": false, "bos_token_id": 1, "eos_token_id": [2, 3],
  "head_dim": )"
      << head_dim << R"(, "hidden_act": "silu", "hidden_size": )" << hidden
      << R"(, "intermediate_size": )" << inter << R"(,
  "max_position_embeddings": 512, "num_attention_heads": )"
      << heads << R"(, "num_hidden_layers": )" << layers << R"(, "num_key_value_heads": )"
      << kv_heads << R"(,
  "rms_norm_eps": 1e-06, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
  "tie_word_embeddings": false, "dtype": "float32", "vocab_size": )"
      << kTinyVocab << "}\n";
  }
  std::mt19937_64 rng(seed);
  std::vector<RawTensor> tensors;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale, float offset) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = offset + scale * dist(rng);
    RawTensor t{name, "F32", std::move(shape), std::string(n * 4, '\0')};
    std::memcpy(t.bytes.data(), v.data(), n * 4);
    tensors.push_back(std::move(t));
  };
  const int q = heads * head_dim, kv = kv_heads * head_dim;
  const float sh = 1.0f / std::sqrt(float(hidden));
  add("model.embed_tokens.weight", {kTinyVocab, hidden}, 1.0f, 0.0f);
  add("model.norm.weight", {hidden}, 0.1f, 1.0f);
  add("lm_head.weight", {kTinyVocab, hidden}, 3 * sh, 0.0f);
  for (int l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {hidden}, 0.1f, 1.0f);
    add(p + "post_attention_layernorm.weight", {hidden}, 0.1f, 1.0f);
    add(p + "self_attn.q_proj.weight", {q, hidden}, 2 * sh, 0.0f);
    add(p + "self_attn.k_proj.weight", {kv, hidden}, 2 * sh, 0.0f);
    add(p + "self_attn.v_proj.weight", {kv, hidden}, sh, 0.0f);
    add(p + "self_attn.o_proj.weight", {hidden, q}, 1.0f / std::sqrt(float(q)), 0.0f);
    add(p + "mlp.gate_proj.weight", {inter, hidden}, sh, 0.0f);
    add(p + "mlp.up_proj.weight", {inter, hidden}, sh, 0.0f);
    add(p + "mlp.down_proj.weight", {hidden, inter}, 1.0f / std::sqrt(float(inter)), 0.0f);
  }
  ASSERT_TRUE(WriteSafetensors(dir / "model.safetensors", tensors, {{"format", "pt"}}).ok());
  fs::copy_file(fs::path(LEANK_TEST_DATA_DIR) / "tokenizer" / "llama3-mini" / "tokenizer.json",
                dir / "tokenizer.json", fs::copy_options::overwrite_existing);
}

}  // namespace leank::testing
