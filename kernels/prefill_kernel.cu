// Chunked-prefill attention over the LeanK paged cache, causal, GQA, mma.sync bf16.
//
// CTA = (sequence, kv head, query tile): 64 mma rows = (query, group head) pairs, 16 per
// warp, FlashAttention-2 style (each warp owns its rows over every key). Keys come in
// two phases:
//   1. pruned middle blocks [S, S + middle_before): middle for every query of the chunk,
//      so q is gathered by the head's kept channels (skipped when the head keeps none);
//   2. full blocks (sink, then recent and this chunk's own tokens): full q.k, except keys
//      that are middle for a given query (S + middle_before <= j < S + M(i + 1)), which
//      use q with the non-kept channels zeroed (a second mma pass, only on the tiles that
//      hold such keys) and are skipped for heads with 0 kept channels.
// K/V tiles of kKeys (32) tokens stream through shared memory with cp.async (2 stages);
// short tiles keep registers and shared memory low enough for 3 CTAs (12 warps) per SM.

#include <cuda_runtime.h>

#include "kernels/internal.h"
#include "kernels/mma.cuh"

namespace leank::kernels::detail {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 64;  // mma rows per CTA
constexpr int kStages = 2;
constexpr int kPad = 8;
#ifndef LEANK_PREFILL_KEYS
#define LEANK_PREFILL_KEYS 32
#endif
constexpr int kKeys = LEANK_PREFILL_KEYS;  // keys per pipeline tile: 16, 32 or 64
static_assert(kKeys == 16 || kKeys == 32 || kKeys == 64, "kKeys: 16, 32 or 64");
// CTAs per SM that registers and shared memory allow (head_dim 128).
constexpr int kMinBlocks = kKeys == 16 ? 4 : kKeys == 32 ? 3 : 2;

template <int D>
struct PrefillSmem {
  static constexpr int kRow = D + kPad;
  static constexpr int kStageElems = 2 * kKeys * kRow;
  static constexpr int kQElems = kRows * kRow;
  // stages, q (full or gathered), q masked
  static constexpr size_t kBytes = (size_t(kStages) * kStageElems + 2 * kQElems) * 2;
};

__device__ __forceinline__ int MiddleOf(int n, int S, int W, int B, bool dense) {
  const int rest = n - S - W;
  return dense || rest <= 0 ? 0 : B * (rest / B);
}

template <int D>
__global__ void __launch_bounds__(kThreads, kMinBlocks) PrefillKernel(const PrefillParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  using Smem = PrefillSmem<D>;
  __nv_bfloat16* stages = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* q_s = stages + kStages * Smem::kStageElems;
  __nv_bfloat16* qm_s = q_s + Smem::kQElems;

  const PrefillTile tile = p.tiles[blockIdx.x];
  const PrefillSeqInfo si = p.seqs[tile.seq];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g4 = lane >> 2, t4 = lane & 3, mi = lane >> 3, rr = lane & 7;
  const int H = p.num_kv_heads, G = p.group, B = p.block_size, S = p.sink;
  const int kvh = tile.kv_head;
  const bool dense = p.dense != 0;
  const int kept = p.kept[kvh];
  const int Mb = si.middle_before;
  const int qt = kRows / G;  // queries per CTA
  const uint8_t* chan = p.channels + kvh * D;

  // Rows this thread holds in mma C fragments: warp * 16 + g4 (+ 8).
  int row_pos[2], row_bound[2];
  bool row_ok[2];
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    const int r = warp * 16 + g4 + ri * 8;
    const int qi = tile.q_begin + r / G;
    row_ok[ri] = r < qt * G && qi < tile.q_end;
    row_pos[ri] = si.start_pos + qi;
    row_bound[ri] = S + MiddleOf(row_pos[ri] + 1, S, p.recent, B, dense);  // middle: [S, bound)
  }
  const int last_pos = si.start_pos + tile.q_end - 1;
  const int last_bound = S + MiddleOf(last_pos + 1, S, p.recent, B, dense);

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  // Fills q_s (kdim channels: gathered or all) and, for phase 2, qm_s (kept only).
  auto load_q = [&](int kdim, bool gather, bool masked) {
    __syncthreads();
    for (int i = tid; i < kRows * kdim; i += kThreads) {
      const int r = i / kdim, c = i - r * kdim;
      const int qi = tile.q_begin + r / G;
      float v = 0.f;
      if (r < qt * G && qi < tile.q_end) {
        const __nv_bfloat16 x =
            p.q[(size_t(si.q_offset + qi) * H * G + kvh * G + r % G) * D + (gather ? chan[c] : c)];
        v = __bfloat162float(x);
      }
      q_s[r * Smem::kRow + c] = __float2bfloat16(v);
      if (masked) qm_s[r * Smem::kRow + c] = __float2bfloat16(0.f);
    }
    if (masked) {
      __syncthreads();
      for (int i = tid; i < kRows * kept; i += kThreads) {
        const int r = i / kept, c = chan[i - r * kept];
        qm_s[r * Smem::kRow + c] = q_s[r * Smem::kRow + c];
      }
    }
    __syncthreads();
  };

