#pragma once
// The host half of DecodeAttention::Plan: every layer's split-KV work list, built with
// no CUDA call, so that its coverage and balance are unit-tested and its host time
// benchmarked on any machine (tests/kernels/, bench/kernels/plan_bench.cc).
// decode_plan.cc validates the block tables, asks its DecodePlanner for the work lists
// and uploads them.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kernels/attention.h"
#include "kernels/internal.h"

namespace leank::kernels {

class HostPool;  // host_pool.h

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
// With a `pool` of more than one thread, large plans build their layers in parallel (the
// result is the same).
void BuildDecodeWork(const AttentionShape& shape, std::span<const int32_t> seq_tokens,
                     std::span<const int32_t> kept, int resident, int target_ctas,
                     const DecodeCtaChoice& last, DecodeWork* work, HostPool* pool = nullptr);

// The work lists of one DecodeAttention, step after step: keeps the CTA choice between
// steps and can build the next step's lists ahead of time. PrepareNext() (called while
// the GPU runs a step, so the host would only wait) builds the lists for the same batch
// one token longer each; Plan() uses them when its inputs are exactly those, else builds
// anew. Either way Plan's result is what BuildDecodeWork gives for its inputs and the
// choice held, so prepared lists are a pure saving, never a difference.
class DecodePlanner {
 public:
  // kept: [layers][num_kv_heads] (copied); dense: no middle region (M = 0); threads:
  // host threads a plan may use (HostPool::DefaultThreads() in DecodeAttention).
  DecodePlanner(const AttentionShape& shape, bool dense, std::span<const int32_t> kept,
                int resident, int threads = 1);
  ~DecodePlanner();

  // seq_tokens: [seqs][2] = n, M(n). target_ctas > 0 forces the CTA count (and neither
  // reads nor changes the choice held).
  const DecodeWork& Plan(std::span<const int32_t> seq_tokens, int target_ctas = 0);
  // Builds the lists of the last Plan()'s batch with every sequence one token longer.
  void PrepareNext();
  const DecodeWork& work() const { return *work_; }

  int64_t plans() const { return plans_; }
  int64_t prepared_used() const { return prepared_used_; }  // plans served by PrepareNext

 private:
  AttentionShape shape_;
  bool dense_;
  std::vector<int32_t> kept_;
  int resident_;
  std::unique_ptr<HostPool> pool_;
  DecodeCtaChoice choice_;                   // of the last Plan that searched or reused
  std::unique_ptr<DecodeWork> work_, next_;  // the current lists; the prepared ones
  std::vector<int32_t> tokens_, next_tokens_;
  DecodeCtaChoice next_from_;  // choice_ when next_ was built
  bool next_valid_ = false;
  int64_t plans_ = 0, prepared_used_ = 0;
};

}  // namespace leank::kernels
