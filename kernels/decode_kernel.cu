// Split-KV decode attention over the LeanK paged cache (plan: decode_plan.cc).
//
// One CTA (4 warps) = one DecodeItem: a token range of the full region (kdim = D) or
// of the pruned region (kdim = kept count of the head) of one (sequence, kv head).
// The G query heads of the kv head are the 16 rows of an mma tile (rows >= G are zero),
// so every K/V byte is read once for the whole group. Tokens stream through shared
// memory in tiles of 64 (cp.async, 3 stages); warp w takes tokens 16w..16w+15 of each
// tile with its own online softmax, and the 4 warps merge at the end. The CTA writes a
// normalized partial output and its log2-sum-exp; MergeKernel combines the slots.

#include <cuda_runtime.h>

#include <cfloat>

#include "kernels/internal.h"
#include "kernels/mma.cuh"

namespace leank::kernels::detail {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kStages = 3;
constexpr int kPad = 8;  // bf16 elements of row padding: row strides of an odd number of
                         // 16-byte units keep ldmatrix free of bank conflicts

template <int D>
struct DecodeSmem {
  static constexpr int kRow = D + kPad;                        // K and V row stride
  static constexpr int kStageElems = 2 * kTileTokens * kRow;   // K tile then V tile
  static constexpr int kQElems = kMaxGroup * kRow;
  static constexpr size_t kBytes = (size_t(kStages) * kStageElems + kQElems) * sizeof(__nv_bfloat16);
  static_assert(kWarps * kMaxGroup * (D + 2) * sizeof(float) <= kStages * kStageElems * 2,
                "merge scratch must fit in the pipeline buffers");
};

template <int D>
__global__ void __launch_bounds__(kThreads, 2) DecodeKernel(const DecodeParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  using Smem = DecodeSmem<D>;
  __nv_bfloat16* stages = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* q_s = stages + kStages * Smem::kStageElems;

  const DecodeItem item = p.items[blockIdx.x];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int H = p.num_kv_heads, G = p.group, B = p.block_size;
  const int kvh = item.kv_head;
  const bool pruned = item.region == kRegionPruned;
  const int kdim = pruned ? p.kept[kvh] : D;
  const int kstride = kdim + kPad;  // K rows in shared memory

  // Gather q: rows g < G are the group's query heads, kept channels only for pruned.
  {
    const __nv_bfloat16* qg = p.q + (size_t(item.seq) * H * G + size_t(kvh) * G) * D;
    const uint8_t* chan = p.channels + kvh * D;
    for (int i = tid; i < kMaxGroup * kdim; i += kThreads) {
      const int g = i / kdim, c = i - g * kdim;
      __nv_bfloat16 v = __float2bfloat16(0.f);
      if (g < G) v = qg[g * D + (pruned ? chan[c] : c)];
      q_s[g * kstride + c] = v;
    }
  }

  // Where region token `tok` lives.
  const int32_t* table =
      pruned ? p.pruned_idx + p.pruned_ptr[item.seq] : p.full_idx + p.full_ptr[item.seq];
  const int log2b = p.log2_block;
  const int64_t kv_stride = int64_t(B) * D;  // one head's [B][D] tile in a full block
  const int koff = pruned ? p.k_off[kvh] : 0, voff = pruned ? p.v_off[kvh] : 0;

  const int tok_begin = item.tok_begin, tok_end = item.tok_end;
  const int num_tiles = (tok_end - tok_begin + kTileTokens - 1) / kTileTokens;
  const int kchunks = kdim / 8;  // 16-byte chunks per K row

  auto load_tile = [&](int tile, int stage) {
    __nv_bfloat16* ks = stages + stage * Smem::kStageElems;
    __nv_bfloat16* vs = ks + kTileTokens * Smem::kRow;
    const int t0 = tok_begin + tile * kTileTokens;
    for (int i = tid; i < kTileTokens * kchunks; i += kThreads) {
      const int r = i / kchunks, c = i - r * kchunks;
      const int tok = t0 + r;
      const bool valid = tok < tok_end;
      const __nv_bfloat16* src = p.full;
      if (valid) {
        const int64_t blk = table[tok >> log2b];
        const int slot = tok & (B - 1);
        src = pruned ? p.pruned + blk * p.pruned_block_elems + koff + slot * kdim + c * 8
                     : p.full + (blk * 2 * H + kvh) * kv_stride + slot * D + c * 8;
      }
      CpAsync16(ks + r * kstride + c * 8, src, valid);
    }
    constexpr int vchunks = D / 8;
    for (int i = tid; i < kTileTokens * vchunks; i += kThreads) {
      const int r = i / vchunks, c = i % vchunks;
      const int tok = t0 + r;
      const bool valid = tok < tok_end;
      const __nv_bfloat16* src = p.full;
      if (valid) {
        const int64_t blk = table[tok >> log2b];
        const int slot = tok & (B - 1);
        src = pruned ? p.pruned + blk * p.pruned_block_elems + voff + slot * D + c * 8
                     : p.full + (blk * 2 * H + H + kvh) * kv_stride + slot * D + c * 8;
      }
      CpAsync16(vs + r * Smem::kRow + c * 8, src, valid);
    }
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_tiles) load_tile(s, s);
    CpAsyncCommit();
  }
  __syncthreads();  // q_s written

