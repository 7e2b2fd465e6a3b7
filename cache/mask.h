#pragma once
// LeanK K-channel masks: which channels of each (layer, kv head) are kept for
// middle-context keys. File format (docs/DESIGN, cache/README.md):
// masks.safetensors with tensor "leank.kept" uint8 [num_layers, num_kv_heads, head_dim]
// (1 = keep) and __metadata__ {"format": "leank-mask/1", "sink", "recent", "align",
// "target_sparsity", "model"} (all values strings, as safetensors requires).
// tools/import_leank_mask.py writes such files from LeanK's released masks.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace leank::cache {

inline constexpr char kMaskFormat[] = "leank-mask/1";
inline constexpr char kMaskTensorName[] = "leank.kept";

// The shape a mask must match.
struct MaskShape {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  bool operator==(const MaskShape&) const = default;
};

class Mask {
 public:
  Mask() = default;
  // kept: [num_layers][num_kv_heads][head_dim], 0 or 1. align must be 16 or 32 and divide
  // head_dim; every head's kept count must be a multiple of align. InvalidArgument naming
  // the offending layer/head/channel otherwise.
  static absl::StatusOr<Mask> Create(MaskShape shape, std::vector<uint8_t> kept, int align);
  // Every channel kept: the LeanK path with pruned blocks as large as full ones.
  // align is 32 when it divides head_dim, else 16 (not checked: any head_dim works).
  static Mask AllOnes(MaskShape shape);

  const MaskShape& shape() const { return shape_; }
  bool kept(int layer, int head, int channel) const;
  int KeptCount(int layer, int head) const;
  // Ascending channel indices kept by (layer, head).
  const std::vector<int>& KeptChannels(int layer, int head) const;
  bool IsAllOnes() const;
  double KeptFraction() const;  // kept channels / all channels
  const std::vector<uint8_t>& raw() const { return kept_; }

  // Metadata (defaults when the file has none).
  int sink = 128;
  int recent = 768;
  int align = 32;
  double target_sparsity = 0.0;
  std::string model;

 private:
  MaskShape shape_;
  std::vector<uint8_t> kept_;
  std::vector<std::vector<int>> channels_;  // [layer * heads + head]
};

// Reads and validates a mask file (format tag, tensor dtype/shape, 0/1 values,
// alignment, metadata) without checking it against a model.
absl::StatusOr<Mask> ReadMask(const std::filesystem::path& path);
// ReadMask + the shape must equal `expected` (the model's layers, kv heads, head_dim).
// Errors are InvalidArgument (NotFound for a missing file) and name the file and
// what is wrong.
absl::StatusOr<Mask> LoadMask(const std::filesystem::path& path, const MaskShape& expected);
absl::Status SaveMask(const Mask& mask, const std::filesystem::path& path);

}  // namespace leank::cache
