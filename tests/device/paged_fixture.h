#pragma once
// Test fixture for the CUDA attention kernels: random logical K/V/q per sequence,
// packed into paged full/pruned pools exactly as cache/README.md describes (with
// shuffled block ids and NaN in every slot no token owns), and a direct float64
// reference of the attention semantics. Independent of cache/ so that the kernels and
// the layout are checked from the README alone; reference_test.cc also compares
// against cache/reference.h.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"

namespace leank::kernels::testing {

inline bool HasGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!::leank::kernels::testing::HasGpu()) GTEST_SKIP() << "no CUDA device"

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(expr)

// A fixed seed, so every run checks the same inputs (it was the clock: a failure seen
// once in CI could pass on every rerun). LEANK_TEST_SEED picks another one to explore;
// the seed is printed either way.
inline uint64_t TestSeed() {
  static uint64_t seed = [] {
    const char* env = std::getenv("LEANK_TEST_SEED");
    uint64_t s = env ? std::strtoull(env, nullptr, 10) : uint64_t{20240611};
    std::printf("[ seed     ] LEANK_TEST_SEED=%llu\n", static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

inline float Bf16Round(float x) { return __bfloat162float(__float2bfloat16(x)); }
inline __nv_bfloat16 Bf16NaN() {
  __nv_bfloat16_raw r;
  r.x = 0x7fc0;
  return __nv_bfloat16(r);
}

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) {
    if (cudaMalloc(&ptr, std::max<size_t>(1, n) * sizeof(T)) != cudaSuccess) std::abort();
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  void Upload(const std::vector<T>& h) {
    if (cudaMemcpy(ptr, h.data(), n * sizeof(T), cudaMemcpyHostToDevice) != cudaSuccess)
      std::abort();
  }
  std::vector<T> Download() const {
    std::vector<T> h(n);
    if (cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost) != cudaSuccess)
      std::abort();
    return h;
  }
};

// kept_channels[layer][head]: random subsets with counts multiple of 16; head 0 keeps 0
// channels and head 1 keeps all (when there are >= 2 heads) so both edge cases run.
inline std::vector<std::vector<std::vector<int>>> RandomMask(const AttentionShape& s,
                                                             std::mt19937_64& rng) {
  std::vector<std::vector<std::vector<int>>> mask(s.num_layers);
  for (int l = 0; l < s.num_layers; ++l) {
    mask[l].resize(s.num_kv_heads);
    for (int h = 0; h < s.num_kv_heads; ++h) {
      int count = 16 * static_cast<int>(rng() % (s.head_dim / 16 + 1));
      if (h == 0) count = 0;
      if (h == 1) count = s.head_dim;
      std::vector<int> all(s.head_dim);
      for (int c = 0; c < s.head_dim; ++c) all[c] = c;
      std::shuffle(all.begin(), all.end(), rng);
      all.resize(count);
      std::sort(all.begin(), all.end());
      mask[l][h] = all;
    }
  }
  return mask;
}

inline std::vector<std::vector<std::vector<int>>> AllOnesMask(const AttentionShape& s) {
  std::vector<int> all(s.head_dim);
  for (int c = 0; c < s.head_dim; ++c) all[c] = c;
  return std::vector<std::vector<std::vector<int>>>(
      s.num_layers, std::vector<std::vector<int>>(s.num_kv_heads, all));
}

// Logical contents of one sequence (bf16-representable floats).
struct SeqData {
  int64_t n = 0;
  std::vector<float> k, v;  // [n][H][D]
  std::vector<float> q;     // [Hq][D] (decode) or [num_q][Hq][D]
};

inline std::vector<float> RandomVec(size_t n, std::mt19937_64& rng, float scale) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = Bf16Round(d(rng));
  return v;
}

// Paged pools of all layers with the same logical data in every layer, built for a given
// per-sequence storage middle (M used to place tokens).
struct PagedPools {
  int64_t num_full = 0, num_pruned = 0;
  std::vector<__nv_bfloat16> full, pruned;
  std::vector<std::vector<int32_t>> full_tables, pruned_tables;
};

// mask: [layer][head] kept channels (empty in dense mode).
using MaskChannels = std::vector<std::vector<std::vector<int>>>;