  // One phase over `ntok` region tokens. pos(t): logical position of region token t.
  auto run_phase = [&](bool pruned_phase, int ntok) {
    const int kdim = pruned_phase ? kept : D;
    const int32_t* table =
        pruned_phase ? p.pruned_idx + p.pruned_ptr[tile.seq] : p.full_idx + p.full_ptr[tile.seq];
    const int64_t blk_stride = pruned_phase ? p.pruned_block_elems : int64_t(2) * H * B * D;
    const __nv_bfloat16* kbase =
        pruned_phase ? p.pruned + p.k_off[kvh] : p.full + int64_t(kvh) * B * D;
    const __nv_bfloat16* vbase =
        pruned_phase ? p.pruned + p.v_off[kvh] : p.full + int64_t(H + kvh) * B * D;
    const int kchunks = kdim / 8;
    const int k_step = kThreads / kchunks, k_col = tid % kchunks, k_row = tid / kchunks;
    constexpr int kVChunks = D / 8, kVStep = kThreads / kVChunks;
    const int v_col = tid % kVChunks, v_row = tid / kVChunks;
    const int kstride = Smem::kRow;
    const int num_tiles = (ntok + kKeys - 1) / kKeys;
    auto load_tile = [&](int t, int stage) {
      __nv_bfloat16* ks = stages + stage * Smem::kStageElems;
      __nv_bfloat16* vs = ks + kKeys * Smem::kRow;
      const int t0 = t * kKeys;
      if (k_row < k_step) {
        for (int r = k_row; r < kKeys; r += k_step) {
          const int tok = t0 + r;
          const bool valid = tok < ntok;
          const __nv_bfloat16* src = p.full;
          if (valid)
            src = kbase + table[tok >> p.log2_block] * blk_stride + (tok & (B - 1)) * kdim +
                  k_col * 8;
          CpAsync16(ks + r * kstride + k_col * 8, src, valid);
        }
      }
#pragma unroll
      for (int j = 0; j < kKeys / kVStep; ++j) {
        const int r = v_row + j * kVStep;
        const int tok = t0 + r;
        const bool valid = tok < ntok;
        const __nv_bfloat16* src = p.full;
        if (valid)
          src = vbase + table[tok >> p.log2_block] * blk_stride + (tok & (B - 1)) * D + v_col * 8;
        CpAsync16(vs + r * Smem::kRow + v_col * 8, src, valid);
      }
    };
    if (num_tiles > 0) load_tile(0, 0);
    CpAsyncCommit();
    for (int t = 0; t < num_tiles; ++t) {
      CpAsyncWait<0>();
      __syncthreads();
      if (t + 1 < num_tiles) load_tile(t + 1, (t + 1) % kStages);
      CpAsyncCommit();
      const __nv_bfloat16* ks = stages + (t % kStages) * Smem::kStageElems;
      const __nv_bfloat16* vs = ks + kKeys * Smem::kRow;
      const int t0 = t * kKeys;
      const int pos0 = pruned_phase ? S + t0 : (t0 < S ? t0 : t0 + Mb);
      // Middle keys in full storage: positions [S + Mb, last_bound) can meet this tile.
      const int pos_hi =
          pruned_phase ? pos0 + kKeys : (t0 + kKeys <= S ? t0 + kKeys : t0 + kKeys + Mb);
      const bool need_masked =
          !pruned_phase && kept > 0 && kept < D && !dense && pos_hi > S + Mb && pos0 < last_bound;
      constexpr int kN = kKeys / 8;  // n8 score tiles
      float s[kN][4], sm[kN][4];
#pragma unroll
      for (int n = 0; n < kN; ++n)
#pragma unroll
        for (int j = 0; j < 4; ++j) s[n][j] = sm[n][j] = 0.f;
#pragma unroll
      for (int kstep = 0; kstep < D / 16; ++kstep) {
        if (kstep * 16 < kdim) {
          uint32_t a[4], am[4];
          LdMatrixX4(
              a, q_s + (warp * 16 + (mi & 1) * 8 + rr) * Smem::kRow + kstep * 16 + (mi >> 1) * 8);
          if (need_masked)
            LdMatrixX4(am, qm_s + (warp * 16 + (mi & 1) * 8 + rr) * Smem::kRow + kstep * 16 +
                               (mi >> 1) * 8);
#pragma unroll
          for (int np = 0; np < kKeys / 16; ++np) {
            uint32_t b[4];
            LdMatrixX4(b,
                       ks + (np * 16 + (mi >> 1) * 8 + rr) * kstride + kstep * 16 + (mi & 1) * 8);
            MmaBf16(s[2 * np], a, b[0], b[1]);
            MmaBf16(s[2 * np + 1], a, b[2], b[3]);
            if (need_masked) {
              MmaBf16(sm[2 * np], am, b[0], b[1]);
              MmaBf16(sm[2 * np + 1], am, b[2], b[3]);
            }
          }
        }
      }
      // Scores -> online softmax (per row: causal, middle rule, token validity).
      float alphas[2];
#pragma unroll
      for (int ri = 0; ri < 2; ++ri) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < kN; ++n) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int tok = t0 + n * 8 + 2 * t4 + j;
            const int pos = pruned_phase ? S + tok : (tok < S ? tok : tok + Mb);
            float v = s[n][ri * 2 + j];
            bool ok = row_ok[ri] && tok < ntok && pos <= row_pos[ri];
            if (!pruned_phase && pos >= S && pos < row_bound[ri]) {  // middle for this query
              ok = ok && kept > 0;
              if (kept < D) v = sm[n][ri * 2 + j];
            }
            v = ok ? v * p.scale_log2 : -INFINITY;
            s[n][ri * 2 + j] = v;
            mx = fmaxf(mx, v);
          }
        }
        mx = QuadMax(mx);
        const float m_new = fmaxf(m_run[ri], mx);
        const float m_use = m_new == -INFINITY ? 0.f : m_new;
        const float alpha = FastExp2(m_run[ri] - m_use);
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < kN; ++n) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const float e = FastExp2(s[n][ri * 2 + j] - m_use);
            s[n][ri * 2 + j] = e;
            sum += e;
          }
        }
        l_run[ri] = l_run[ri] * alpha + sum;
        m_run[ri] = m_new;
        alphas[ri] = alpha;
      }
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        o[i][0] *= alphas[0];
        o[i][1] *= alphas[0];
        o[i][2] *= alphas[1];
        o[i][3] *= alphas[1];
      }
      // O += P V over the k-steps of 16 keys.
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        uint32_t pa[4], pl[4];  // bf16 P; lo part only with LEANK_ATTN_SPLIT_P (mma.cuh)
        SplitBf16(s[2 * kk][0], s[2 * kk][1], pa[0], pl[0]);
        SplitBf16(s[2 * kk][2], s[2 * kk][3], pa[1], pl[1]);
        SplitBf16(s[2 * kk + 1][0], s[2 * kk + 1][1], pa[2], pl[2]);
        SplitBf16(s[2 * kk + 1][2], s[2 * kk + 1][3], pa[3], pl[3]);
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t b[4];
          LdMatrixX4Trans(
              b, vs + (kk * 16 + (mi & 1) * 8 + rr) * Smem::kRow + dp * 16 + (mi >> 1) * 8);
          MmaBf16(o[2 * dp], pa, b[0], b[1]);
          MmaBf16(o[2 * dp + 1], pa, b[2], b[3]);
          if (LEANK_ATTN_SPLIT_P) {
            MmaBf16(o[2 * dp], pl, b[0], b[1]);
            MmaBf16(o[2 * dp + 1], pl, b[2], b[3]);
          }
        }
      }
    }
    CpAsyncWait<0>();
  };

  if (!dense && Mb > 0 && kept > 0) {
    load_q(kept, true, false);
    run_phase(true, Mb);
  }
  load_q(D, false, !dense && kept > 0 && kept < D);
  const int last_excl = last_pos + 1;  // keys [0, last_pos]
  const int ntok_full = last_excl <= S ? last_excl : last_excl - Mb;
  run_phase(false, ntok_full);

