// Token sampling on the GPU (sampling.h): one CTA of kThreads per sampled row.
//
// The row is read several times (bans/penalties touch only their tokens): raw max, raw
// sum of exp, then greedy argmax, or max, top-k radix select (4 passes), top-k mass,
// top-p radix select (4 passes) and the draw. Rows are at most 1 MiB (256K vocab) and
// stay in L2 between passes.

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/model/internal.cuh"
#include "kernels/model/sampling.h"

namespace leank::kernels::model {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;

// Philox4x32-10 (Salmon et al. 2011): counter (token, step, domain), key = seed.
__host__ __device__ inline uint64_t Philox(uint64_t seed, uint64_t step, uint32_t token) {
  uint32_t c0 = token, c1 = static_cast<uint32_t>(step), c2 = static_cast<uint32_t>(step >> 32),
           c3 = 0x6c65616eu;  // "lean": the sampling domain
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = uint64_t{0xD2511F53u} * c0, p1 = uint64_t{0xCD9E8D57u} * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return (uint64_t{c0} << 32) | c1;
}

// Uniform in (0, 1): 52 random bits, centred in their cell, so never 0 or 1.
__host__ __device__ inline double Uniform(uint64_t seed, uint64_t step, uint32_t token) {
  return (static_cast<double>(Philox(seed, step, token) >> 12) + 0.5) * 0x1p-52;
}

// Monotone map of floats to uint32 (larger float -> larger key); -0 and +0 share a key.
// Callers never pass NaN.
__device__ __forceinline__ uint32_t Key(float x) {
  if (x == 0.0f) x = 0.0f;
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Larger value wins, then the lower index (the CPU ArgMax's order on distinct values).
template <typename T>
__device__ __forceinline__ void ArgmaxMerge(T& v, int& i, T v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) {
    v = v2;
    i = i2;
  }
}

struct Scratch {
  float f[kWarps];
  double d[kWarps];
  int i[kWarps];
  float hist[256];
  uint32_t bin;
  float rem;
  int found;
};

__device__ float BlockMax(float v, Scratch& s) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  __syncthreads();
  if (threadIdx.x % 32 == 0) s.f[threadIdx.x / 32] = v;
  __syncthreads();
  float r = s.f[0];
  for (int w = 1; w < kWarps; ++w) r = fmaxf(r, s.f[w]);
  return r;
}

__device__ double BlockSum(double v, Scratch& s) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  __syncthreads();
  if (threadIdx.x % 32 == 0) s.d[threadIdx.x / 32] = v;
  __syncthreads();
  double r = 0;
  for (int w = 0; w < kWarps; ++w) r += s.d[w];
  return r;
}

template <typename T>
__device__ int BlockArgmax(T v, int i, T* sv, Scratch& s) {
  for (int o = 16; o > 0; o >>= 1) {
    ArgmaxMerge(v, i, __shfl_xor_sync(kFull, v, o), __shfl_xor_sync(kFull, i, o));
  }
  __syncthreads();
  if (threadIdx.x % 32 == 0) {
    sv[threadIdx.x / 32] = v;
    s.i[threadIdx.x / 32] = i;
  }
  __syncthreads();
  T best = sv[0];
  int idx = s.i[0];
  for (int w = 1; w < kWarps; ++w) ArgmaxMerge(best, idx, sv[w], s.i[w]);
  return idx;
}

