#pragma once
// fp32 building blocks of the CPU reference. Row-major everywhere.

#include <cstdint>
#include <vector>

#include "engine/cpu/thread_pool.h"
#include "engine/model/config.h"

namespace leank::cpu {

// y[t][n] = sum_k x[t][k] * w[n][k] (+ bias[n]).
// x: [rows][k], w: [n][k], bias: [n] or nullptr, y: [rows][n].
void MatMulT(ThreadPool& pool, const float* x, int64_t rows, const float* w, int64_t n, int64_t k,
             const float* bias, float* y);

// Row-wise RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight. x, y: [rows][dim].
void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim, double eps, float* y);

// Rotary embedding tables (HF rotate_half convention: channel i pairs with i + dim/2).
class Rope {
 public:
  Rope(const ModelConfig& config);
  // Rotates `num_heads` heads of one token at `position`, in place. x: [num_heads][head_dim].
  void Apply(float* x, int num_heads, int64_t position) const;
  const std::vector<float>& inv_freq() const { return inv_freq_; }

 private:
  int head_dim_;
  std::vector<float> inv_freq_;  // [head_dim / 2]
};

// out[i] = silu(gate[i]) * up[i].
void SiluMul(const float* gate, const float* up, int64_t n, float* out);

// x rounded to the nearest bfloat16 (ties to even), returned as float: what CUDA's
// __float2bfloat16 then __bfloat162float give. Infinities pass through, NaN stays NaN,
// values past the largest bf16 round to +-inf.
float RoundToBf16(float x);
// RoundToBf16 over x[0, n), in place.
void RoundToBf16(float* x, int64_t n);

}  // namespace leank::cpu