  // q as mma A fragments, kdim / 16 k-steps.
  const int g4 = lane >> 2, t4 = lane & 3;
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    if (ks * 16 < kdim) {
      const __nv_bfloat16* q0 = q_s + g4 * kstride + ks * 16 + 2 * t4;
      const __nv_bfloat16* q8 = q0 + 8 * kstride;
      qf[ks][0] = *reinterpret_cast<const uint32_t*>(q0);
      qf[ks][1] = *reinterpret_cast<const uint32_t*>(q8);
      qf[ks][2] = *reinterpret_cast<const uint32_t*>(q0 + 8);
      qf[ks][3] = *reinterpret_cast<const uint32_t*>(q8 + 8);
    }
  }

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  // ldmatrix lane roles: matrix mi = lane / 8, row rr = lane % 8.
  const int mi = lane >> 3, rr = lane & 7;

  for (int tile = 0; tile < num_tiles; ++tile) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();
    {
      const int next = tile + kStages - 1;
      if (next < num_tiles) load_tile(next, next % kStages);
      CpAsyncCommit();
    }
    const __nv_bfloat16* ks = stages + (tile % kStages) * Smem::kStageElems + warp * 16 * kstride;
    const __nv_bfloat16* vs = stages + (tile % kStages) * Smem::kStageElems +
                              kTileTokens * Smem::kRow + warp * 16 * Smem::kRow;
    const int wtok0 = tok_begin + tile * kTileTokens + warp * 16;
    if (wtok0 >= tok_end) continue;  // this warp's rows are all past the end

    // S = Q K^T for this warp's 16 tokens: two n8 tiles.
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kstep = 0; kstep < D / 16; ++kstep) {
      if (kstep * 16 < kdim) {
        uint32_t b[4];
        LdMatrixX4(b, ks + ((mi >> 1) * 8 + rr) * kstride + kstep * 16 + (mi & 1) * 8);
        MmaBf16(s[0], qf[kstep], b[0], b[1]);
        MmaBf16(s[1], qf[kstep], b[2], b[3]);
      }
    }
    // Online softmax over the two rows this thread holds (g4 and g4 + 8).
    float p_row[2][4];
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
      float v[4];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int tok = wtok0 + nt * 8 + 2 * t4 + j;
          v[nt * 2 + j] = tok < tok_end ? s[nt][ri * 2 + j] * p.scale_log2 : -INFINITY;
        }
      }
      float mx = QuadMax(fmaxf(fmaxf(v[0], v[1]), fmaxf(v[2], v[3])));
      const float m_new = fmaxf(m_run[ri], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m_run[ri] - m_use);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        p_row[ri][j] = exp2f(v[j] - m_use);
        sum += p_row[ri][j];
      }
      l_run[ri] = l_run[ri] * alpha + sum;
      m_run[ri] = m_new;
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        o[i][ri * 2] *= alpha;
        o[i][ri * 2 + 1] *= alpha;
      }
    }
    // P as the A fragment (k = the 16 tokens).
    uint32_t pa[4];
    pa[0] = PackBf16(p_row[0][0], p_row[0][1]);
    pa[1] = PackBf16(p_row[1][0], p_row[1][1]);
    pa[2] = PackBf16(p_row[0][2], p_row[0][3]);
    pa[3] = PackBf16(p_row[1][2], p_row[1][3]);
    // O += P V, V tiles through ldmatrix.trans, two n8 tiles (16 channels) per load.
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      LdMatrixX4Trans(b, vs + ((mi & 1) * 8 + rr) * Smem::kRow + dp * 16 + (mi >> 1) * 8);
      MmaBf16(o[2 * dp], pa, b[0], b[1]);
      MmaBf16(o[2 * dp + 1], pa, b[2], b[3]);
    }
  }
  CpAsyncWait<0>();
  __syncthreads();

  // Merge the 4 warps: scratch [warp][16 rows][D] f32, then m and l per row.
  float* scratch = reinterpret_cast<float*>(smem_raw);
  float* sm_m = scratch + kWarps * kMaxGroup * D;
  float* sm_l = sm_m + kWarps * kMaxGroup;
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    const float l = QuadSum(l_run[ri]);
    const int row = g4 + ri * 8;
    if (t4 == 0) {
      sm_m[warp * kMaxGroup + row] = m_run[ri];
      sm_l[warp * kMaxGroup + row] = l;
    }
    if (row < G) {
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        float* dst = scratch + (warp * kMaxGroup + row) * D + i * 8 + 2 * t4;
        dst[0] = o[i][ri * 2];
        dst[1] = o[i][ri * 2 + 1];
      }
    }
  }
  __syncthreads();
  for (int i = tid; i < G * D; i += kThreads) {
    const int row = i / D, d = i - row * D;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, sm_m[w * kMaxGroup + row]);
    float l = 0.f, acc = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float mw = sm_m[w * kMaxGroup + row];
      const float f = mw == -INFINITY ? 0.f : exp2f(mw - m);
      l += sm_l[w * kMaxGroup + row] * f;
      acc += scratch[(w * kMaxGroup + row) * D + d] * f;
    }
    p.partial_o[(size_t(item.slot) * G + row) * D + d] = l > 0.f ? acc / l : 0.f;
    if (d == 0) p.partial_lse[item.slot * G + row] = l > 0.f ? m + log2f(l) : -INFINITY;
  }
}

