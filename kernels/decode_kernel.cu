// Split-KV decode attention over the LeanK paged cache (plan: decode_plan.cc).
//
// One CTA (4 warps) = one DecodeItem: a token range of the full region (kdim = D) or
// of the pruned region (kdim = kept count of the head) of one (sequence, kv head).
// The G query heads of the kv head are the 16 rows of an mma tile (rows >= G are zero),
// so every K/V byte is read once for the whole group. Tokens stream through shared
// memory in tiles of 64 (3 stages), loaded either by thread 0 as TMA copies of whole
// blocks (swizzled rows of 128, 64 or 32 bytes: DecodeTmaMaps) or by every thread as
// 16-byte cp.async copies into padded rows; warp w takes tokens 16w..16w+15 of each
// tile with its own online softmax, and the 4 warps merge at the end. The CTA writes a
// normalized partial output and its log2-sum-exp; the last CTA of a (sequence, kv head)
// combines the slots (a counter in global memory), so decode is a single launch.

#include <cuda_runtime.h>

#include <cfloat>

#include "kernels/internal.h"
#include "kernels/mma.cuh"
#include "kernels/tma.cuh"

namespace leank::kernels::detail {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
#ifndef LEANK_DECODE_STAGES
#define LEANK_DECODE_STAGES 3
#endif
constexpr int kStages = LEANK_DECODE_STAGES;
constexpr int kMinBlocks = kStages <= 2 ? 3 : 2;  // CTAs per SM the shared memory allows
constexpr int kPad = 8;  // bf16 elements of row padding: row strides of an odd number of
                         // 16-byte units keep ldmatrix free of bank conflicts

template <int D>
struct DecodeSmem {
  static constexpr int kRow = D + kPad;                       // K and V row stride
  static constexpr int kStageElems = 2 * kTileTokens * kRow;  // K tile then V tile
  static constexpr int kQElems = kMaxGroup * kRow;
  // The TMA path's stage barriers follow q; it aligns the whole layout to 1024 bytes
  // (the swizzle atom), hence kTmaBytes.
  static constexpr size_t kBarOffset =
      (size_t(kStages) * kStageElems + kQElems) * sizeof(__nv_bfloat16);
  static constexpr size_t kBytes = kBarOffset + kStages * sizeof(uint64_t);
  static constexpr size_t kTmaBytes = kBytes + 1024;
  static_assert(kBarOffset % 8 == 0);
  static_assert(kStageElems * sizeof(__nv_bfloat16) % 1024 == 0 &&
                    kTileTokens * kRow * sizeof(__nv_bfloat16) % 1024 == 0,
                "TMA stages start on swizzle atoms");
  static_assert(kWarps * kMaxGroup * (D + 2) * sizeof(float) <= kStages * kStageElems * 2,
                "warp-merge scratch must fit in the pipeline buffers");
  static_assert((2 * kMaxSplit + 2) * kMaxGroup * sizeof(float) <= kStages * kStageElems * 2,
                "slot-merge scratch must fit in the pipeline buffers");
};

template <int D, bool kTma>
__device__ __forceinline__ void DecodeBody(const DecodeParams& p, const DecodeTmaMaps* maps) {
  extern __shared__ __align__(16) unsigned char smem_dyn[];
  using Smem = DecodeSmem<D>;
  unsigned char* smem_raw = smem_dyn;
  if constexpr (kTma) smem_raw += (1024 - (SmemAddr(smem_dyn) & 1023)) & 1023;
  __nv_bfloat16* stages = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* q_s = stages + kStages * Smem::kStageElems;
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem_raw + Smem::kBarOffset);

  PdlTrigger();  // the next kernel may launch once every CTA of this grid has started
  const DecodeItem item = p.items[blockIdx.x];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int H = p.num_kv_heads, G = p.group, B = p.block_size;
  const int kvh = item.kv_head;
  const bool pruned = item.region == kRegionPruned;
  const int kdim = pruned ? p.kept[kvh] : D;
  const int kstride = kdim + kPad;  // K rows in shared memory

  // Row `slot` of block `blk` of this region starts at base + blk * blk_stride +
  // slot * row_stride (K: row_stride = kdim, V: D): one formula for both regions.
  const int32_t* table =
      pruned ? p.pruned_idx + p.pruned_ptr[item.seq] : p.full_idx + p.full_ptr[item.seq];
  const int log2b = p.log2_block;
  const int64_t blk_stride = pruned ? p.pruned_block_elems : int64_t(2) * H * B * D;
  const __nv_bfloat16* kbase = pruned ? p.pruned + p.k_off[kvh] : p.full + int64_t(kvh) * B * D;
  const __nv_bfloat16* vbase = pruned ? p.pruned + p.v_off[kvh] : p.full + int64_t(H + kvh) * B * D;

