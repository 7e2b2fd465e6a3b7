#include "engine/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "engine/model/dtype.h"

namespace leank::cpu {
namespace {

// Dot product with independent partial sums so the compiler vectorises it
// without -ffast-math; cloned for AVX2/FMA with a run-time dispatch.
__attribute__((target_clones("avx2,fma", "default"))) float Dot(const float* a, const float* b,
                                                                int64_t k) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float sum = 0;
  for (int j = 0; j < 16; ++j) sum += acc[j];
  for (; i < k; ++i) sum += a[i] * b[i];
  return sum;
}

}  // namespace

void MatMulT(ThreadPool& pool, const float* x, int64_t rows, const float* w, int64_t n, int64_t k,
             const float* bias, float* y) {
  // Split output columns across threads: each weight row is read once per call.
  pool.ParallelFor(n, [&](int64_t begin, int64_t end) {
    constexpr int64_t kRowTile = 8;
    for (int64_t t0 = 0; t0 < rows; t0 += kRowTile) {
      const int64_t t1 = std::min(rows, t0 + kRowTile);
      for (int64_t j = begin; j < end; ++j) {
        const float* wr = w + j * k;
        const float b = bias ? bias[j] : 0.0f;
        for (int64_t t = t0; t < t1; ++t) y[t * n + j] = Dot(x + t * k, wr, k) + b;
      }
    }
  });
}

void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim, double eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
    for (int64_t i = 0; i < dim; ++i) yr[i] = weight[i] * (xr[i] * inv);
  }
}

Rope::Rope(const ModelConfig& config) : head_dim_(config.head_dim) {
  const int half = head_dim_ / 2;
  inv_freq_.resize(half);
  // Same float32 steps as transformers' default rope init.
  for (int i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim_);
    inv_freq_[i] = 1.0f / std::pow(static_cast<float>(config.rope_theta), exponent);
  }
  const RopeScaling& s = config.rope_scaling;
  if (s.type == RopeScaling::Type::kLinear) {
    for (float& f : inv_freq_) f = f / static_cast<float>(s.factor);
  } else if (s.type == RopeScaling::Type::kLlama3) {
    const double old_len = s.original_max_position_embeddings;
    const double low_wavelen = old_len / s.low_freq_factor;
    const double high_wavelen = old_len / s.high_freq_factor;
    for (float& f : inv_freq_) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen < high_wavelen) continue;  // high frequency: unchanged
      if (wavelen > low_wavelen) {
        f = static_cast<float>(f / s.factor);
      } else {
        const double smooth =
            (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = static_cast<float>((1 - smooth) * f / s.factor + smooth * f);
      }
    }
  }
}

void Rope::Apply(float* x, int num_heads, int64_t position) const {
  const int half = head_dim_ / 2;
  for (int i = 0; i < half; ++i) {
    const float angle = static_cast<float>(position) * inv_freq_[i];
    const float c = std::cos(angle), s = std::sin(angle);
    for (int h = 0; h < num_heads; ++h) {
      float* xh = x + static_cast<int64_t>(h) * head_dim_;
      const float a = xh[i], b = xh[i + half];
      xh[i] = a * c - b * s;
      xh[i + half] = b * c + a * s;
    }
  }
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

float RoundToBf16(float x) { return Bf16ToFloat(FloatToBf16(x)); }

void RoundToBf16(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = RoundToBf16(x[i]);
}

}  // namespace leank::cpu
