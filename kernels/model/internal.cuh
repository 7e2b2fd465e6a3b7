#pragma once
// Helpers shared by the model kernels. Not public.

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "kernels/cuda_check.h"
#include "kernels/model/ops.h"

#define LEANK_MODEL_CHECK_LAUNCH() LEANK_CUDA_CHECK(cudaGetLastError())

namespace leank::kernels::model {

// Programmatic dependent launch (sm_90+). A kernel launched by LaunchPdl may start while
// the previous kernel of the stream is still running: it must call PdlWait() before it
// reads anything an earlier kernel wrote or writes anything an earlier kernel reads
// (work independent of them, such as loading weights, may come first). PdlTrigger()
// lets the next kernel start early. Both are no-ops below sm_90 and for kernels
// launched the ordinary way.
__device__ __forceinline__ void PdlWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void PdlTrigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Launches `kernel` as a programmatic dependent of the previous kernel in `stream` when
// ProgrammaticLaunchEnabled() (ops.h), an ordinary launch otherwise.
template <typename... KArgs, typename... Args>
void LaunchPdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
               Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = ProgrammaticLaunchEnabled() ? 1 : 0;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  LEANK_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...));
}

// bf16 inputs of SwiGLU -> silu(g) * u in fp32 (rounded to bf16 by the callers).
__device__ __forceinline__ float SiluMulValue(float g, float u) {
  return g / (1.0f + expf(-g)) * u;
}

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