  const int tok_begin = item.tok_begin, tok_end = item.tok_end;
  const int num_tiles = (tok_end - tok_begin + kTileTokens - 1) / kTileTokens;
  // Each thread copies one 16-byte column of every k_step-th K row (and likewise V):
  // the divisions happen once per CTA, not per chunk.
  const int kchunks = kdim / 8;
  const int k_step = kThreads / kchunks, k_col = tid % kchunks, k_row = tid / kchunks;
  constexpr int kVChunks = D / 8, kVStep = kThreads / kVChunks;
  const int v_col = tid % kVChunks, v_row = tid / kVChunks;
  const uint64_t policy = EvictFirstPolicy();  // K/V are read once per step

  auto load_tile = [&](int tile, int stage) {
    __nv_bfloat16* ks = stages + stage * Smem::kStageElems;
    __nv_bfloat16* vs = ks + kTileTokens * Smem::kRow;
    const int t0 = tok_begin + tile * kTileTokens;
    if (k_row < k_step) {
      for (int r = k_row; r < kTileTokens; r += k_step) {
        const int tok = t0 + r;
        const bool valid = tok < tok_end;
        const __nv_bfloat16* src = p.full;
        if (valid)
          src = kbase + table[tok >> log2b] * blk_stride + (tok & (B - 1)) * kdim + k_col * 8;
        CpAsync16Stream(ks + r * kstride + k_col * 8, src, valid, policy);
      }
    }
#pragma unroll
    for (int j = 0; j < kTileTokens / kVStep; ++j) {
      const int r = v_row + j * kVStep;
      const int tok = t0 + r;
      const bool valid = tok < tok_end;  // rows past the end are zero-filled: P = 0 there
      const __nv_bfloat16* src = p.full;
      if (valid) src = vbase + table[tok >> log2b] * blk_stride + (tok & (B - 1)) * D + v_col * 8;
      CpAsync16Stream(vs + r * Smem::kRow + v_col * 8, src, valid, policy);
    }
  };

  // TMA: shared-memory layout of one block's K rows of this item (kdim = 64a + 32b + 16c
  // channels): a parts of 64 channels as B rows of 128 bytes (128-byte swizzle), then
  // the 32-channel part as B rows of 64 bytes (64-byte swizzle), then the 16-channel part
  // as B rows of 32 bytes (32-byte swizzle); each block's region starts on a 1024-byte
  // swizzle atom. V blocks (and full-region K) are D / 64 parts of 128-byte rows.
  const int k_a = kdim >> 6, k_b = (kdim >> 5) & 1, k_c = (kdim >> 4) & 1;
  const int kblk_bytes = (B * kdim * 2 + 1023) & ~1023, vblk_bytes = B * D * 2;
  // The tile's blocks that hold tokens before tok_end, completing on the stage's barrier.
  // Tiles start block-aligned (items split at multiples of kTileTokens), so only the
  // item's last tile can be partial.
  auto issue_tile = [&](int tile, int stage) {
    unsigned char* ks = reinterpret_cast<unsigned char*>(stages + stage * Smem::kStageElems);
    unsigned char* vs = ks + kTileTokens * Smem::kRow * 2;
    const int t0 = tok_begin + tile * kTileTokens;
    const int nb = min(kTileTokens >> log2b, (tok_end - t0 + B - 1) >> log2b);
    uint64_t* bar = &bars[stage];
    MbarArriveExpectTx(bar, uint32_t(nb) * B * (kdim + D) * sizeof(__nv_bfloat16));
    const int32_t* tb = table + (t0 >> log2b);
    for (int j = 0; j < nb; ++j) {
      const int blk = tb[j];
      unsigned char* kd = ks + j * kblk_bytes;
      unsigned char* vd = vs + j * vblk_bytes;
      if (pruned) {
        if (k_a) TmaLoad4(kd, &maps->k64[kvh], bar, 0, 0, 0, blk, policy);
        if (k_b) TmaLoad3(kd + k_a * B * 128, &maps->k32[kvh], bar, 0, 0, blk, policy);
        if (k_c)
          TmaLoad3(kd + k_a * B * 128 + k_b * B * 64, &maps->k16[kvh], bar, 0, 0, blk, policy);
        TmaLoad4(vd, &maps->v[kvh], bar, 0, 0, 0, blk, policy);
      } else {
        TmaLoad5(kd, &maps->full, bar, 0, 0, 0, kvh, blk, policy);
        TmaLoad5(vd, &maps->full, bar, 0, 0, 0, H + kvh, blk, policy);
      }
    }
  };

