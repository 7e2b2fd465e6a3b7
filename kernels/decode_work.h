#pragma once
// The host half of DecodeAttention::Plan: every layer's split-KV work list, built with
// no CUDA call, so that its coverage and balance are unit-tested and its host time
// benchmarked on any machine (tests/kernels/, bench/kernels/plan_bench.cc).
// decode_plan.cc validates the block tables, calls BuildDecodeWork and uploads the result.

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/attention.h"
#include "kernels/internal.h"

namespace leank::kernels {

struct DecodeWork {
  // Every layer's items, layer after layer; within a layer largest (bytes) first. A
  // (seq, kv head)'s items have contiguous slots, full region first.
  std::vector<detail::DecodeItem> items;
  // [layers][seqs * H + 1]: the slot range of each (seq, kv head), seq-major.
  std::vector<int32_t> merge_ptr;
  std::vector<int> layer_items;        // [layers]
  std::vector<int> layer_item_offset;  // [layers] into items
  std::vector<int64_t> layer_bytes;    // [layers] K/V bytes the layer must read
  int max_items = 0;                   // the largest layer_items
  DecodeCtaChoice choice;              // what this plan used
};

// seq_tokens: [seqs][2] = n, M(n) (M = 0 in dense mode).
// kept:       [layers][num_kv_heads] kept channels (read only where M > 0).
// resident:   decode CTAs resident on the device at once (SMs x CTAs per SM).
// target_ctas > 0 forces the CTAs per layer (tests, benchmarks); otherwise the choice
// of `last` is reused when it still applies, else searched (0.5 to 8 resident waves,
// smallest predicted makespan on the heaviest layer).
// The result replaces `*work`'s contents; pass the same DecodeWork each step so that its
// vectors keep their capacity (a plan then allocates nothing once the batch is steady).
void BuildDecodeWork(const AttentionShape& shape, std::span<const int32_t> seq_tokens,
                     std::span<const int32_t> kept, int resident, int target_ctas,
                     const DecodeCtaChoice& last, DecodeWork* work);

}  // namespace leank::kernels
