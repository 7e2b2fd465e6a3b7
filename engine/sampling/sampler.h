#pragma once
// Token sampling on the CPU: penalties, temperature, top-k, top-p, min-p, seeded RNG.
// The order of operations (HF transformers'; vLLM applies min-p before top-k/top-p):
// repetition/presence/frequency penalties on the logits, temperature, then top-k,
// top-p and min-p filters, then a draw. Temperature 0 is greedy (argmax, lowest id on ties).

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace leank {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy
  int top_k = 0;                    // 0 = off
  float top_p = 1.0f;               // (0, 1]
  float min_p = 0.0f;               // [0, 1]
  float repetition_penalty = 1.0f;  // > 0; 1 = off (HF semantics, prompt + output)
  float presence_penalty = 0.0f;    // [-2, 2] (OpenAI semantics, output tokens)
  float frequency_penalty = 0.0f;   // [-2, 2]
  uint64_t seed = 0;
  bool has_seed = false;

  bool greedy() const { return temperature == 0.0f; }
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

struct SampleResult {
  int32_t token = 0;
  float logprob = 0.0f;           // of the chosen token, under the model's distribution
  std::vector<TokenLogprob> top;  // top-n alternatives when asked for
};

class Sampler {
 public:
  // `seed` seeds this sequence's RNG (params.seed when has_seed, else a random one).
  explicit Sampler(uint64_t seed) : rng_(seed) {}

  // logits: [vocab] (modified in place). prompt/output: token ids for penalties.
  SampleResult Sample(std::span<float> logits, const SamplingParams& params,
                      std::span<const int32_t> prompt, std::span<const int32_t> output,
                      int top_logprobs = 0);

 private:
  std::mt19937_64 rng_;
};

// Helpers shared with the GPU sampler's tests.
int32_t ArgMax(std::span<const float> logits);
void ApplyPenalties(std::span<float> logits, const SamplingParams& params,
                    std::span<const int32_t> prompt, std::span<const int32_t> output);

}  // namespace leank
