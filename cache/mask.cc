#include "cache/mask.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace leank::cache {
namespace {

int64_t NumElems(const MaskShape& s) {
  return static_cast<int64_t>(s.num_layers) * s.num_kv_heads * s.head_dim;
}

std::string ShapeString(const MaskShape& s) {
  return absl::StrCat("[", s.num_layers, ", ", s.num_kv_heads, ", ", s.head_dim, "]");
}

}  // namespace

absl::StatusOr<Mask> Mask::Create(MaskShape shape, std::vector<uint8_t> kept, int align) {
  if (shape.num_layers <= 0 || shape.num_kv_heads <= 0 || shape.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mask shape ", ShapeString(shape), " (layers, kv heads, head_dim) must be positive"));
  }
  if (static_cast<int64_t>(kept.size()) != NumElems(shape)) {
    return absl::InvalidArgumentError(absl::StrCat("mask has ", kept.size(), " values but shape ",
                                                   ShapeString(shape), " needs ", NumElems(shape)));
  }
  if (align != 16 && align != 32) {
    return absl::InvalidArgumentError(absl::StrCat("mask align is ", align, ", must be 16 or 32"));
  }
  if (shape.head_dim % align != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("mask align ", align, " does not divide head_dim ", shape.head_dim));
  }
  Mask mask;
  mask.shape_ = shape;
  mask.align = align;
  mask.channels_.resize(static_cast<size_t>(shape.num_layers) * shape.num_kv_heads);
  for (int l = 0; l < shape.num_layers; ++l) {
    for (int h = 0; h < shape.num_kv_heads; ++h) {
      std::vector<int>& channels = mask.channels_[l * shape.num_kv_heads + h];
      const uint8_t* row =
          kept.data() + (static_cast<int64_t>(l) * shape.num_kv_heads + h) * shape.head_dim;
      for (int c = 0; c < shape.head_dim; ++c) {
        if (row[c] > 1) {
          return absl::InvalidArgumentError(absl::StrCat("mask value ", static_cast<int>(row[c]),
                                                         " at layer ", l, ", head ", h,
                                                         ", channel ", c, " (must be 0 or 1)"));
        }
        if (row[c]) channels.push_back(c);
      }
      if (channels.size() % align != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("mask layer ", l, ", head ", h, " keeps ", channels.size(),
                         " channels, not a multiple of align ", align));
      }
    }
  }
  mask.kept_ = std::move(kept);
  return mask;
}

Mask Mask::AllOnes(MaskShape shape) {
  Mask mask;
  mask.shape_ = shape;
  mask.align = shape.head_dim % 32 == 0 ? 32 : 16;
  mask.kept_.assign(NumElems(shape), 1);
  std::vector<int> all(shape.head_dim);
  for (int c = 0; c < shape.head_dim; ++c) all[c] = c;
  mask.channels_.assign(static_cast<size_t>(shape.num_layers) * shape.num_kv_heads, all);
  return mask;
}

bool Mask::kept(int layer, int head, int channel) const {
  return kept_[(static_cast<int64_t>(layer) * shape_.num_kv_heads + head) * shape_.head_dim +
               channel] != 0;
}

int Mask::KeptCount(int layer, int head) const {
  return static_cast<int>(channels_[layer * shape_.num_kv_heads + head].size());
}

const std::vector<int>& Mask::KeptChannels(int layer, int head) const {
  return channels_[layer * shape_.num_kv_heads + head];
}

bool Mask::IsAllOnes() const {
  for (uint8_t v : kept_) {
    if (v == 0) return false;
  }
  return !kept_.empty();
}

double Mask::KeptFraction() const {
  if (kept_.empty()) return 0.0;
  int64_t n = 0;
  for (uint8_t v : kept_) n += v;
  return static_cast<double>(n) / static_cast<double>(kept_.size());
}

}  // namespace leank::cache
