#pragma once
// Device helpers of leank-bench-kernels: random fill, read-only bandwidth probe.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace leank::bench {

// Uniform values in [-2, 2), never NaN; a different pattern per seed.
void FillRandomBf16(__nv_bfloat16* p, size_t n, uint64_t seed, cudaStream_t stream);

// Median GB/s of a read-only reduction over `bytes` of device memory (16-byte loads).
double MeasureReadBandwidth(size_t bytes, int iters);

}  // namespace leank::bench
