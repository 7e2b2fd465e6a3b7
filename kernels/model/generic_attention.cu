// Generic paged attention and compaction: any head_dim (<= 256) and group size, the
// exact semantics of cache/README.md, resolved key by key through the pre-compaction
// tables like cache/reference.cc. Used where the fast kernels (kernels/attention.h)
// have no instantiation (tiny test models, head_dim 16) and as a fallback for prefill.
// One CTA per (query row, q head): simple, correct, not fast.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "kernels/model/internal.cuh"
#include "kernels/model/ops.h"

namespace leank::kernels::model {
namespace {

constexpr int kThreads = 128;  // keys per tile = threads
constexpr int kMaxDim = 256;

__device__ __forceinline__ int64_t MiddleTokens(const CacheMetaView& m, int64_t n) {
  if (m.dense) return 0;
  const int64_t rest = n - m.sink - m.recent;
  return rest <= 0 ? 0 : m.block_size * (rest / m.block_size);
}

__global__ void __launch_bounds__(kThreads)
    GenericAttentionKernel(const bf16* q, int row_begin, int num_q_heads, int layer,
                           CacheMetaView meta, StepTables tables, const bf16* full_layer,
                           const bf16* pruned_layer, int64_t pruned_block_elems, float scale,
                           bf16* out) {
  const int r = row_begin + blockIdx.x, qh = blockIdx.y;
  const int H = meta.num_kv_heads, D = meta.head_dim, B = meta.block_size, S = meta.sink;
  const int h = qh / (num_q_heads / H);
  const int kept = meta.kept[layer * H + h];
  const uint8_t* chan = meta.channels + (int64_t(layer) * H + h) * D;
  const int k_off = meta.k_off[layer * H + h], v_off = meta.v_off[layer * H + h];
  const StepSeq s = tables.seqs[tables.row_seq[r]];
  const int pos = s.start_pos + (r - s.row_begin);
  const int64_t mid_end = S + MiddleTokens(meta, int64_t(pos) + 1);  // keys in [S, mid_end) pruned

  __shared__ float qs[kMaxDim], qg[kMaxDim];
  __shared__ float p[kThreads];
  __shared__ const bf16* vptr[kThreads];
  const bf16* qr = q + (int64_t(r) * num_q_heads + qh) * D;
  for (int i = threadIdx.x; i < D; i += kThreads) qs[i] = __bfloat162float(qr[i]);
  __syncthreads();
  for (int i = threadIdx.x; i < kept; i += kThreads) qg[i] = qs[chan[i]];
  __syncthreads();

  float m = -INFINITY, l = 0, acc0 = 0, acc1 = 0;
  const int num_keys = pos + 1;
  for (int t0 = 0; t0 < num_keys; t0 += kThreads) {
    const int j = t0 + threadIdx.x;
    float score = -INFINITY;
    const bf16* vp = nullptr;
    if (j < num_keys) {
      const bool middle = j >= S && j < mid_end;
      if (!(middle && kept == 0)) {
        float dot = 0;
        if (j >= S && j < S + s.middle_before) {  // compacted: pruned tile row
          const int64_t blk = tables.pruned_idx[s.pruned_begin + (j - S) / B];
          const int slot = (j - S) % B;
          const bf16* base = pruned_layer + blk * pruned_block_elems;
          const bf16* kr = base + k_off + int64_t(slot) * kept;
          for (int c = 0; c < kept; ++c) dot += qg[c] * __bfloat162float(kr[c]);
          vp = base + v_off + int64_t(slot) * D;
        } else {
          int table_pos, slot;
          if (j < S) {
            table_pos = j / B;
            slot = j % B;
          } else {
            const int rel = j - S - s.middle_before;
            table_pos = S / B + rel / B;
            slot = rel % B;
          }
          const int64_t blk = tables.full_idx[s.full_begin + table_pos];
          const bf16* kr = full_layer + (((blk * 2 + 0) * H + h) * B + slot) * int64_t(D);
          if (middle) {
            for (int c = 0; c < kept; ++c) dot += qg[c] * __bfloat162float(kr[chan[c]]);
          } else {
            for (int c = 0; c < D; ++c) dot += qs[c] * __bfloat162float(kr[c]);
          }
          vp = full_layer + (((blk * 2 + 1) * H + h) * B + slot) * int64_t(D);
        }
        score = dot * scale;
      }
    }
    const float tile_max = BlockMax(score);
    if (tile_max == -INFINITY) continue;  // uniform across the block
    const float m_new = fmaxf(m, tile_max);
    const float rescale = expf(m - m_new);  // 0 when m was -inf
    const float e = score == -INFINITY ? 0.0f : expf(score - m_new);
    p[threadIdx.x] = e;
    vptr[threadIdx.x] = vp;
    const float tile_sum = BlockSum(e);  // its barriers also publish p and vptr
    l = l * rescale + tile_sum;
    m = m_new;
    acc0 *= rescale;
    acc1 *= rescale;
    const int n = min(kThreads, num_keys - t0);
    for (int jj = 0; jj < n; ++jj) {
      const float w = p[jj];
      if (w == 0.0f) continue;
      const bf16* v = vptr[jj];
      if (threadIdx.x < D) acc0 += w * __bfloat162float(v[threadIdx.x]);
      if (threadIdx.x + kThreads < D) acc1 += w * __bfloat162float(v[threadIdx.x + kThreads]);
    }
    __syncthreads();  // p / vptr are rewritten by the next tile
  }
  bf16* o = out + (int64_t(r) * num_q_heads + qh) * D;
  const float inv = l > 0 ? 1.0f / l : 0.0f;
  if (threadIdx.x < D) o[threadIdx.x] = __float2bfloat16(acc0 * inv);
  if (threadIdx.x + kThreads < D) o[threadIdx.x + kThreads] = __float2bfloat16(acc1 * inv);
}

__global__ void GenericCompactKernel(const int32_t* jobs, int layer, CacheMetaView meta,
                                     const bf16* full_layer, bf16* pruned_layer,
                                     int64_t pruned_block_elems) {
  const int H = meta.num_kv_heads, D = meta.head_dim, B = meta.block_size;
  const int64_t src_blk = jobs[2 * blockIdx.x], dst_blk = jobs[2 * blockIdx.x + 1];
  const bf16* src = full_layer + src_blk * 2 * H * B * int64_t(D);
  bf16* dst = pruned_layer + dst_blk * pruned_block_elems;
  for (int h = 0; h < H; ++h) {
    const int kept = meta.kept[layer * H + h];
    if (kept == 0) continue;
    const uint8_t* chan = meta.channels + (int64_t(layer) * H + h) * D;
    const bf16* k = src + int64_t(h) * B * D;
    const bf16* v = src + int64_t(H + h) * B * D;
    bf16* kd = dst + meta.k_off[layer * H + h];
    bf16* vd = dst + meta.v_off[layer * H + h];
    for (int i = threadIdx.x; i < B * kept; i += blockDim.x) {
      kd[i] = k[(i / kept) * D + chan[i % kept]];
    }
    for (int i = threadIdx.x; i < B * D; i += blockDim.x) vd[i] = v[i];
  }
}

}  // namespace

void GenericAttention(const bf16* q, int row_begin, int num_rows, int num_q_heads, int layer,
                      const CacheMetaView& meta, const StepTables& tables, const bf16* full_layer,
                      const bf16* pruned_layer, int64_t pruned_block_elems, float scale, bf16* out,
                      cudaStream_t stream) {
  if (num_rows == 0) return;
  if (meta.head_dim > kMaxDim) {
    std::fprintf(stderr, "GenericAttention: head_dim %d > %d\n", meta.head_dim, kMaxDim);
    std::abort();
  }
  GenericAttentionKernel<<<dim3(num_rows, num_q_heads), kThreads, 0, stream>>>(
      q, row_begin, num_q_heads, layer, meta, tables, full_layer, pruned_layer, pruned_block_elems,
      scale, out);
  LEANK_MODEL_CHECK_LAUNCH();
}

void GenericCompact(const int32_t* jobs, int num_jobs, int layer, const CacheMetaView& meta,
                    const bf16* full_layer, bf16* pruned_layer, int64_t pruned_block_elems,
                    cudaStream_t stream) {
  if (num_jobs == 0 || meta.dense) return;
  GenericCompactKernel<<<num_jobs, 256, 0, stream>>>(jobs, layer, meta, full_layer, pruned_layer,
                                                     pruned_block_elems);
  LEANK_MODEL_CHECK_LAUNCH();
}

}  // namespace leank::kernels::model