// out[seq][kvh * G + g][:] = log-sum-exp weighted sum of the slots of (seq, kvh).
template <int D>
__global__ void __launch_bounds__(128) MergeKernel(const DecodeParams p) {
  const int sh = blockIdx.x;  // seq * H + kvh
  const int G = p.group;
  const int begin = p.merge_ptr[sh], end = p.merge_ptr[sh + 1];
  for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
    const int g = i / D, d = i - g * D;
    float m = -INFINITY;
    for (int s = begin; s < end; ++s) m = fmaxf(m, p.partial_lse[s * G + g]);
    float acc = 0.f, l = 0.f;
    for (int s = begin; s < end; ++s) {
      const float lse = p.partial_lse[s * G + g];
      const float w = lse == -INFINITY ? 0.f : exp2f(lse - m);
      l += w;
      acc += w * p.partial_o[(size_t(s) * G + g) * D + d];
    }
    p.out[(size_t(sh) * G + g) * D + d] = __float2bfloat16(l > 0.f ? acc / l : 0.f);
  }
}

template <int D>
void Launch(const DecodeParams& p, int num_items, int num_seqs, cudaStream_t stream) {
  constexpr size_t smem = DecodeSmem<D>::kBytes;
  static bool configured = false;
  if (!configured) {
    LEANK_CUDA_CHECK(cudaFuncSetAttribute(DecodeKernel<D>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    configured = true;
  }
  if (num_items > 0) DecodeKernel<D><<<num_items, kThreads, smem, stream>>>(p);
  LEANK_CUDA_CHECK(cudaGetLastError());
  MergeKernel<D><<<num_seqs * p.num_kv_heads, 128, 0, stream>>>(p);
  LEANK_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void LaunchDecode(const DecodeParams& p, int head_dim, int num_items, int num_seqs,
                  cudaStream_t stream) {
  if (num_seqs == 0) return;
  switch (head_dim) {
    case 64:
      Launch<64>(p, num_items, num_seqs, stream);
      break;
    case 128:
      Launch<128>(p, num_items, num_seqs, stream);
      break;
    default:
      std::fprintf(stderr, "LaunchDecode: head_dim %d not built\n", head_dim);
      std::abort();
  }
}

}  // namespace leank::kernels::detail
