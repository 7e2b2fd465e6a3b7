// Small-batch GEMV for decode: y[r][n] = x[r][:] . w[n][:] for rows <= 16. One warp per
// output column streams its weight row with 16-byte loads (the whole matrix is read
// once, the point of decode); x rows are re-read from L1/L2. cuBLASLt's choice for a
// 1-row "GEMM" reached only ~60% of the read bandwidth (bench/results/engine-*.json).

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/model/internal.cuh"
#include "kernels/model/ops.h"

namespace leank::kernels::model {
namespace {

constexpr int kWarps = 8;

__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
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

// Warp = kCols adjacent output columns; per iteration each lane issues kCols * kUnroll
// 16-byte weight loads before using any (bytes in flight), and each x vector it loads
// serves kCols columns (for many rows the x reads from L1 would otherwise bound it).
template <int R, int kCols, int kUnroll, bool kF32>
__global__ void __launch_bounds__(kWarps * 32)
    GemvKernel(const bf16* __restrict__ x, const bf16* __restrict__ w, void* y, int n, int k,
               float beta) {
  const int col0 = (blockIdx.x * kWarps + threadIdx.x / 32) * kCols, lane = threadIdx.x % 32;
  if (col0 >= n) return;
  const int k8 = k / 8;
  const uint4* wr[kCols];
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    wr[c] = reinterpret_cast<const uint4*>(w + size_t(min(col0 + c, n - 1)) * k);
  }
  float acc[kCols][R];
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[c][r] = 0.0f;
  }
  auto fma_vecs = [&](const uint4 (&wv)[kCols], int i) {
    float wf[kCols][8];
#pragma unroll
    for (int c = 0; c < kCols; ++c) Unpack(wv[c], wf[c]);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float xf[8];
      Unpack(__ldg(reinterpret_cast<const uint4*>(x + size_t(r) * k) + i), xf);
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[c][r] = fmaf(wf[c][j], xf[j], acc[c][r]);
      }
    }
  };
  int i = lane;
  for (; i + 32 * (kUnroll - 1) < k8; i += 32 * kUnroll) {
    uint4 wv[kUnroll][kCols];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int c = 0; c < kCols; ++c) wv[u][c] = LoadStreaming(wr[c] + i + 32 * u);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) fma_vecs(wv[u], i + 32 * u);
  }
  for (; i < k8; i += 32) {
    uint4 wv[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) wv[c] = LoadStreaming(wr[c] + i);
    fma_vecs(wv, i);
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
          float* out = static_cast<float*>(y) + size_t(r) * n + col;
          *out = beta == 0.0f ? acc[c][r] : acc[c][r] + beta * *out;
        } else {
          static_cast<bf16*>(y)[size_t(r) * n + col] = __float2bfloat16(acc[c][r]);
        }
      }
    }
  }
}

template <int R, bool kF32>
void LaunchRows(const bf16* x, const bf16* w, void* y, int n, int k, float beta,
                cudaStream_t stream) {
  constexpr int kCols = R <= 2 ? 1 : R <= 8 ? 2 : 4;
  constexpr int kUnroll = 4 / kCols;
  const dim3 grid((n + kWarps * kCols - 1) / (kWarps * kCols)), block(kWarps * 32);
  GemvKernel<R, kCols, kUnroll, kF32><<<grid, block, 0, stream>>>(x, w, y, n, k, beta);
}

template <bool kF32>
void Launch(const bf16* x, const bf16* w, void* y, int rows, int n, int k, float beta,
            cudaStream_t stream) {
  switch (rows) {
#define LEANK_GEMV_CASE(R) \
  case R: LaunchRows<R, kF32>(x, w, y, n, k, beta, stream); break;
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
  LEANK_MODEL_CHECK_LAUNCH();
}

}  // namespace

bool GemvApplies(int rows, int k) { return rows >= 1 && rows <= kMaxGemvRows && k % 8 == 0; }

void GemvF32(const bf16* x, const bf16* w, float* y, int rows, int n, int k, float beta,
             cudaStream_t stream) {
  Launch<true>(x, w, y, rows, n, k, beta, stream);
}

void GemvBf16(const bf16* x, const bf16* w, bf16* y, int rows, int n, int k, cudaStream_t stream) {
  Launch<false>(x, w, y, rows, n, k, 0.0f, stream);
}

}  // namespace leank::kernels::model
