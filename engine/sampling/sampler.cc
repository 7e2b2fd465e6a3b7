#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>

namespace leank {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// log-softmax normaliser of `logits` (max + log sum exp).
double LogSumExp(std::span<const float> logits) {
  float max = kNegInf;
  for (float x : logits) max = std::max(max, x);
  if (max == kNegInf) return max;
  double sum = 0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - max);
  return max + std::log(sum);
}

// Indices of the n largest logits, largest first (ties: lower id first).
std::vector<int32_t> TopIndices(std::span<const float> logits, int n) {
  n = std::min<int>(n, logits.size());
  std::vector<int32_t> idx(logits.size());
  std::iota(idx.begin(), idx.end(), 0);
  auto greater = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), greater);
  idx.resize(n);
  return idx;
}

}  // namespace

int32_t ArgMax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

void ApplyPenalties(std::span<float> logits, const SamplingParams& params,
                    std::span<const int32_t> prompt, std::span<const int32_t> output) {
  const int64_t vocab = logits.size();
  if (params.repetition_penalty != 1.0f) {
    // HF semantics: every token seen in prompt or output, once.
    std::vector<bool> seen(vocab, false);
    auto mark = [&](std::span<const int32_t> ids) {
      for (int32_t t : ids) {
        if (t >= 0 && t < vocab) seen[t] = true;
      }
    };
    mark(prompt);
    mark(output);
    for (int64_t t = 0; t < vocab; ++t) {
      if (!seen[t]) continue;
      float& x = logits[t];
      x = x > 0 ? x / params.repetition_penalty : x * params.repetition_penalty;
    }
  }
  if (params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f) {
    // OpenAI semantics: output tokens only.
    std::unordered_map<int32_t, int> counts;
    for (int32_t t : output) {
      if (t >= 0 && t < vocab) ++counts[t];
    }
    for (const auto& [t, c] : counts) {
      logits[t] -= params.frequency_penalty * c + params.presence_penalty;
    }
  }
}

SampleResult Sampler::Sample(std::span<float> logits, const SamplingParams& params,
                             std::span<const int32_t> prompt, std::span<const int32_t> output,
                             int top_logprobs) {
  SampleResult result;
  // Logprobs are reported under the model's own distribution (before penalties and
  // filters), as vLLM does by default.
  if (top_logprobs >= 0) {
    const double lse = LogSumExp(logits);
    for (int32_t t : TopIndices(logits, top_logprobs)) {
      result.top.push_back({t, static_cast<float>(logits[t] - lse)});
    }
    result.logprob = static_cast<float>(lse);  // normaliser, fixed up below
  }
  std::vector<float> raw;
  if (top_logprobs >= 0) raw.assign(logits.begin(), logits.end());

  ApplyPenalties(logits, params, prompt, output);

  const int32_t argmax = ArgMax(logits);
  // A positive temperature so small that the largest logit overflows when divided by it
  // (e.g. 1e-40) is greedy in the limit; dividing would turn the probabilities into NaN
  // and draw the least likely token.
  if (params.greedy() || !std::isfinite(logits[argmax] / params.temperature)) {
    result.token = argmax;
  } else {
    const int64_t vocab = logits.size();
    for (float& x : logits) x /= params.temperature;
    // Candidates sorted by logit, descending; filters cut the tail.
    std::vector<int32_t> order;
    if (params.top_k > 0 && params.top_k < vocab) {
      // Every token tied with the k-th largest logit stays, as in HF transformers and
      // vLLM (they drop only logits below the k-th value) and the GPU sampler. The order
      // is total (ties by id), so the top k are a prefix of the longer list: sort again
      // only when there are such ties.
      order = TopIndices(logits, params.top_k);
      const float kth = logits[order.back()];
      const int64_t keep =
          std::count_if(logits.begin(), logits.end(), [&](float x) { return x >= kth; });
      if (keep > params.top_k) order = TopIndices(logits, keep);
    } else {
      order = TopIndices(logits, vocab);
    }
    const float max = logits[order[0]];
    std::vector<double> probs(order.size());
    double sum = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      probs[i] = std::exp(static_cast<double>(logits[order[i]]) - max);
      sum += probs[i];
    }
    for (double& p : probs) p /= sum;
    size_t cut = order.size();
    if (params.top_p < 1.0f) {
      double cum = 0;
      for (size_t i = 0; i < order.size(); ++i) {
        cum += probs[i];
        if (cum >= params.top_p) {
          cut = i + 1;
          break;
        }
      }
    }
    if (params.min_p > 0.0f) {
      const double threshold = params.min_p * probs[0];
      size_t i = 1;
      while (i < cut && probs[i] >= threshold) ++i;
      cut = i;
    }
    double kept_sum = 0;
    for (size_t i = 0; i < cut; ++i) kept_sum += probs[i];
    std::uniform_real_distribution<double> uniform(0.0, kept_sum);
    const double u = uniform(rng_);
    double cum = 0;
    result.token = order[cut - 1];
    for (size_t i = 0; i < cut; ++i) {
      cum += probs[i];
      if (u < cum) {
        result.token = order[i];
        break;
      }
    }
  }
  if (top_logprobs >= 0) {
    result.logprob = static_cast<float>(raw[result.token] - result.logprob);
  }
  return result;
}

}  // namespace leank
