#pragma once
// The tensors of a Llama-family model, bound to a config: every name, shape and
// dtype checked before any backend touches them.

#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/safetensors.h"

namespace leank {

struct LayerWeights {
  TensorView input_norm;                             // [hidden]
  TensorView q_proj;                                 // [num_heads * head_dim, hidden]
  TensorView k_proj;                                 // [num_kv_heads * head_dim, hidden]
  TensorView v_proj;                                 // [num_kv_heads * head_dim, hidden]
  TensorView o_proj;                                 // [hidden, num_heads * head_dim]
  std::optional<TensorView> q_bias, k_bias, v_bias;  // present iff config.attention_bias
  TensorView post_attention_norm;                    // [hidden]
  TensorView gate_proj;                              // [intermediate, hidden]
  TensorView up_proj;                                // [intermediate, hidden]
  TensorView down_proj;                              // [hidden, intermediate]
};

struct ModelWeights {
  TensorView embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  TensorView final_norm;  // [hidden]
  TensorView lm_head;     // [vocab, hidden]; the embedding when tied
};

// Loads config.json and the safetensors of `model_dir` and binds them.
struct LoadedModel {
  ModelConfig config;
  std::unique_ptr<WeightStore> store;  // owns the mappings the views point into
  ModelWeights weights;
};

absl::StatusOr<ModelWeights> BindWeights(const ModelConfig& config, const WeightStore& store);
absl::StatusOr<LoadedModel> LoadModel(const std::filesystem::path& model_dir);
// The same with config.json already loaded (LoadModelConfig of the same folder).
absl::StatusOr<LoadedModel> LoadModel(const std::filesystem::path& model_dir, ModelConfig config);

}  // namespace leank
