// Model kernels around attention: embedding, RMSNorm, bias + RoPE + K/V write, SwiGLU,
// argmax. Simple one-pass kernels: each is memory-bound and touches its bytes once.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "kernels/model/internal.cuh"
#include "kernels/model/ops.h"

namespace leank::kernels::model {
namespace {

__global__ void EmbeddingKernel(const int32_t* tokens, const bf16* table, int hidden, float* x) {
  const int r = blockIdx.x;
  const bf16* src = table + int64_t(tokens[r]) * hidden;
  float* dst = x + int64_t(r) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = __bfloat162float(src[i]);
}

__global__ void RmsNormKernel(const float* x, const int32_t* row_index, int hidden,
                              const bf16* weight, float eps, bf16* out) {
  const int r = blockIdx.x;
  const int src_row = row_index ? row_index[r] : r;
  const float* xr = x + int64_t(src_row) * hidden;
  float ss = 0;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) ss += xr[i] * xr[i];
  ss = BlockSum(ss);
  const float inv = rsqrtf(ss / hidden + eps);
  bf16* o = out + int64_t(r) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    o[i] = __float2bfloat16(__bfloat162float(weight[i]) * (xr[i] * inv));
  }
}

__global__ void QkvRopeWriteKernel(const float* qkv, const bf16* bias, const float* inv_freq,
                                   int num_q_heads, CacheMetaView meta, StepTables tables,
                                   bf16* q_out, bf16* full_layer) {
  const int r = blockIdx.x;
  const int H = meta.num_kv_heads, D = meta.head_dim, B = meta.block_size, half = D / 2;
  const StepSeq s = tables.seqs[tables.row_seq[r]];
  const int pos = s.start_pos + (r - s.row_begin);
  const int row_width = (num_q_heads + 2 * H) * D;
  const float* src = qkv + int64_t(r) * row_width;
  // Storage slot of this token (AppendPlan: new tokens are never in the pruned region).
  int table_pos, slot;
  if (pos < meta.sink) {
    table_pos = pos / B;
    slot = pos % B;
  } else {
    const int rel = pos - meta.sink - s.middle_before;
    table_pos = meta.sink / B + rel / B;
    slot = rel % B;
  }
  const int64_t blk = tables.full_idx[s.full_begin + table_pos];
  auto cache_at = [&](int kv, int h) {
    return full_layer + (((blk * 2 + kv) * H + h) * B + slot) * int64_t(D);
  };
  auto value = [&](int i) { return src[i] + (bias ? __bfloat162float(bias[i]) : 0.0f); };
  const int rope_pairs = (num_q_heads + H) * half;
  for (int idx = threadIdx.x; idx < rope_pairs; idx += blockDim.x) {
    const int head = idx / half, i = idx % half;  // heads: q heads, then k heads
    const int base = head * D;
    const float a = value(base + i), b = value(base + i + half);
    float sn, cs;
    sincosf(static_cast<float>(pos) * inv_freq[i], &sn, &cs);
    const float ra = a * cs - b * sn, rb = b * cs + a * sn;
    if (head < num_q_heads) {
      bf16* q = q_out + (int64_t(r) * num_q_heads + head) * D;
      q[i] = __float2bfloat16(ra);
      q[i + half] = __float2bfloat16(rb);
    } else {
      bf16* k = cache_at(0, head - num_q_heads);
      k[i] = __float2bfloat16(ra);
      k[i + half] = __float2bfloat16(rb);
    }
  }
  const int v_base = (num_q_heads + H) * D;
  for (int idx = threadIdx.x; idx < H * D; idx += blockDim.x) {
    cache_at(1, idx / D)[idx % D] = __float2bfloat16(value(v_base + idx));
  }
}

__global__ void SiluMulKernel(const bf16* gu, int inter, bf16* out) {
  const int r = blockIdx.x;
  const bf16* g = gu + int64_t(r) * 2 * inter;
  bf16* o = out + int64_t(r) * inter;
  for (int i = threadIdx.x; i < inter; i += blockDim.x) {
    const float x = __bfloat162float(g[i]);
    o[i] = __float2bfloat16(x / (1.0f + expf(-x)) * __bfloat162float(g[inter + i]));
  }
}

