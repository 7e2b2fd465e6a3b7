#pragma once
// Random Llama-shaped models and LeanK masks in host memory, and the logits error measure,
// for the CUDA backend tests (cuda_backend_test.cc, cuda_graph_buckets_test.cc). Header-only: each
// test binary includes it once.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "cache/mask.h"
#include "engine/model/dtype.h"
#include "engine/model/weights.h"

namespace leank::testing {

// A model whose tensors live in host vectors (random weights in memory), or, with
// `store`, a file-backed model.
struct MemModel {
  ModelConfig config;
  ModelWeights weights;
  std::vector<std::vector<uint16_t>> storage;
  std::unique_ptr<WeightStore> store;
};

// bf16 tensor of N(offset, scale^2) values, owned by `m`.
inline TensorView RandomTensor(MemModel& m, std::string name, std::vector<int64_t> shape,
                               float scale, float offset, std::mt19937_64& rng) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = FloatToBf16(offset + scale * dist(rng));
  m.storage.push_back(std::move(v));
  TensorView t;
  t.name = std::move(name);
  t.file = "memory";
  t.dtype = DType::kBF16;
  t.shape = std::move(shape);
  t.data = m.storage.back().data();
  t.num_bytes = n * 2;
  return t;
}

// Llama-shaped random model (2 layers, hidden 256, vocab 1000): bf16 weights, std
// 1/sqrt(fan_in) so activations stay O(1); q/k weights doubled for sharp attention, so
// errors in the cache path show. `bias`: Qwen2-style q/k/v biases.
inline std::unique_ptr<MemModel> RandomModel(int head_dim, int q_heads, int kv_heads, bool bias,
                                             bool tied, uint64_t seed) {
  auto m = std::make_unique<MemModel>();
  m->storage.reserve(64);
  ModelConfig& c = m->config;
  c.architecture = bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
  c.model_type = bias ? "qwen2" : "llama";
  c.name = "random";
  c.vocab_size = 1000;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_layers = 2;
  c.num_heads = q_heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000;
  c.tie_word_embeddings = tied;
  c.attention_bias = bias;
  c.max_position_embeddings = 4096;
  std::mt19937_64 rng(seed);
  const int64_t hd = c.hidden_size, qs = c.q_size(), kvs = c.kv_size(), in = c.intermediate_size;
  const float s_h = 1.0f / std::sqrt(float(hd));
  ModelWeights& w = m->weights;
  w.embed_tokens = RandomTensor(*m, "embed", {c.vocab_size, hd}, 1.0f, 0.0f, rng);
  w.final_norm = RandomTensor(*m, "norm", {hd}, 0.1f, 1.0f, rng);
  w.lm_head = tied ? w.embed_tokens : RandomTensor(*m, "lm_head", {c.vocab_size, hd}, s_h, 0, rng);
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights L;
    L.input_norm = RandomTensor(*m, "in_norm", {hd}, 0.1f, 1.0f, rng);
    L.q_proj = RandomTensor(*m, "q", {qs, hd}, 2 * s_h, 0, rng);
    L.k_proj = RandomTensor(*m, "k", {kvs, hd}, 2 * s_h, 0, rng);
    L.v_proj = RandomTensor(*m, "v", {kvs, hd}, s_h, 0, rng);
    if (bias) {
      L.q_bias = RandomTensor(*m, "qb", {qs}, 0.5f, 0, rng);
      L.k_bias = RandomTensor(*m, "kb", {kvs}, 0.5f, 0, rng);
      L.v_bias = RandomTensor(*m, "vb", {kvs}, 0.5f, 0, rng);
    }
    L.o_proj = RandomTensor(*m, "o", {hd, qs}, 1.0f / std::sqrt(float(qs)), 0, rng);
    L.post_attention_norm = RandomTensor(*m, "post_norm", {hd}, 0.1f, 1.0f, rng);
    L.gate_proj = RandomTensor(*m, "gate", {in, hd}, s_h, 0, rng);
    L.up_proj = RandomTensor(*m, "up", {in, hd}, s_h, 0, rng);
    L.down_proj = RandomTensor(*m, "down", {hd, in}, 1.0f / std::sqrt(float(in)), 0, rng);
    w.layers.push_back(std::move(L));
  }
  return m;
}

// A random aligned LeanK mask: per head a random multiple of `align` channels kept (0 and
// all included), at random positions.
inline cache::Mask RandomMask(const ModelConfig& c, int align, std::mt19937_64& rng) {
  cache::MaskShape shape{c.num_layers, c.num_kv_heads, c.head_dim};
  std::vector<uint8_t> kept(size_t(c.num_layers) * c.num_kv_heads * c.head_dim, 0);
  for (int l = 0; l < c.num_layers; ++l) {
    for (int h = 0; h < c.num_kv_heads; ++h) {
      const int keep = static_cast<int>(rng() % (c.head_dim / align + 1)) * align;
      std::vector<int> ch(c.head_dim);
      for (int i = 0; i < c.head_dim; ++i) ch[i] = i;
      std::shuffle(ch.begin(), ch.end(), rng);
      for (int i = 0; i < keep; ++i)
        kept[(size_t(l) * c.num_kv_heads + h) * c.head_dim + ch[i]] = 1;
    }
  }
  auto m = cache::Mask::Create(shape, kept, align);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

// Relative L2 error of `a` against `ref` (same length); infinite if `a` has a non-finite value.
inline double RelErr(std::span<const float> a, std::span<const float> ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace leank::testing
