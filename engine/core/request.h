#pragma once
// A generation request as the engine sees it, and what each step returns for it.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/sampling/sampler.h"

namespace leank {

using RequestId = int64_t;

struct GenerationParams {
  SamplingParams sampling;
  int max_tokens = 256;
  int min_tokens = 0;                   // EOS and stops are ignored before this many
  std::vector<int32_t> stop_token_ids;  // besides the model's EOS ids
  std::vector<std::string> stop;        // stop strings, matched on the decoded text
  bool ignore_eos = false;
  bool include_stop_str_in_output = false;
  int logprobs = -1;  // -1: none; n >= 0: chosen token + top-n
};

enum class FinishReason { kNone, kStop, kLength, kEos, kAbort, kError };
const char* FinishReasonName(FinishReason r);  // "stop", "length", "eos", "abort", "error"

struct TokenOutput {
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<TokenLogprob> top;
};

// Incremental output of one request after one step.
struct RequestOutput {
  RequestId id = 0;
  std::vector<TokenOutput> tokens;  // tokens produced this step (usually 0 or 1)
  std::string text;                 // text delta (complete UTF-8 only; stop strings cut)
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  absl::Status error;  // set when finish_reason == kError
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
  double queue_time_s = 0;  // from AddRequest to first scheduled
  double ttft_s = 0;        // from AddRequest to first token (set once it exists)
};

}  // namespace leank
