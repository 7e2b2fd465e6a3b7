// CPU reference of the paged LeanK cache ops. Written to be obviously right first:
// one key at a time, positions resolved through the block tables exactly as
// cache/README.md states, a two-pass (max, then exp) softmax per query head.

#include "cache/reference.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace leank::cache {
namespace {

#define REF_CHECK(cond, msg)                                                          \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "cache/reference.cc:%d: %s (%s)\n", __LINE__, msg, #cond); \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)

// Eight partial sums so the compiler can vectorise without -ffast-math.
inline float Dot(const float* a, const float* b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  }
  float tail = 0;
  for (; i < n; ++i) tail += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

// Where a layer's blocks live, and how to find a position's row.
struct LayerView {
  const CacheLayout& layout;
  const AppendPlan& plan;
  int64_t B, S, H, D;
  float* full;    // this layer's full blocks
  float* pruned;  // this layer's pruned arena (nullptr in dense mode)
  int64_t full_block_elems, pruned_block_elems;
  int64_t num_full_blocks, num_pruned_blocks;

  LayerView(const CacheLayout& l, const FloatStorage& st, int layer, const AppendPlan& p)
      : layout(l), plan(p) {
    const LayoutOptions& o = l.options();
    REF_CHECK(layer >= 0 && layer < o.num_layers, "layer out of range");
    B = o.block_size;
    S = o.sink;
    H = o.num_kv_heads;
    D = o.head_dim;
    full_block_elems = l.full_block_elems();
    num_full_blocks = st.sizes.num_full_blocks;
    num_pruned_blocks = st.sizes.num_pruned_blocks;
    full = st.full + layer * st.sizes.num_full_blocks * full_block_elems;
    pruned_block_elems = l.dense() ? 0 : l.pruned_block_elems(layer);
    pruned = (l.dense() || st.pruned == nullptr)
                 ? nullptr
                 : st.pruned + l.pruned_layer_base(layer, st.sizes.num_pruned_blocks);
  }

  // Row [head_dim] of K (kv = 0) or V (kv = 1) of head h at a position held in a full block
  // (sink, or at/after S + middle_before), using the plan's pre-compaction full table.
  float* FullRow(int64_t pos, int kv, int64_t h) const {
    int64_t index, slot;
    if (pos < S) {
      index = pos / B;
      slot = pos % B;
    } else {
      const int64_t r = pos - S - plan.middle_before;
      REF_CHECK(r >= 0, "position is in the pruned middle, not in a full block");
      index = S / B + r / B;
      slot = r % B;
    }
    REF_CHECK(index < static_cast<int64_t>(plan.full_blocks.size()), "full table too short");
    const int64_t block = plan.full_blocks[index];
    REF_CHECK(block >= 0 && block < num_full_blocks, "full block id outside the storage");
    return full + block * full_block_elems + ((kv * H + h) * B + slot) * D;
  }

  // Start of pruned block pruned_blocks[index] of this layer.
  float* PrunedBlock(int64_t index) const {
    REF_CHECK(pruned != nullptr, "no pruned storage");
    REF_CHECK(index < static_cast<int64_t>(plan.pruned_blocks.size()), "pruned table too short");
    const int64_t block = plan.pruned_blocks[index];
    REF_CHECK(block >= 0 && block < num_pruned_blocks, "pruned block id outside the storage");
    return pruned + block * pruned_block_elems;
  }
};

}  // namespace

void WriteKv(const CacheLayout& layout, const FloatStorage& storage, int layer,
             const AppendPlan& plan, const float* k, const float* v) {
  const LayerView view(layout, storage, layer, plan);
  const int64_t H = view.H, D = view.D;
  for (int64_t t = 0; t < plan.num_new_tokens; ++t) {
    const int64_t pos = plan.start_pos + t;
    for (int64_t h = 0; h < H; ++h) {
      std::memcpy(view.FullRow(pos, 0, h), k + (t * H + h) * D, D * sizeof(float));
      std::memcpy(view.FullRow(pos, 1, h), v + (t * H + h) * D, D * sizeof(float));
    }
  }
}

void Compact(const CacheLayout& layout, const FloatStorage& storage, int layer,
             const AppendPlan& plan) {
  if (layout.dense()) return;
  const LayerView view(layout, storage, layer, plan);
  const int64_t B = view.B, S = view.S, D = view.D;
  // B from the layout, not plan.block_size: a hand-built plan may leave that at its default.
  const int64_t compactions = (plan.middle_after - plan.middle_before) / B;
  for (int64_t i = 0; i < compactions; ++i) {
    const int64_t first_pos = S + plan.middle_before + i * B;  // first token of the block
    float* dst = view.PrunedBlock(plan.middle_before / B + i);
    for (int64_t h = 0; h < view.H; ++h) {
      const int kept = layout.kept(layer, static_cast<int>(h));
      if (kept == 0) continue;
      const std::vector<int>& channels = layout.mask()->KeptChannels(layer, static_cast<int>(h));
      float* k_tile = dst + layout.pruned_k_offset(layer, static_cast<int>(h));
      float* v_tile = dst + layout.pruned_v_offset(layer, static_cast<int>(h));
      for (int64_t slot = 0; slot < B; ++slot) {
        const float* k_row = view.FullRow(first_pos + slot, 0, h);
        for (int c = 0; c < kept; ++c) k_tile[slot * kept + c] = k_row[channels[c]];
        std::memcpy(v_tile + slot * D, view.FullRow(first_pos + slot, 1, h), D * sizeof(float));
      }
    }
  }
}