  if (kTma && tid == 0) {
    for (int s = 0; s < kStages; ++s) MbarInit(&bars[s], 1);
    FenceMbarInit();
  }
  // Everything above reads only the plan and the metadata, uploaded before the step's
  // first kernel. q and the KV cache come from earlier kernels, and the partials and
  // counters are shared with the previous launch: wait for them (programmatic launch).
  PdlWait();
  if constexpr (kTma) {
    if (tid == 0) {
      for (int s = 0; s < kStages - 1 && s < num_tiles; ++s) issue_tile(s, s);
    }
  } else {
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < num_tiles) load_tile(s, s);
      CpAsyncCommit();
    }
  }
  // Gather q while the first tiles are in flight: rows g < G are the group's query
  // heads, kept channels only for the pruned region.
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
  // Byte offsets in a stage of this lane's ldmatrix row for every k-step (K) and channel
  // pair (V). TMA: the warp's 16 tokens sit in one block (B >= 16), block slot wb of the
  // tile, rows r0..r0+15; a 16-byte chunk cc of row r of a swizzled part with rows of
  // 128 / 64 / 32 bytes sits at chunk cc ^ (r & 7) / cc ^ ((r >> 1) & 3) / cc ^ ((r >> 2) & 1).
  int k_off[D / 16], v_off[D / 16];
  const int wb = (warp * 16) >> log2b, r0 = (warp * 16) & (B - 1);
  if constexpr (kTma) {
    const int kr = r0 + (mi >> 1) * 8 + rr, vr = r0 + (mi & 1) * 8 + rr;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const int c = ks * 16 + (mi & 1) * 8;  // first K channel (of the kept ones) of the chunk
      int off;
      if (c < 64 * k_a) {
        off = ((c >> 6) * B + kr) * 128 + ((((c & 63) >> 3) ^ (kr & 7)) << 4);
      } else if (c < 64 * k_a + 32 * k_b) {
        off = k_a * B * 128 + kr * 64 + ((((c - 64 * k_a) >> 3) ^ ((kr >> 1) & 3)) << 4);
      } else {
        off = k_a * B * 128 + k_b * B * 64 + kr * 32 +
              ((((c - 64 * k_a - 32 * k_b) >> 3) ^ ((kr >> 2) & 1)) << 4);
      }
      k_off[ks] = wb * kblk_bytes + off;
      const int vc = ks * 16 + (mi >> 1) * 8;
      v_off[ks] = kTileTokens * Smem::kRow * 2 + wb * vblk_bytes + ((vc >> 6) * B + vr) * 128 +
                  ((((vc & 63) >> 3) ^ (vr & 7)) << 4);
    }
  } else {
    const int k_lane = ((warp * 16 + (mi >> 1) * 8 + rr) * kstride + (mi & 1) * 8) * 2;
    const int v_lane =
        (kTileTokens * Smem::kRow + (warp * 16 + (mi & 1) * 8 + rr) * Smem::kRow + (mi >> 1) * 8) *
        2;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      k_off[ks] = k_lane + ks * 32;
      v_off[ks] = v_lane + ks * 32;
    }
  }

  for (int tile = 0; tile < num_tiles; ++tile) {
    if constexpr (kTma) {
      MbarWait(&bars[tile % kStages], (tile / kStages) & 1);
      __syncthreads();  // every warp is done with tile - 1: its stage can be refilled
      const int next = tile + kStages - 1;
      if (tid == 0 && next < num_tiles) issue_tile(next, next % kStages);
    } else {
      CpAsyncWait<kStages - 2>();
      __syncthreads();
      const int next = tile + kStages - 1;
      if (next < num_tiles) load_tile(next, next % kStages);
      CpAsyncCommit();
    }
    const unsigned char* stage =
        reinterpret_cast<const unsigned char*>(stages + (tile % kStages) * Smem::kStageElems);
    const int wtok0 = tok_begin + tile * kTileTokens + warp * 16;
    if (wtok0 >= tok_end) continue;  // this warp's rows are all past the end
    if (kTma && wtok0 + 16 > tok_end) {
      // V rows past the end hold other tokens' values or stale data: zero them so that
      // P = 0 there contributes 0 (K rows need nothing: their scores are masked).
      // A row's chunks are permuted within the row only, so zero all of them.
      const int valid = tok_end - wtok0;
      unsigned char* vs =
          const_cast<unsigned char*>(stage) + kTileTokens * Smem::kRow * 2 + wb * vblk_bytes;
      for (int i = lane; i < (16 - valid) * kVChunks; i += 32) {
        const int r = r0 + valid + i / kVChunks, c = i % kVChunks;
        *reinterpret_cast<uint4*>(vs + ((c >> 3) * B + r) * 128 + (c & 7) * 16) =
            make_uint4(0, 0, 0, 0);
      }
      __syncwarp();
    }

    // S = Q K^T for this warp's 16 tokens: two n8 tiles.
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kstep = 0; kstep < D / 16; ++kstep) {
      if (kstep * 16 < kdim) {
        uint32_t b[4];
        LdMatrixX4(b, stage + k_off[kstep]);
        MmaBf16(s[0], qf[kstep], b[0], b[1]);
        MmaBf16(s[1], qf[kstep], b[2], b[3]);
      }
    }
    // Online softmax over the two rows this thread holds (g4 and g4 + 8).
    float p_row[2][4], alphas[2];
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
      const float alpha = FastExp2(m_run[ri] - m_use);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        p_row[ri][j] = FastExp2(v[j] - m_use);
        sum += p_row[ri][j];
      }
      l_run[ri] = l_run[ri] * alpha + sum;
      m_run[ri] = m_new;
      alphas[ri] = alpha;
    }
    // The running max rarely moves after the first tiles: skip the rescale then.
    if (__any_sync(0xffffffffu, alphas[0] != 1.f || alphas[1] != 1.f)) {
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        o[i][0] *= alphas[0];
        o[i][1] *= alphas[0];
        o[i][2] *= alphas[1];
        o[i][3] *= alphas[1];
      }
    }
    // P as the A fragment (k = the 16 tokens); the lo part is used only with
    // LEANK_ATTN_SPLIT_P (mma.cuh).
    uint32_t pa[4], pl[4];
    SplitBf16(p_row[0][0], p_row[0][1], pa[0], pl[0]);
    SplitBf16(p_row[1][0], p_row[1][1], pa[1], pl[1]);
    SplitBf16(p_row[0][2], p_row[0][3], pa[2], pl[2]);
    SplitBf16(p_row[1][2], p_row[1][3], pa[3], pl[3]);
    // O += P V, V tiles through ldmatrix.trans, two n8 tiles (16 channels) per load.
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      LdMatrixX4Trans(b, stage + v_off[dp]);
      MmaBf16(o[2 * dp], pa, b[0], b[1]);
      MmaBf16(o[2 * dp + 1], pa, b[2], b[3]);
      if (LEANK_ATTN_SPLIT_P) {
        MmaBf16(o[2 * dp], pl, b[0], b[1]);
        MmaBf16(o[2 * dp + 1], pl, b[2], b[3]);
      }
    }
  }
  if constexpr (!kTma) CpAsyncWait<0>();  // (TMA: every tile was waited for in the loop)
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
  const int sh = item.seq * H + kvh;
  const int slot_begin = p.merge_ptr[sh], num_slots = p.merge_ptr[sh + 1] - slot_begin;
  __nv_bfloat16* out = p.out + size_t(sh) * G * D;
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
    const float val = l > 0.f ? acc / l : 0.f;
    if (num_slots == 1) {  // the whole (seq, kv head) in one CTA: final output
      out[i] = __float2bfloat16(val);
    } else {
      p.partial_o[(size_t(item.slot) * G + row) * D + d] = val;
      if (d == 0) p.partial_lse[item.slot * G + row] = l > 0.f ? m + log2f(l) : -INFINITY;
    }
  }
  if (num_slots == 1) return;

  // The last CTA of this (seq, kv head) to finish merges every slot (no second launch):
  // release our partials, count, and the CTA that brings the count to num_slots reads them.
  __shared__ int is_last;
  __threadfence();
  __syncthreads();
  if (tid == 0) is_last = atomicAdd(&p.counters[sh], 1) == num_slots - 1;
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  float* w_s = scratch;                             // [num_slots][G] lse, then weights
  float* gm = scratch + kMaxSplit * 2 * kMaxGroup;  // [G] max, [G] sum
  for (int i = tid; i < num_slots * G; i += kThreads)
    w_s[i] = __ldcg(p.partial_lse + size_t(slot_begin) * G + i);
  __syncthreads();
  if (tid < G) {
    float m = -INFINITY, l = 0.f;
    for (int s = 0; s < num_slots; ++s) m = fmaxf(m, w_s[s * G + tid]);
    for (int s = 0; s < num_slots; ++s) {
      const float lse = w_s[s * G + tid];
      l += lse == -INFINITY ? 0.f : exp2f(lse - m);
    }
    gm[tid] = m;
    gm[kMaxGroup + tid] = l;
  }
  __syncthreads();
  for (int i = tid; i < num_slots * G; i += kThreads) {
    const int g = i % G;
    const float lse = w_s[i];
    w_s[i] =
        lse == -INFINITY || gm[kMaxGroup + g] == 0.f ? 0.f : exp2f(lse - gm[g]) / gm[kMaxGroup + g];
  }
  __syncthreads();
  // float4 columns, 8 slots in flight per thread: the partials sit in L2.
  for (int i = tid * 4; i < G * D; i += kThreads * 4) {
    const int g = i / D;
    const float* po = p.partial_o + size_t(slot_begin) * G * D + i;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    int s = 0;
    for (; s + 8 <= num_slots; s += 8) {
      float4 v[8];
#pragma unroll
      for (int j = 0; j < 8; ++j)
        v[j] = __ldcg(reinterpret_cast<const float4*>(po + size_t(s + j) * G * D));
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float w = w_s[(s + j) * G + g];
        acc.x += w * v[j].x;
        acc.y += w * v[j].y;
        acc.z += w * v[j].z;
        acc.w += w * v[j].w;
      }
    }
    for (; s < num_slots; ++s) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(po + size_t(s) * G * D));
      const float w = w_s[s * G + g];
      acc.x += w * v.x;
      acc.y += w * v.y;
      acc.z += w * v.z;
      acc.w += w * v.w;
    }
    *reinterpret_cast<__nv_bfloat162*>(out + i) = __floats2bfloat162_rn(acc.x, acc.y);
    *reinterpret_cast<__nv_bfloat162*>(out + i + 2) = __floats2bfloat162_rn(acc.z, acc.w);
  }
  if (tid == 0) p.counters[sh] = 0;  // ready for the next launch
}

