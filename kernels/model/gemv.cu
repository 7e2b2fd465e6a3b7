// Small-batch GEMV for decode: y[r][n] = x[r][:] . w[n][:] for rows <= 16. One warp per
// group of output columns streams its weight rows with 16-byte loads (the whole matrix
// is read once, the point of decode); x rows are re-read from L1/L2 or shared memory.
// cuBLASLt's choice for a 1-row "GEMM" reached only ~60% of the read bandwidth
// (bench/results/engine-*.json).
//
// Launched as programmatic dependents (internal.cuh): each warp issues its first weight
// loads before waiting for the previous kernel, so the memory pipe stays full across the
// boundary between two matrices. For 1-2 rows RMSNorm can be fused in (the CTA normalises
// the fp32 residual into shared memory), one kernel and one dependency hop fewer.
// H100, Llama-3.1-8B shape, batch-1 decode at 1K: 149.6 tok/s without either, 154.0 with
// PDL, 158.4 with PDL + fused RMSNorm at 1 column per warp (156.5 at 2, 154.6 at 4).
// SwiGLU fused into the down GEMV was slower at every width (118-143 tok/s: 8 exps per
// 16-byte weight vector per column group), so SiluMul stays a kernel.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdlib>

#include "kernels/model/internal.cuh"
#include "kernels/model/ops.h"