#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    const float l = QuadSum(l_run[ri]);
    const int r = warp * 16 + g4 + ri * 8;
    if (!row_ok[ri]) continue;
    const int qi = tile.q_begin + r / G;
    __nv_bfloat16* out = p.out + (size_t(si.q_offset + qi) * H * G + kvh * G + r % G) * D;
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      *reinterpret_cast<__nv_bfloat162*>(out + i * 8 + 2 * t4) =
          __floats2bfloat162_rn(o[i][ri * 2] * inv, o[i][ri * 2 + 1] * inv);
    }
  }
}

template <int D>
void Launch(const PrefillParams& p, int num_tiles, cudaStream_t stream) {
  constexpr size_t smem = PrefillSmem<D>::kBytes;
  static bool configured = false;
  if (!configured) {
    LEANK_CUDA_CHECK(
        cudaFuncSetAttribute(PrefillKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    configured = true;
  }
  if (num_tiles > 0) PrefillKernel<D><<<num_tiles, kThreads, smem, stream>>>(p);
  LEANK_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void LaunchPrefill(const PrefillParams& p, int head_dim, int num_tiles, cudaStream_t stream) {
  switch (head_dim) {
    case 64:
      Launch<64>(p, num_tiles, stream);
      break;
    case 128:
      Launch<128>(p, num_tiles, stream);
      break;
    default:
      std::fprintf(stderr, "LaunchPrefill: head_dim %d not built\n", head_dim);
      std::abort();
  }
}

}  // namespace leank::kernels::detail