template <int D>
__global__ void __launch_bounds__(kThreads, kMinBlocks) DecodeKernel(const DecodeParams p) {
  DecodeBody<D, false>(p, nullptr);
}
template <int D>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    DecodeKernelTma(const DecodeParams p, const __grid_constant__ DecodeTmaMaps maps) {
  DecodeBody<D, true>(p, &maps);
}

template <int D>
void Configure() {
  static bool configured = false;
  if (!configured) {
    LEANK_CUDA_CHECK(cudaFuncSetAttribute(
        DecodeKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, DecodeSmem<D>::kBytes));
    LEANK_CUDA_CHECK(cudaFuncSetAttribute(
        DecodeKernelTma<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, DecodeSmem<D>::kTmaBytes));
    configured = true;
  }
}

template <int D>
int BlocksPerSm() {
  static const int blocks = [] {
    Configure<D>();
    int n = 0;
    LEANK_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, DecodeKernel<D>, kThreads,
                                                                   DecodeSmem<D>::kBytes));
    return n > 0 ? n : 1;
  }();
  return blocks;
}

template <int D>
void Launch(const DecodeParams& p, const DecodeTmaMaps* maps, int num_items, int num_seqs, bool pdl,
            cudaStream_t stream) {
  constexpr size_t smem = DecodeSmem<D>::kBytes;
  Configure<D>();
  if (num_items > 0) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(num_items);
    cfg.blockDim = dim3(kThreads);
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = pdl ? 1 : 0;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (maps != nullptr) {
      cfg.dynamicSmemBytes = DecodeSmem<D>::kTmaBytes;
      LEANK_CUDA_CHECK(cudaLaunchKernelEx(&cfg, DecodeKernelTma<D>, p, *maps));
    } else {
      cfg.dynamicSmemBytes = smem;
      LEANK_CUDA_CHECK(cudaLaunchKernelEx(&cfg, DecodeKernel<D>, p));
    }
  }
  LEANK_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

int DecodeBlocksPerSm(int head_dim) {
  return head_dim == 64 ? BlocksPerSm<64>() : BlocksPerSm<128>();
}

void LaunchDecode(const DecodeParams& p, const DecodeTmaMaps* maps, int head_dim, int num_items,
                  int num_seqs, bool pdl, cudaStream_t stream) {
  if (num_seqs == 0) return;
  switch (head_dim) {
    case 64:
      Launch<64>(p, maps, num_items, num_seqs, pdl, stream);
      break;
    case 128:
      Launch<128>(p, maps, num_items, num_seqs, pdl, stream);
      break;
    default:
      std::fprintf(stderr, "LaunchDecode: head_dim %d not built\n", head_dim);
      std::abort();
  }
}

}  // namespace leank::kernels::detail