namespace leank::kernels::model {
namespace {

constexpr int kWarps = 8;

enum class XMode { kPlain, kNorm };

struct GemvArgs {
  const bf16* x;        // kPlain: [R][k] bf16
  const float* xf;      // kNorm: residual [R][k] fp32
  const bf16* norm_w;   // kNorm: [k]
  float eps;            // kNorm
  const bf16* w;        // [n][k]
  void* y;              // [R][n] fp32 or bf16
  int n, k;
  float beta;
};

__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ void Unpack(const uint4& v, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// kNorm: the CTA writes bf16(x * rsqrt(mean(x^2) + eps) * norm_w) of its R rows into
// shared memory (the arithmetic of RmsNormKernel in ops.cu).
template <int R>
__device__ void NormRowsToShared(const GemvArgs& a, uint4* xs) {
  const int k = a.k, k4 = k / 4;
  bf16* out = reinterpret_cast<bf16*>(xs);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float4* xr = reinterpret_cast<const float4*>(a.xf + size_t(r) * k);
    float ss = 0;
    for (int i = threadIdx.x; i < k4; i += blockDim.x) {
      const float4 v = xr[i];
      ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    ss = BlockSum(ss);
    const float inv = rsqrtf(ss / k + a.eps);
    for (int i = threadIdx.x; i < k4; i += blockDim.x) {
      const float4 v = xr[i];
      const float f[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        out[size_t(r) * k + 4 * i + j] =
            __float2bfloat16(__bfloat162float(a.norm_w[4 * i + j]) * (f[j] * inv));
      }
    }
  }
  __syncthreads();
}

// Warp = kCols adjacent output columns; per iteration each lane issues kCols * kUnroll
// 16-byte weight loads before using any (bytes in flight), and each x vector it loads
// serves kCols columns (for many rows the x reads from L1 would otherwise bound it).
template <int R, int kCols, int kUnroll, bool kF32, XMode kMode>
__global__ void __launch_bounds__(kWarps * 32) GemvKernel(GemvArgs a) {
  extern __shared__ uint4 xs[];  // kNorm: [R][k / 8]
  const int n = a.n, k = a.k, k8 = k / 8;
  const int col0 = (blockIdx.x * kWarps + threadIdx.x / 32) * kCols, lane = threadIdx.x % 32;
  const uint4* wr[kCols];
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    wr[c] = reinterpret_cast<const uint4*>(a.w + size_t(min(col0 + c, n - 1)) * k);
  }
  // Weights do not depend on earlier kernels: the first loads go out before the wait.
  constexpr int kStep = 32 * kUnroll;
  uint4 wv[kUnroll][kCols];
  // A whole batch (kUnroll vectors per column) starting at `at` fits in the row.
  auto batch_fits = [&](int at) { return at + 32 * (kUnroll - 1) < k8; };
  auto load_batch = [&](int at) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int c = 0; c < kCols; ++c) wv[u][c] = LoadStreaming(wr[c] + at + 32 * u);
    }
  };
  int i = lane;
  bool full = col0 < n && batch_fits(i);
  if (full) load_batch(i);
  PdlTrigger();
  PdlWait();
  if constexpr (kMode == XMode::kNorm) NormRowsToShared<R>(a, xs);
  if (col0 >= n) return;

  float acc[kCols][R];
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[c][r] = 0.0f;
  }
  auto load_x = [&](int r, int idx, float (&xf)[8]) {
    if constexpr (kMode == XMode::kPlain) {
      Unpack(__ldg(reinterpret_cast<const uint4*>(a.x + size_t(r) * k) + idx), xf);
    } else {
      Unpack(xs[r * k8 + idx], xf);
    }
  };
  auto fma_vecs = [&](const uint4 (&wvc)[kCols], int idx) {
    float wf[kCols][8];
#pragma unroll
    for (int c = 0; c < kCols; ++c) Unpack(wvc[c], wf[c]);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float xf[8];
      load_x(r, idx, xf);
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[c][r] = fmaf(wf[c][j], xf[j], acc[c][r]);
      }
    }
  };
  // Software pipeline (few rows): the next batch of weights is in flight while this one
  // is used. With many rows the accumulators need the registers instead.
  constexpr bool kPipe = R <= 4;
  while (full) {
    const int base = i;
    i += kStep;
    if constexpr (kPipe) {
      uint4 cur[kUnroll][kCols];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int c = 0; c < kCols; ++c) cur[u][c] = wv[u][c];
      }
      full = batch_fits(i);
      if (full) load_batch(i);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) fma_vecs(cur[u], base + 32 * u);
    } else {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) fma_vecs(wv[u], base + 32 * u);
      full = batch_fits(i);
      if (full) load_batch(i);
    }
  }
  for (; i < k8; i += 32) {
    uint4 w1[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) w1[c] = LoadStreaming(wr[c] + i);
    fma_vecs(w1, i);
  }
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[c][r] += __shfl_xor_sync(0xffffffffu, acc[c][r], o);
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int col = col0 + c;
      if (col >= n) break;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if constexpr (kF32) {
          float* out = static_cast<float*>(a.y) + size_t(r) * n + col;
          *out = a.beta == 0.0f ? acc[c][r] : acc[c][r] + a.beta * *out;
        } else {
          static_cast<bf16*>(a.y)[size_t(r) * n + col] = __float2bfloat16(acc[c][r]);
        }
      }
    }
  }
}

template <int R, int kCols, bool kF32, XMode kMode>
void LaunchCols(const GemvArgs& a, cudaStream_t stream) {
  constexpr int kUnroll = 4 / kCols;
  const dim3 grid((a.n + kWarps * kCols - 1) / (kWarps * kCols)), block(kWarps * 32);
  const size_t smem = kMode == XMode::kNorm ? size_t(R) * a.k * sizeof(bf16) : 0;
  LaunchPdl(GemvKernel<R, kCols, kUnroll, kF32, kMode>, grid, block, smem, stream, a);
}

// Columns per warp of the fused RMSNorm GEMV (1, 2 or 4; LEANK_GEMV_COLS_NORM overrides the
// measured best, 1, for tuning on a GPU).
int NormCols() {
  static const int cols = [] {
    const char* e = std::getenv("LEANK_GEMV_COLS_NORM");
    return e ? std::atoi(e) : 1;
  }();
  return cols;
}