void Attend(const CacheLayout& layout, const FloatStorage& storage, int layer,
            const AppendPlan& plan, int num_heads, float scale, const float* q, float* out) {
  const LayerView view(layout, storage, layer, plan);
  const int64_t B = view.B, S = view.S, H = view.H, D = view.D;
  REF_CHECK(num_heads > 0 && num_heads % H == 0, "num_heads must be a multiple of num_kv_heads");
  const int64_t G = num_heads / H;  // query heads per kv head (GQA)
  const int64_t max_keys = plan.start_pos + plan.num_new_tokens;
  const int64_t middle_before_end = S + plan.middle_before;

  std::vector<float> q_kept(G * D);         // [G][kept]: q gathered by the kept channels
  std::vector<float> scores(G * max_keys);  // [G][keys used]
  std::vector<const float*> v_rows(max_keys);
  std::vector<float> acc(D);
  for (int64_t t = 0; t < plan.num_new_tokens; ++t) {
    const int64_t i = plan.start_pos + t;
    const int64_t middle_end = S + layout.MiddleTokens(i + 1);  // [S, middle_end) is middle for i
    for (int64_t h = 0; h < H; ++h) {
      const int kept = layout.kept(layer, static_cast<int>(h));
      const float* q_head = q + (t * num_heads + h * G) * D;  // [G][D]
      const std::vector<int>* channels =
          layout.dense() ? nullptr : &layout.mask()->KeptChannels(layer, static_cast<int>(h));
      if (channels != nullptr) {
        for (int64_t g = 0; g < G; ++g) {
          for (int c = 0; c < kept; ++c) q_kept[g * kept + c] = q_head[g * D + (*channels)[c]];
        }
      }
      int64_t n = 0;  // keys used so far
      // Full q.k over keys [begin, end) held in full blocks (all sink, or all >= S +
      // middle_before).
      auto full_keys = [&](int64_t begin, int64_t end) {
        while (begin < end) {
          const float* k_row = view.FullRow(begin, 0, h);
          const float* v_row = view.FullRow(begin, 1, h);
          const int64_t slot = begin < S ? begin % B : (begin - middle_before_end) % B;
          const int64_t run = std::min(B - slot, end - begin);  // rows left in this block
          for (int64_t r = 0; r < run; ++r, ++n) {
            for (int64_t g = 0; g < G; ++g) {
              scores[g * max_keys + n] =
                  scale * Dot(q_head + g * D, k_row + r * D, static_cast<int>(D));
            }
            v_rows[n] = v_row + r * D;
          }
          begin += run;
        }
      };
      full_keys(0, std::min(S, i + 1));
      if (kept > 0) {  // a head keeping 0 channels skips middle keys and values entirely
        // Middle keys compacted in earlier steps: kept-channel tiles of pruned blocks.
        for (int64_t j = S; j < std::min(middle_before_end, middle_end); j += B) {
          const float* block = view.PrunedBlock((j - S) / B);
          const float* k_tile = block + layout.pruned_k_offset(layer, static_cast<int>(h));
          const float* v_tile = block + layout.pruned_v_offset(layer, static_cast<int>(h));
          for (int64_t r = 0; r < B; ++r, ++n) {
            for (int64_t g = 0; g < G; ++g) {
              scores[g * max_keys + n] =
                  scale * Dot(q_kept.data() + g * kept, k_tile + r * kept, kept);
            }
            v_rows[n] = v_tile + r * D;
          }
        }
        // Keys that become middle during this step: still in full blocks, gathered.
        for (int64_t j = middle_before_end; j < middle_end; ++j, ++n) {
          const float* k_row = view.FullRow(j, 0, h);
          for (int64_t g = 0; g < G; ++g) {
            float s = 0;
            for (int c = 0; c < kept; ++c) s += q_kept[g * kept + c] * k_row[(*channels)[c]];
            scores[g * max_keys + n] = scale * s;
          }
          v_rows[n] = view.FullRow(j, 1, h);
        }
      }
      full_keys(std::max(S, middle_end), i + 1);
      REF_CHECK(n > 0, "a query with no keys");
      for (int64_t g = 0; g < G; ++g) {
        float* s = scores.data() + g * max_keys;
        float max_score = -std::numeric_limits<float>::infinity();
        for (int64_t k = 0; k < n; ++k) max_score = std::max(max_score, s[k]);
        double sum = 0;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t k = 0; k < n; ++k) {
          const float p = std::exp(s[k] - max_score);  // <= 1: no overflow
          sum += p;
          const float* v_row = v_rows[k];
          for (int64_t d = 0; d < D; ++d) acc[d] += p * v_row[d];
        }
        const float inv = static_cast<float>(1.0 / sum);
        float* o = out + (t * num_heads + h * G + g) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = acc[d] * inv;
      }
    }
  }
}

}  // namespace leank::cache