inline PagedPools BuildPools(const DeviceMeta& meta, const MaskChannels& mask,
                             const std::vector<SeqData>& seqs,
                             const std::vector<int64_t>& storage_middle,
                             const std::vector<int>& extra_pruned_blocks, std::mt19937_64& rng) {
  const AttentionShape& s = meta.shape();
  const int B = s.block_size, H = s.num_kv_heads, D = s.head_dim, L = s.num_layers;
  PagedPools p;
  std::vector<int> nfull(seqs.size()), npruned(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    nfull[i] = static_cast<int>((seqs[i].n - storage_middle[i] + B - 1) / B);
    npruned[i] = static_cast<int>(storage_middle[i] / B) + extra_pruned_blocks[i];
    p.num_full += nfull[i];
    p.num_pruned += npruned[i];
  }
  p.num_full += 3;  // unused blocks stay NaN
  p.num_pruned += 3;
  std::vector<int32_t> fperm(p.num_full), pperm(p.num_pruned);
  for (size_t i = 0; i < fperm.size(); ++i) fperm[i] = static_cast<int32_t>(i);
  for (size_t i = 0; i < pperm.size(); ++i) pperm[i] = static_cast<int32_t>(i);
  std::shuffle(fperm.begin(), fperm.end(), rng);
  std::shuffle(pperm.begin(), pperm.end(), rng);
  size_t fi = 0, pi = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    p.full_tables.emplace_back(fperm.begin() + fi, fperm.begin() + fi + nfull[i]);
    p.pruned_tables.emplace_back(pperm.begin() + pi, pperm.begin() + pi + npruned[i]);
    fi += nfull[i];
    pi += npruned[i];
  }
  const int64_t fbe = meta.full_block_elems();
  p.full.assign(size_t(L) * p.num_full * fbe, Bf16NaN());
  int64_t pruned_total = 0;
  for (int l = 0; l < L; ++l) pruned_total += p.num_pruned * meta.pruned_block_elems(l);
  p.pruned.assign(std::max<int64_t>(pruned_total, 1), Bf16NaN());
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SeqData& sd = seqs[i];
    const int64_t M = storage_middle[i];
    for (int64_t pos = 0; pos < sd.n; ++pos) {
      const bool middle = pos >= s.sink && pos < s.sink + M;
      for (int l = 0; l < L; ++l) {
        for (int h = 0; h < H; ++h) {
          const float* k = &sd.k[(pos * H + h) * D];
          const float* v = &sd.v[(pos * H + h) * D];
          if (!middle) {
            const int64_t lb = pos < s.sink ? pos / B : s.sink / B + (pos - s.sink - M) / B;
            const int slot = pos < s.sink ? pos % B : (pos - s.sink - M) % B;
            const int64_t blk = p.full_tables[i][lb];
            __nv_bfloat16* base = &p.full[(l * p.num_full + blk) * fbe];
            for (int c = 0; c < D; ++c) {
              base[(int64_t(0 * H + h) * B + slot) * D + c] = __float2bfloat16(k[c]);
              base[(int64_t(1 * H + h) * B + slot) * D + c] = __float2bfloat16(v[c]);
            }
          } else {
            const int kept = meta.kept(l, h);
            if (kept == 0) continue;
            const int64_t blk = p.pruned_tables[i][(pos - s.sink) / B];
            const int slot = (pos - s.sink) % B;
            __nv_bfloat16* base = &p.pruned[meta.pruned_layer_base(l, p.num_pruned) +
                                            blk * meta.pruned_block_elems(l)];
            const auto& ch = mask[l][h];
            for (int j = 0; j < kept; ++j)
              base[meta.pruned_k_offset(l, h) + slot * kept + j] = __float2bfloat16(k[ch[j]]);
            for (int c = 0; c < D; ++c)
              base[meta.pruned_v_offset(l, h) + slot * D + c] = __float2bfloat16(v[c]);
          }
        }
      }
    }
  }
  return p;
}

// Attention of one query at position `pos` of `sd` (q: [Hq][D]) over keys 0..pos, with
// the middle boundary of cache/README.md: key j is middle when S <= j < S + M(pos + 1).
inline std::vector<double> ReferenceAttend(const AttentionShape& s, const MaskChannels& mask,
                                           int layer, const SeqData& sd, int64_t pos,
                                           const float* q, float scale) {
  const int H = s.num_kv_heads, D = s.head_dim, G = s.num_q_heads / H;
  const int64_t M = MiddleTokens(s, mask.empty(), pos + 1);
  std::vector<double> out(size_t(s.num_q_heads) * D, 0.0);
  std::vector<double> score(pos + 1);
  for (int hq = 0; hq < s.num_q_heads; ++hq) {
    const int h = hq / G;
    const float* qh = q + hq * D;
    double mx = -INFINITY;
    for (int64_t j = 0; j <= pos; ++j) {
      const bool middle = j >= s.sink && j < s.sink + M;
      const float* k = &sd.k[(j * H + h) * D];
      double dot = 0.0;
      if (!middle) {
        for (int c = 0; c < D; ++c) dot += double(qh[c]) * k[c];
      } else {
        if (mask[layer][h].empty()) {
          score[j] = -INFINITY;
          continue;
        }
        for (int c : mask[layer][h]) dot += double(qh[c]) * k[c];
      }
      score[j] = dot * scale;
      mx = std::max(mx, score[j]);
    }
    double sum = 0.0;
    for (int64_t j = 0; j <= pos; ++j) {
      if (score[j] == -INFINITY) continue;
      const double p = std::exp(score[j] - mx);
      sum += p;
      const float* v = &sd.v[(j * H + h) * D];
      for (int c = 0; c < D; ++c) out[size_t(hq) * D + c] += p * v[c];
    }
    for (int c = 0; c < D; ++c) out[size_t(hq) * D + c] /= sum;
  }
  return out;
}

// ||got - ref|| / ||ref|| over a vector; NaN (an unwritten or poisoned output) fails.
inline double RelError(const std::vector<__nv_bfloat16>& got, size_t offset,
                       const std::vector<double>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = __bfloat162float(got[offset + i]);
    if (!std::isfinite(g)) return INFINITY;
    num += (g - ref[i]) * (g - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace leank::kernels::testing