template <int R, bool kF32, XMode kMode>
void LaunchRows(const GemvArgs& a, cudaStream_t stream) {
  if constexpr (kMode == XMode::kPlain) {
    constexpr int kCols = R <= 2 ? 1 : R <= 8 ? 2 : 4;
    LaunchCols<R, kCols, kF32, kMode>(a, stream);
  } else {
    // The norm is computed once per CTA: more columns per warp share it (fewer CTAs).
    switch (NormCols()) {
      case 2: LaunchCols<R, 2, kF32, kMode>(a, stream); break;
      case 4: LaunchCols<R, 4, kF32, kMode>(a, stream); break;
      default: LaunchCols<R, 1, kF32, kMode>(a, stream); break;
    }
  }
}

template <bool kF32, XMode kMode>
void Launch(const GemvArgs& a, int rows, cudaStream_t stream) {
  if constexpr (kMode != XMode::kPlain) {
    switch (rows) {
      case 1: LaunchRows<1, kF32, kMode>(a, stream); return;
      case 2: LaunchRows<2, kF32, kMode>(a, stream); return;
      default:
        std::fprintf(stderr, "fused Gemv: %d rows (1..%d)\n", rows, kMaxFusedGemvRows);
        std::abort();
    }
  } else {
    switch (rows) {
#define LEANK_GEMV_CASE(R) \
  case R: LaunchRows<R, kF32, kMode>(a, stream); return;
      LEANK_GEMV_CASE(1)
      LEANK_GEMV_CASE(2)
      LEANK_GEMV_CASE(3)
      LEANK_GEMV_CASE(4)
      LEANK_GEMV_CASE(5)
      LEANK_GEMV_CASE(6)
      LEANK_GEMV_CASE(7)
      LEANK_GEMV_CASE(8)
      LEANK_GEMV_CASE(9)
      LEANK_GEMV_CASE(10)
      LEANK_GEMV_CASE(11)
      LEANK_GEMV_CASE(12)
      LEANK_GEMV_CASE(13)
      LEANK_GEMV_CASE(14)
      LEANK_GEMV_CASE(15)
      LEANK_GEMV_CASE(16)
#undef LEANK_GEMV_CASE
      default:
        std::fprintf(stderr, "Gemv: %d rows (1..%d)\n", rows, kMaxGemvRows);
        std::abort();
    }
  }
}

}  // namespace

bool GemvApplies(int rows, int k) { return rows >= 1 && rows <= kMaxGemvRows && k % 8 == 0; }

bool FusedGemvApplies(int rows, int k) {
  // kNorm keeps R normalised rows in (default-sized) shared memory.
  return rows >= 1 && rows <= kMaxFusedGemvRows && k % 8 == 0 &&
         size_t(rows) * k * sizeof(bf16) <= 48 * 1024;
}

void GemvF32(const bf16* x, const bf16* w, float* y, int rows, int n, int k, float beta,
             cudaStream_t stream) {
  Launch<true, XMode::kPlain>({x, nullptr, nullptr, 0.0f, w, y, n, k, beta}, rows, stream);
}

void GemvBf16(const bf16* x, const bf16* w, bf16* y, int rows, int n, int k, cudaStream_t stream) {
  Launch<false, XMode::kPlain>({x, nullptr, nullptr, 0.0f, w, y, n, k, 0.0f}, rows, stream);
}

void GemvRmsNormF32(const float* x, const bf16* norm_weight, float eps, const bf16* w, float* y,
                    int rows, int n, int k, cudaStream_t stream) {
  Launch<true, XMode::kNorm>({nullptr, x, norm_weight, eps, w, y, n, k, 0.0f}, rows, stream);
}

void GemvRmsNormBf16(const float* x, const bf16* norm_weight, float eps, const bf16* w, bf16* y,
                     int rows, int n, int k, cudaStream_t stream) {
  Launch<false, XMode::kNorm>({nullptr, x, norm_weight, eps, w, y, n, k, 0.0f}, rows, stream);
}

}  // namespace leank::kernels::model