// Warp 0: scanning the 256 bins of s.hist from the top, the first bin where the running
// weight reaches s.rem; stores it in s.bin and the weight still to cover inside it in
// s.rem. When the bins never reach s.rem (top-p mass summed in another order fell short
// by rounding), the lowest bin with weight, and s.rem = inf so that later passes keep
// taking the lowest.
__device__ void SelectBin(Scratch& s) {
  const int lane = threadIdx.x;
  const float rem = s.rem;
  float local[8], sum = 0;
  for (int q = 0; q < 8; ++q) {
    local[q] = s.hist[255 - 8 * lane - q];
    sum += local[q];
  }
  float incl = sum;
  for (int o = 1; o < 32; o <<= 1) {
    const float y = __shfl_up_sync(kFull, incl, o);
    if (lane >= o) incl += y;
  }
  float excl = __shfl_up_sync(kFull, incl, 1);
  if (lane == 0) excl = 0;
  const unsigned hit = __ballot_sync(kFull, incl >= rem);
  const unsigned nonzero = __ballot_sync(kFull, sum > 0);
  const int owner = hit ? __ffs(hit) - 1 : (nonzero ? 31 - __clz(nonzero) : 31);
  if (lane != owner) return;
  float c = excl;
  int last = 7;  // lowest bin with weight in this lane
  for (int q = 7; q >= 0; --q) {
    if (local[q] > 0) {
      last = q;
      break;
    }
  }
  if (hit) {
    for (int q = 0; q < 8; ++q) {
      if (c + local[q] >= rem || q == last) {
        s.bin = 255 - 8 * lane - q;
        s.rem = rem - c;
        return;
      }
      c += local[q];
    }
  }
  s.bin = 255 - 8 * lane - last;
  s.rem = INFINITY;
}

// The largest key t (among keys >= lower) such that the weight of {keys >= t} reaches
// `target`: weights 1 (count mode: t = the target-th largest key) or exp(x - mx) (mass
// mode). Four 8-bit radix passes over the row.
__device__ uint32_t RadixSelect(const float* l, int vocab, float temperature, float mx, bool mass,
                                float target, uint32_t lower, Scratch& s) {
  uint32_t prefix = 0, mask = 0;
  if (threadIdx.x == 0) s.rem = target;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) s.hist[b] = 0;
    __syncthreads();
    for (int v = threadIdx.x; v < vocab; v += kThreads) {
      const float raw = l[v];
      if (isnan(raw)) continue;
      const float x = __fdiv_rn(raw, temperature);
      const uint32_t key = Key(x);
      if (key < lower || (key & mask) != prefix) continue;
      const float w = mass ? (x == -INFINITY ? 0.0f : expf(x - mx)) : 1.0f;
      atomicAdd(&s.hist[(key >> shift) & 255u], w);
    }
    __syncthreads();
    if (threadIdx.x < 32) SelectBin(s);
    __syncthreads();
    prefix |= s.bin << shift;
    mask |= 255u << shift;
  }
  return prefix;
}

