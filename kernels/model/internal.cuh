#pragma once
// Helpers shared by the model kernels. Not public.

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "kernels/cuda_check.h"

#define LEANK_MODEL_CHECK_LAUNCH() LEANK_CUDA_CHECK(cudaGetLastError())

namespace leank::kernels::model {

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float partial[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float total = 0;
  for (int w = 0; w < blockDim.x / 32; ++w) total += partial[w];
  return total;
}

__device__ __forceinline__ float BlockMax(float v) {
  __shared__ float partial[32];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < blockDim.x / 32; ++w) m = fmaxf(m, partial[w]);
  return m;
}

}  // namespace leank::kernels::model
