#pragma once
// The contract between the engine and a model backend (CPU reference or CUDA).
// A backend owns the weights and the KV cache storage; block bookkeeping lives in
// cache::KvCacheManager, owned by the engine, whose AppendPlans come with each step.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cache/kv_cache.h"
#include "engine/model/config.h"
#include "engine/sampling/sampler.h"

namespace leank {

// What a backend that samples on the device (Backend::samples_on_device) needs to draw
// a sequence's next token: the same inputs as Sampler::Sample on the CPU.
struct DeviceSample {
  SamplingParams params;
  uint64_t seed = 0;  // the request's seed (params.seed when has_seed, else a random one)
  uint64_t step = 0;  // output tokens so far: the draw depends only on (seed, step)
  // Tokens that cannot be drawn this step (EOS and stop ids before min_tokens); they are
  // -inf in the "raw" logits the logprob is taken under, as on the CPU path.
  std::vector<int32_t> banned;
  // For penalties; valid during Forward only.
  std::span<const int32_t> prompt, output;
};

// One sequence's share of a step: a chunk of its prompt or one decode token.
struct SeqWork {
  cache::AppendPlan cache;      // where the new tokens go (cache.start_pos = position of tokens[0])
  std::vector<int32_t> tokens;  // the new tokens
  bool want_logits = false;     // logits of the last new token are returned
  // Set (by the engine, only when the backend samples_on_device() and want_logits) to
  // have the backend draw the next token itself: StepOutput::sampled.
  std::optional<DeviceSample> sample;
};

struct StepPlan {
  std::vector<SeqWork> seqs;
  int64_t num_tokens() const {
    int64_t n = 0;
    for (const SeqWork& s : seqs) n += static_cast<int64_t>(s.tokens.size());
    return n;
  }
};

struct SampledToken {
  int32_t token = 0;
  float logprob = 0.0f;  // under the raw logits (before penalties and filters), as the CPU's
};

// Per sequence with want_logits, in plan order (row i = the i-th such sequence):
// - logits: [rows][vocab] fp32 for every row, except that when every row's SeqWork had
//   `sample`, the backend may leave it empty (a device sampler skips the copy);
// - sampled: [rows] when any SeqWork had `sample`; valid only for the rows that had it
//   (other rows hold token -1). Empty otherwise.
struct StepOutput {
  int64_t vocab = 0;
  std::vector<float> logits;  // rows * vocab (see above)
  std::vector<SampledToken> sampled;
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
  // True when Forward honours SeqWork::sample (draws tokens on the device).
  virtual bool samples_on_device() const { return false; }
  // Runs the model over every SeqWork: writes their K/V, attends, performs the
  // plan's compactions, and returns logits (and sampled tokens). Errors are Internal and leave the
  // cache contents of the plan's sequences undefined (the engine aborts them).
  virtual absl::Status Forward(const StepPlan& plan, StepOutput* out) = 0;
};

}  // namespace leank