// Grid: one block per sampled row.
// logits: [rows][vocab] fp32 (in place). params: [gridDim.x]. entries/saved: [total].
// tokens/logprobs: [rows].
__global__ void __launch_bounds__(kThreads)
    SampleKernel(float* logits, int vocab, const SampleRowParams* params,
                 const SampleEntry* entries, float* saved, int32_t* tokens, float* logprobs) {
  __shared__ Scratch s;
  const SampleRowParams p = params[blockIdx.x];
  float* l = logits + int64_t(p.row) * vocab;
  const SampleEntry* ent = entries + p.entry_begin;
  float* sv = saved + p.entry_begin;

  // 1. Bans (entries are unique per row: no two threads write one token).
  for (int e = threadIdx.x; e < p.num_entries; e += kThreads) {
    if (ent[e].flags & kSampleBanned) l[ent[e].token] = -INFINITY;
  }
  __syncthreads();

  // 2. Log-sum-exp of the raw row (NaN skipped).
  float m = -INFINITY;
  for (int v = threadIdx.x; v < vocab; v += kThreads) {
    const float x = l[v];
    if (x > m) m = x;
  }
  m = BlockMax(m, s);
  double sum = 0;
  if (m > -INFINITY) {
    for (int v = threadIdx.x; v < vocab; v += kThreads) {
      const float x = l[v];
      if (x > -INFINITY) sum += expf(x - m);  // false for NaN
    }
  }
  sum = BlockSum(sum, s);
  const double lse = m > -INFINITY ? m + log(sum) : -INFINITY;

  // 3. Penalties, as ApplyPenalties computes them (explicit roundings: no FMA).
  for (int e = threadIdx.x; e < p.num_entries; e += kThreads) {
    const int32_t t = ent[e].token, f = ent[e].flags;
    float x = l[t];
    sv[e] = x;
    if (f & kSampleSeen) {
      x = x > 0 ? __fdiv_rn(x, p.repetition_penalty) : __fmul_rn(x, p.repetition_penalty);
    }
    const int count = f >> kSampleCountShift;
    if (count > 0) {
      x = __fsub_rn(x, __fadd_rn(__fmul_rn(p.frequency_penalty, static_cast<float>(count)),
                                 p.presence_penalty));
    }
    l[t] = x;
  }
  __syncthreads();

  int token = 0;
  // The largest tempered logit; a positive temperature so small that it overflows (e.g.
  // 1e-40: +-inf) is greedy in the limit, as in the CPU sampler, instead of NaN masses.
  const float temp = p.temperature;
  float mx = -INFINITY;
  if (temp != 0.0f) {
    for (int v = threadIdx.x; v < vocab; v += kThreads) {
      const float raw = l[v];
      if (!isnan(raw)) mx = fmaxf(mx, __fdiv_rn(raw, temp));
    }
    mx = BlockMax(mx, s);
  }
  if (temp == 0.0f || !isfinite(mx)) {
    // 4. Greedy: the CPU ArgMax starts from index 0, so a NaN there wins; elsewhere NaN
    // never beats a number.
    float best = -INFINITY;
    int idx = vocab;
    for (int v = threadIdx.x; v < vocab; v += kThreads) {
      const float x = l[v];
      if (!isnan(x)) ArgmaxMerge(best, idx, x, v);
    }
    idx = BlockArgmax(best, idx, s.f, s);
    token = isnan(l[0]) || idx >= vocab ? 0 : idx;
  } else {
    // 5. Temperature, filters, draw.
    uint32_t threshold = 0;  // keep keys >= threshold
    if (p.top_k > 0 && p.top_k < vocab) {
      threshold = RadixSelect(l, vocab, temp, mx, false, static_cast<float>(p.top_k), 0, s);
    }
    if (p.top_p < 1.0f) {
      double mass = 0;
      for (int v = threadIdx.x; v < vocab; v += kThreads) {
        const float raw = l[v];
        if (isnan(raw)) continue;
        const float x = __fdiv_rn(raw, temp);
        if (x > -INFINITY && Key(x) >= threshold) mass += expf(x - mx);
      }
      mass = BlockSum(mass, s);
      threshold =
          RadixSelect(l, vocab, temp, mx, true, static_cast<float>(p.top_p * mass), threshold, s);
    }
    double best = -INFINITY;
    int idx = vocab;
    for (int v = threadIdx.x; v < vocab; v += kThreads) {
      const float raw = l[v];
      if (isnan(raw)) continue;
      const float x = __fdiv_rn(raw, temp);
      if (x == -INFINITY || Key(x) < threshold) continue;
      if (p.min_p > 0.0f && expf(x - mx) < p.min_p) continue;
      const double g = -log(-log(Uniform(p.seed, p.step, static_cast<uint32_t>(v))));
      ArgmaxMerge(best, idx, static_cast<double>(x) + g, v);
    }
    idx = BlockArgmax(best, idx, s.d, s);
    token = idx < vocab ? idx : 0;
  }

  // 6. Logprob of the chosen token under the raw row (its saved value when an entry
  // touched it; entries are unique, so at most one thread finds it).
  if (threadIdx.x == 0) s.found = -1;
  __syncthreads();
  for (int e = threadIdx.x; e < p.num_entries; e += kThreads) {
    if (ent[e].token == token) s.found = e;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const float raw = s.found >= 0 ? sv[s.found] : l[token];
    tokens[p.row] = token;
    logprobs[p.row] = static_cast<float>(static_cast<double>(raw) - lse);
  }
}

}  // namespace

void SampleLogits(float* logits, int vocab, const SampleRowParams* params, int num_sampled,
                  const SampleEntry* entries, float* saved, int32_t* tokens, float* logprobs,
                  cudaStream_t stream) {
  if (num_sampled == 0) return;
  SampleKernel<<<num_sampled, kThreads, 0, stream>>>(logits, vocab, params, entries, saved, tokens,
                                                     logprobs);
  LEANK_MODEL_CHECK_LAUNCH();
}

double SampleUniform(uint64_t seed, uint64_t step, uint32_t token) {
  return Uniform(seed, step, token);
}

}  // namespace leank::kernels::model
