#pragma once
// CPU reference of the paged LeanK cache operations on float storage: writing new
// K/V, compaction, and attention with the semantics of cache/README.md. The CPU
// backend runs on these, and every CUDA kernel test compares against them.

#include <cstdint>

#include "cache/kv_cache.h"

namespace leank::cache {

// Float storage laid out as cache/README.md describes (elem_bytes is ignored: floats).
struct FloatStorage {
  float* full = nullptr;    // [layers][num_full_blocks][2][kv_heads][B][head_dim]
  float* pruned = nullptr;  // per-layer arenas, see CacheLayout::pruned_layer_base
  PoolSizes sizes;
};

// Writes the K/V of plan.num_new_tokens tokens at positions start_pos.. into full blocks.
// k, v: [num_new_tokens][num_kv_heads][head_dim] (k after RoPE).
void WriteKv(const CacheLayout& layout, const FloatStorage& storage, int layer,
             const AppendPlan& plan, const float* k, const float* v);

// Copies the plan's compacted blocks (full -> pruned) for one layer.
void Compact(const CacheLayout& layout, const FloatStorage& storage, int layer,
             const AppendPlan& plan);

// Attention of the new tokens' queries over the cache (after WriteKv, before or after
// Compact), causal, GQA (num_heads / num_kv_heads query heads per kv head).
// q: [num_new_tokens][num_heads][head_dim] (after RoPE); out: same shape.
// scale multiplies q.k (usually 1/sqrt(head_dim)).
void Attend(const CacheLayout& layout, const FloatStorage& storage, int layer,
            const AppendPlan& plan, int num_heads, float scale, const float* q, float* out);

}  // namespace leank::cache
