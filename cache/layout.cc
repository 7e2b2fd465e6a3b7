#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "cache/kv_cache.h"

namespace leank::cache {

absl::StatusOr<CacheLayout> CacheLayout::Create(const LayoutOptions& options,
                                                std::optional<Mask> mask) {
  const LayoutOptions& o = options;
  if (o.num_layers <= 0 || o.num_kv_heads <= 0 || o.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("cache layout: num_layers ", o.num_layers,
                                                   ", num_kv_heads ", o.num_kv_heads, ", head_dim ",
                                                   o.head_dim, " must all be positive"));
  }
  if (o.block_size <= 0 || o.block_size % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cache layout: block_size ", o.block_size,
                                                   " is not a positive multiple of 16"));
  }
  if (o.sink < 0 || o.sink % o.block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cache layout: sink ", o.sink, " is not a multiple of block_size ", o.block_size));
  }
  if (o.recent < o.block_size || o.recent % o.block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cache layout: recent ", o.recent,
                                                   " is not a positive multiple of block_size ",
                                                   o.block_size));
  }
  if (o.elem_bytes != 2 && o.elem_bytes != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache layout: elem_bytes ", o.elem_bytes, " must be 2 or 4"));
  }
  if (mask.has_value()) {
    const MaskShape& s = mask->shape();
    const MaskShape want{o.num_layers, o.num_kv_heads, o.head_dim};
    if (!(s == want) || static_cast<int64_t>(mask->raw().size()) !=
                            static_cast<int64_t>(s.num_layers) * s.num_kv_heads * s.head_dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache layout: mask shape [", s.num_layers, ", ", s.num_kv_heads, ", ",
                       s.head_dim, "] does not match the model's [", o.num_layers, ", ",
                       o.num_kv_heads, ", ", o.head_dim, "] (layers, kv heads, head_dim)"));
    }
  }

  CacheLayout layout;
  layout.options_ = options;
  layout.mask_ = std::move(mask);
  const int64_t B = o.block_size, H = o.num_kv_heads, D = o.head_dim;
  layout.pruned_block_elems_.resize(o.num_layers);
  layout.pruned_layer_prefix_.resize(o.num_layers);
  layout.k_offset_.assign(static_cast<size_t>(o.num_layers) * H, -1);
  layout.v_offset_.assign(static_cast<size_t>(o.num_layers) * H, -1);
  int64_t prefix = 0;
  for (int l = 0; l < o.num_layers; ++l) {
    int64_t kept_sum = 0;
    for (int h = 0; h < H; ++h) kept_sum += layout.kept(l, h);
    int64_t k_off = 0, live_before = 0;
    for (int h = 0; h < H; ++h) {
      const int kept = layout.kept(l, h);
      if (kept == 0) continue;
      layout.k_offset_[l * H + h] = k_off;
      layout.v_offset_[l * H + h] = B * kept_sum + B * D * live_before;
      k_off += B * kept;
      ++live_before;
    }
    layout.pruned_block_elems_[l] = B * (kept_sum + D * live_before);
    layout.pruned_layer_prefix_[l] = prefix;
    prefix += layout.pruned_block_elems_[l];
  }
  return layout;
}

int64_t CacheLayout::MiddleTokens(int64_t n) const {
  if (dense()) return 0;
  const int64_t B = options_.block_size;
  const int64_t over = n - options_.sink - options_.recent;
  return over <= 0 ? 0 : B * (over / B);
}

int64_t CacheLayout::full_block_elems() const {
  return 2LL * options_.num_kv_heads * options_.block_size * options_.head_dim;
}

int64_t CacheLayout::pruned_block_elems(int layer) const { return pruned_block_elems_[layer]; }

int64_t CacheLayout::pruned_k_offset(int layer, int head) const {
  return k_offset_[layer * options_.num_kv_heads + head];
}

int64_t CacheLayout::pruned_v_offset(int layer, int head) const {
  return v_offset_[layer * options_.num_kv_heads + head];
}

int CacheLayout::kept(int layer, int head) const {
  return mask_.has_value() ? mask_->KeptCount(layer, head) : options_.head_dim;
}

int64_t CacheLayout::pruned_layer_base(int layer, int64_t num_pruned_blocks) const {
  return num_pruned_blocks * pruned_layer_prefix_[layer];
}

int64_t CacheLayout::full_bytes_per_token() const {
  return full_block_bytes() / options_.block_size;
}

int64_t CacheLayout::pruned_bytes_per_token() const {
  return pruned_block_bytes() / options_.block_size;
}

int64_t CacheLayout::full_block_bytes() const {
  return static_cast<int64_t>(options_.num_layers) * full_block_elems() * options_.elem_bytes;
}

int64_t CacheLayout::pruned_block_bytes() const {
  int64_t elems = 0;
  for (int64_t e : pruned_block_elems_) elems += e;
  return elems * options_.elem_bytes;
}

PoolSizes SplitBudget(const CacheLayout& layout, int64_t budget_bytes, int64_t target_context,
                      int64_t step_tokens) {
  constexpr int64_t kMaxBlocks = std::numeric_limits<int32_t>::max();  // block ids are int32
  PoolSizes sizes;
  if (budget_bytes <= 0) return sizes;
  const int64_t full_bytes = layout.full_block_bytes();
  const int64_t pruned_bytes = layout.pruned_block_bytes();
  const int64_t B = layout.block_size();
  const LayoutOptions& o = layout.options();
  const int64_t target = std::max<int64_t>(target_context, 1);
  const int64_t pruned_per_seq = layout.MiddleTokens(target) / B;
  if (layout.dense() || pruned_per_seq == 0) {
    sizes.num_full_blocks = std::min(budget_bytes / full_bytes, kMaxBlocks);
    return sizes;
  }
  // A step's prefill tokens sit in full blocks until compaction at the end of the step.
  // Never more than half the budget: a tiny pool shrinks its prefill chunks instead.
  const int64_t reserved_full = std::min(step_tokens > 0 ? (step_tokens + B - 1) / B + 1 : 0,
                                         budget_bytes / 2 / full_bytes);
  budget_bytes -= reserved_full * full_bytes;
  const int64_t full_tokens = std::min<int64_t>(target, int64_t{o.sink} + o.recent + B - 1);
  const int64_t full_per_seq = (full_tokens + B - 1) / B + 1;
  const __int128 seq_bytes = static_cast<__int128>(full_per_seq) * full_bytes +
                             static_cast<__int128>(pruned_per_seq) * pruned_bytes;
  const int64_t num_pruned =
      static_cast<int64_t>(static_cast<__int128>(budget_bytes) * pruned_per_seq / seq_bytes);
  sizes.num_pruned_blocks = std::min(num_pruned, kMaxBlocks);
  sizes.num_full_blocks = std::min(
      (budget_bytes - sizes.num_pruned_blocks * pruned_bytes) / full_bytes + reserved_full,
      kMaxBlocks);
  return sizes;
}

}  // namespace leank::cache
