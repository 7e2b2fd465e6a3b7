#pragma once
// What the load tester sends: prompt/output lengths drawn from a distribution, and
// prompts made either synthetically (exact token lengths, sent as token ids) or from a
// ShareGPT-style dataset of conversations (sent as chat messages or text).

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace leank::bench {

enum class LengthDist { kFixed, kUniform, kNormal };

// fixed: `mean`; uniform: integers in [mean - spread, mean + spread];
// normal: round(N(mean, spread)). Always clamped to >= 1.
struct LengthSpec {
  LengthDist dist = LengthDist::kFixed;
  int mean = 128;
  double spread = 0;
};

absl::StatusOr<LengthDist> ParseLengthDist(const std::string& name);
const char* LengthDistName(LengthDist d);
int SampleLength(const LengthSpec& spec, std::mt19937_64& rng);

struct BenchPrompt {
  // Exactly one input is used: token_ids when non-empty, else messages when non-empty,
  // else text.
  std::vector<int32_t> token_ids;
  std::vector<std::pair<std::string, std::string>> messages;  // (role, content)
  std::string text;
  int input_tokens = 0;   // prompt length as the server will see it
  int output_tokens = 0;  // max_tokens to ask for
};

// Prompts of exact token lengths: each is `corpus` read from a random offset, wrapping
// around, for its sampled length. Output lengths are sampled independently.
// input + output is clamped to `max_model_len` (0: no clamp) by shortening the input.
std::vector<BenchPrompt> MakeSyntheticPrompts(const std::vector<int32_t>& corpus, int64_t n,
                                              const LengthSpec& input, const LengthSpec& output,
                                              int max_model_len, uint64_t seed);

// A few paragraphs of plain English text; tokenized by the server to make the corpus.
const std::string& SyntheticCorpusText();

// Tokens of a prompt as the server sees it: its messages rendered with the chat template
// when it has messages, else its text (with BOS etc. when add_special_tokens).
using TokenCounter = std::function<absl::StatusOr<int>(const BenchPrompt&, bool)>;

struct DatasetOptions {
  int64_t max_prompts = 1000;
  int fixed_output_len = 0;  // 0: the length of the conversation's first reply
  int max_model_len = 0;     // 0: no limit
  // vLLM's ShareGPT filter (is_valid_sequence): prompts over 1024 tokens or prompt +
  // output over 2048 are skipped. 0: no such cap (max_model_len still applies).
  int max_input_len = 1024;
  int max_total_len = 2048;
  bool as_messages = true;  // send the prompt as a user message (chat template), else text
  bool shuffle = true;
  uint64_t seed = 0;
};

// Reads conversations, one JSON object per line (JSONL) or one JSON array of objects
// (the ShareGPT release). An object has either "conversations": [{"from": "human" |
// "user" | "gpt" | "assistant" | "system", "value": ...}] (ShareGPT) or "messages":
// [{"role", "content"}] (OpenAI), or "prompt" (+ optional "output_len"). The first
// user turn is the prompt, the reply after it gives the output length. Rows with a
// prompt or reply under 4 tokens (the reply only when it sets the output length), a
// prompt over max_input_len, or prompt + output over max_total_len (vLLM's benchmark
// filter, defaults 1024 / 2048) or max_model_len are skipped. Errors name the file and
// line.
absl::StatusOr<std::vector<BenchPrompt>> LoadConversations(const std::string& path,
                                                           const DatasetOptions& options,
                                                           const TokenCounter& count_tokens);

}  // namespace leank::bench
