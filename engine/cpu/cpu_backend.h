#pragma once
// The CPU reference backend: fp32 math over bf16/f16/f32 weights (converted to
// fp32 once at load), the paged LeanK cache in fp32 through cache/reference.h.
// Obviously right first; parallel over both cores second.

#include <memory>

#include "absl/status/statusor.h"
#include "cache/kv_cache.h"
#include "engine/core/backend.h"
#include "engine/model/weights.h"

namespace leank {

struct CpuBackendOptions {
  int num_threads = 0;  // 0: hardware concurrency
  // Round activations to bf16 (round-to-nearest-even) where the CUDA backend stores them
  // as bf16: the RMSNorm outputs, q after bias + RoPE, K and V as cached, the attention
  // output, the gate/up product and the SwiGLU output (README.md lists them). Math stays
  // fp32 in between and the cache stays fp32 (holding bf16 values). A bf16-faithful
  // reference for the GPU; false (the default) is the fp32 reference the goldens check.
  bool bf16_activations = false;
};

// `layout` must outlive the backend and use elem_bytes = 4.
absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const ModelConfig& config,
                                                          const ModelWeights& weights,
                                                          const cache::CacheLayout& layout,
                                                          cache::PoolSizes sizes,
                                                          const CpuBackendOptions& options);

}  // namespace leank
