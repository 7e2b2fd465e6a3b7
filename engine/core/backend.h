#pragma once
// The contract between the engine and a model backend (CPU reference or CUDA).
// A backend owns the weights and the KV cache storage; block bookkeeping lives in
// cache::KvCacheManager, owned by the engine, whose AppendPlans come with each step.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cache/kv_cache.h"
#include "engine/model/config.h"

namespace leank {

// One sequence's share of a step: a chunk of its prompt or one decode token.
struct SeqWork {
  cache::AppendPlan cache;      // where the new tokens go (cache.start_pos = position of tokens[0])
  std::vector<int32_t> tokens;  // the new tokens
  bool want_logits = false;     // logits of the last new token are returned
};

struct StepPlan {
  std::vector<SeqWork> seqs;
  int64_t num_tokens() const {
    int64_t n = 0;
    for (const SeqWork& s : seqs) n += static_cast<int64_t>(s.tokens.size());
    return n;
  }
};

// Logits of the sequences with want_logits, in plan order: [rows][vocab] fp32.
struct StepOutput {
  int64_t vocab = 0;
  std::vector<float> logits;  // rows * vocab
  std::span<const float> row(int64_t i) const {
    return std::span<const float>(logits).subspan(i * vocab, vocab);
  }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // "cpu", "cuda"
  virtual const ModelConfig& config() const = 0;
  // The cache layout the backend's storage follows.
  virtual const cache::CacheLayout& layout() const = 0;
  virtual cache::PoolSizes pool_sizes() const = 0;
  // Runs the model over every SeqWork: writes their K/V, attends, performs the
  // plan's compactions, and returns logits. Errors are Internal and leave the
  // cache contents of the plan's sequences undefined (the engine aborts them).
  virtual absl::Status Forward(const StepPlan& plan, StepOutput* out) = 0;
};

}  // namespace leank
