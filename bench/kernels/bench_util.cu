#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench/kernels/bench_util.h"
#include "kernels/cuda_check.h"

namespace leank::bench {
namespace {

__device__ uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  return x ^ (x >> 33);
}

__global__ void FillKernel(__nv_bfloat16* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const uint64_t r = Mix(seed * 0x9e3779b97f4a7c15ULL + i);
    p[i] = __float2bfloat16(float(r >> 40) * (4.0f / 16777216.0f) - 2.0f);
  }
}

__global__ void ReduceKernel(const uint4* p, size_t n, unsigned* sink) {
  unsigned acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x + v.y + v.z + v.w;
  }
  if (acc == 0x12345678u) *sink = acc;  // keeps the loads alive
}

}  // namespace

void FillRandomBf16(__nv_bfloat16* p, size_t n, uint64_t seed, cudaStream_t stream) {
  FillKernel<<<4096, 256, 0, stream>>>(p, n, seed);
  LEANK_CUDA_CHECK(cudaGetLastError());
}

double MeasureReadBandwidth(size_t bytes, int iters) {
  uint4* buf = nullptr;
  unsigned* sink = nullptr;
  LEANK_CUDA_CHECK(cudaMalloc(&buf, bytes));
  LEANK_CUDA_CHECK(cudaMalloc(&sink, sizeof(unsigned)));
  LEANK_CUDA_CHECK(cudaMemset(buf, 1, bytes));
  int dev = 0, sms = 0;
  LEANK_CUDA_CHECK(cudaGetDevice(&dev));
  LEANK_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaEvent_t a, b;
  LEANK_CUDA_CHECK(cudaEventCreate(&a));
  LEANK_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  const size_t n = bytes / sizeof(uint4);
  for (int i = 0; i < iters + 3; ++i) {
    LEANK_CUDA_CHECK(cudaEventRecord(a));
    ReduceKernel<<<sms * 8, 512>>>(buf, n, sink);
    LEANK_CUDA_CHECK(cudaEventRecord(b));
    LEANK_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    LEANK_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    if (i >= 3) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaFree(buf);
  cudaFree(sink);
  return double(bytes) / (ms[ms.size() / 2] * 1e-3) / 1e9;
}

}  // namespace leank::bench