// Lexicographic max: larger value wins, then the lower index. NaN never wins.
__device__ __forceinline__ void ArgmaxMerge(float& v, int& i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) {
    v = v2;
    i = i2;
  }
}

__global__ void ArgmaxKernel(const float* logits, int vocab, int32_t* out) {
  const float* l = logits + int64_t(blockIdx.x) * vocab;
  float best = -INFINITY;
  int idx = vocab;  // beaten by any real candidate with the same -inf value
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float x = l[i];
    if (!isnan(x)) ArgmaxMerge(best, idx, x, i);
  }
  for (int o = 16; o > 0; o >>= 1) {
    ArgmaxMerge(best, idx, __shfl_xor_sync(0xffffffffu, best, o),
                __shfl_xor_sync(0xffffffffu, idx, o));
  }
  __shared__ float sv[32];
  __shared__ int si[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sv[warp] = best;
    si[warp] = idx;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < blockDim.x / 32; ++w) ArgmaxMerge(best, idx, sv[w], si[w]);
    out[blockIdx.x] = idx < vocab ? idx : 0;
  }
}

__global__ void FillRandomKernel(bf16* data, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + i;  // splitmix64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    data[i] = __float2bfloat16(static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
}

__global__ void ReadProbeKernel(const uint4* data, size_t n, float* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = __ldg(data + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) sink[0] = 1.0f;  // practically never: keeps the loads alive
}

}  // namespace

void FillRandomBf16(bf16* data, size_t n, uint64_t seed, cudaStream_t stream) {
  if (n == 0) return;
  FillRandomKernel<<<4096, 256, 0, stream>>>(data, n, seed);
  LEANK_MODEL_CHECK_LAUNCH();
}

void ReadProbe(const char* data, size_t bytes, float* sink, cudaStream_t stream) {
  int dev = 0, sms = 0;
  LEANK_MODEL_CUDA_CHECK(cudaGetDevice(&dev));
  LEANK_MODEL_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  ReadProbeKernel<<<sms * 8, 512, 0, stream>>>(reinterpret_cast<const uint4*>(data), bytes / 16,
                                               sink);
  LEANK_MODEL_CHECK_LAUNCH();
}

void Embedding(const int32_t* tokens, int rows, const bf16* table, int hidden, float* x,
               cudaStream_t stream) {
  if (rows == 0) return;
  EmbeddingKernel<<<rows, 256, 0, stream>>>(tokens, table, hidden, x);
  LEANK_MODEL_CHECK_LAUNCH();
}

void RmsNorm(const float* x, const int32_t* row_index, int rows, int hidden, const bf16* weight,
             float eps, bf16* out, cudaStream_t stream) {
  if (rows == 0) return;
  RmsNormKernel<<<rows, 256, 0, stream>>>(x, row_index, hidden, weight, eps, out);
  LEANK_MODEL_CHECK_LAUNCH();
}

void QkvRopeWrite(const float* qkv, const bf16* bias, const float* inv_freq, int rows,
                  int num_q_heads, const CacheMetaView& meta, const StepTables& tables, bf16* q_out,
                  bf16* full_layer, cudaStream_t stream) {
  if (rows == 0) return;
  QkvRopeWriteKernel<<<rows, 256, 0, stream>>>(qkv, bias, inv_freq, num_q_heads, meta, tables,
                                               q_out, full_layer);
  LEANK_MODEL_CHECK_LAUNCH();
}

void SiluMul(const bf16* gate_up, int rows, int inter, bf16* out, cudaStream_t stream) {
  if (rows == 0) return;
  SiluMulKernel<<<rows, 512, 0, stream>>>(gate_up, inter, out);
  LEANK_MODEL_CHECK_LAUNCH();
}

void Argmax(const float* logits, int rows, int vocab, int32_t* out, cudaStream_t stream) {
  if (rows == 0) return;
  ArgmaxKernel<<<rows, 1024, 0, stream>>>(logits, vocab, out);
  LEANK_MODEL_CHECK_LAUNCH();
}

}  // namespace leank::kernels::model
