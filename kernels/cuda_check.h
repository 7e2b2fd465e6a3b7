#pragma once
// LEANK_CUDA_CHECK(expr): a failed CUDA call or launch is a programming error here, so it
// aborts with the location and the call. Shared by kernels/, kernels/model/ and engine/cuda/.

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define LEANK_CUDA_CHECK(expr)                                                 \
  do {                                                                         \
    cudaError_t _e = (expr);                                                   \
    if (_e != cudaSuccess) {                                                   \
      std::fprintf(stderr, "%s:%d: CUDA error %s in %s\n", __FILE__, __LINE__, \
                   cudaGetErrorString(_e), #expr);                             \
      std::abort();                                                            \
    }                                                                          \
  } while (0)
