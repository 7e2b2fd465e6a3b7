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
};

// `layout` must outlive the backend and use elem_bytes = 4.
absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const ModelConfig& config,
                                                          const ModelWeights& weights,
                                                          const cache::CacheLayout& layout,
                                                          cache::PoolSizes sizes,
                                                          const CpuBackendOptions& options);

}  // namespace leank
