#pragma once
// The model's weights on the device as bf16, packed in one allocation: fused QKV
// [(Hq + 2 H) * D][hidden] (q rows, then k, then v) and fused gate/up [2 I][hidden]
// (gate rows, then up), like the CPU reference's fused matrices.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/cuda/device_buffer.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"

namespace leank::cuda {

using bf16 = __nv_bfloat16;

struct PackedLayer {
  const bf16* input_norm = nullptr;  // [hidden]
  const bf16* qkv = nullptr;         // [(Hq + 2 H) * D][hidden]
  const bf16* qkv_bias = nullptr;    // [(Hq + 2 H) * D] or nullptr
  const bf16* o = nullptr;           // [hidden][Hq * D]
  const bf16* post_norm = nullptr;   // [hidden]
  const bf16* gate_up = nullptr;     // [2 * intermediate][hidden]
  const bf16* down = nullptr;        // [hidden][intermediate]
};

// Bytes PackedWeights::Upload allocates for `config` (untied lm_head counted unless tied).
int64_t PackedWeightBytes(const ModelConfig& config);

struct PackedWeights {
  DeviceBuffer storage;
  const bf16* embed = nullptr;       // [vocab][hidden]
  const bf16* final_norm = nullptr;  // [hidden]
  const bf16* lm_head = nullptr;     // [vocab][hidden]; == embed when tied
  std::vector<PackedLayer> layers;

  // Converts every tensor to bf16 on the host (bf16 sources are copied as they are)
  // and copies it into one device allocation.
  absl::Status Upload(const ModelConfig& config, const ModelWeights& weights, cudaStream_t stream);
};

}  // namespace leank::cuda
