#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace leank {
namespace {

std::vector<float> RandomLogits(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 2.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

std::vector<double> Softmax(const std::vector<float>& l, double temperature = 1.0) {
  double max = *std::max_element(l.begin(), l.end());
  std::vector<double> p(l.size());
  double sum = 0;
  for (size_t i = 0; i < l.size(); ++i) sum += p[i] = std::exp((l[i] - max) / temperature);
  for (double& x : p) x /= sum;
  return p;
}

TEST(SamplerTest, GreedyIsArgmax) {
  Sampler s(1);
  SamplingParams p;
  p.temperature = 0;
  for (uint64_t seed = 0; seed < 50; ++seed) {
    auto l = RandomLogits(1000, seed);
    const int32_t want = std::max_element(l.begin(), l.end()) - l.begin();
    EXPECT_EQ(s.Sample(l, p, {}, {}).token, want);
  }
}

TEST(SamplerTest, TemperatureSmallEnoughToOverflowIsGreedy) {
  // logit / 1e-40 overflows float: the draw must still be the argmax, not NaN
  // probabilities falling through to the least likely candidate.
  for (float temperature : {1e-40f, 1e-38f, std::numeric_limits<float>::denorm_min()}) {
    Sampler s(3);
    SamplingParams p;
    p.temperature = temperature;
    for (uint64_t seed = 0; seed < 20; ++seed) {
      auto l = RandomLogits(500, seed + 200);
      const int32_t want = std::max_element(l.begin(), l.end()) - l.begin();
      EXPECT_EQ(s.Sample(l, p, {}, {}).token, want) << temperature << " " << seed;
    }
  }
}

TEST(SamplerTest, TopKOneIsGreedyAtAnyTemperature) {
  Sampler s(7);
  SamplingParams p;
  p.temperature = 1.5f;
  p.top_k = 1;
  for (uint64_t seed = 0; seed < 50; ++seed) {
    auto l = RandomLogits(300, seed + 100);
    const int32_t want = std::max_element(l.begin(), l.end()) - l.begin();
    EXPECT_EQ(s.Sample(l, p, {}, {}).token, want);
  }
}

TEST(SamplerTest, SameSeedSameTokensOtherSeedOtherTokens) {
  SamplingParams p;
  auto draw = [&](uint64_t seed) {
    Sampler s(seed);
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) {
      auto l = RandomLogits(50, i);
      out.push_back(s.Sample(l, p, {}, {}).token);
    }
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(SamplerTest, FrequenciesFollowTheTemperedSoftmax) {
  const auto logits = RandomLogits(8, 3);
  SamplingParams p;
  p.temperature = 0.7f;
  const auto want = Softmax(logits, 0.7);
  Sampler s(11);
  constexpr int kDraws = 40000;
  std::vector<int> count(8, 0);
  for (int i = 0; i < kDraws; ++i) {
    auto l = logits;
    ++count[s.Sample(l, p, {}, {}).token];
  }
  for (int i = 0; i < 8; ++i) {
    const double sd = std::sqrt(want[i] * (1 - want[i]) / kDraws);
    EXPECT_NEAR(count[i] / double(kDraws), want[i], 5 * sd + 1e-4) << "token " << i;
  }
}

TEST(SamplerTest, TopPAndMinPNeverDrawOutsideTheirSets) {
  const auto logits = RandomLogits(40, 5);
  const auto prob = Softmax(logits);
  std::vector<int> order(40);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return prob[a] > prob[b]; });
  std::set<int> nucleus;
  double cum = 0;
  for (int t : order) {
    nucleus.insert(t);
    cum += prob[t];
    if (cum >= 0.6) break;
  }
  SamplingParams top_p;
  top_p.top_p = 0.6f;
  SamplingParams min_p;
  min_p.min_p = 0.2f;
  Sampler s(5);
  std::set<int> seen_p, seen_min;
  for (int i = 0; i < 5000; ++i) {
    auto a = logits, b = logits;
    seen_p.insert(s.Sample(a, top_p, {}, {}).token);
    seen_min.insert(s.Sample(b, min_p, {}, {}).token);
  }
  for (int t : seen_p) EXPECT_TRUE(nucleus.count(t)) << t;
  EXPECT_EQ(seen_p, nucleus);  // every member is reachable in 5000 draws
  const double pmax = prob[order[0]];
  for (int t : seen_min) EXPECT_GE(prob[t], 0.2 * pmax) << t;
}

TEST(SamplerTest, RepetitionPenaltyHfSemantics) {
  std::vector<float> l = {2.0f, -2.0f, 1.0f, 3.0f};
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  const int32_t prompt[] = {0};
  const int32_t output[] = {1, 1};
  ApplyPenalties(l, p, prompt, output);
  EXPECT_FLOAT_EQ(l[0], 1.0f);   // positive: divided
  EXPECT_FLOAT_EQ(l[1], -4.0f);  // negative: multiplied, once despite two occurrences
  EXPECT_FLOAT_EQ(l[2], 1.0f);
  EXPECT_FLOAT_EQ(l[3], 3.0f);
}

TEST(SamplerTest, PresenceAndFrequencyPenaltiesOnOutputOnly) {
  std::vector<float> l = {1.0f, 1.0f, 1.0f};
  SamplingParams p;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  const int32_t prompt[] = {2};
  const int32_t output[] = {0, 0, 1};
  ApplyPenalties(l, p, prompt, output);
  EXPECT_FLOAT_EQ(l[0], 1.0f - 0.5f - 0.5f);
  EXPECT_FLOAT_EQ(l[1], 1.0f - 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(l[2], 1.0f);
}

TEST(SamplerTest, LogprobsAreTheModelsLogSoftmax) {
  const auto logits = RandomLogits(30, 9);
  const auto prob = Softmax(logits);
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 1.3f;  // penalties do not change reported logprobs
  Sampler s(1);
  auto l = logits;
  const int32_t prompt[] = {3, 4};
  SampleResult r = s.Sample(l, p, prompt, {}, 5);
  ASSERT_EQ(r.top.size(), 5u);
  for (size_t i = 0; i + 1 < r.top.size(); ++i) EXPECT_GE(r.top[i].logprob, r.top[i + 1].logprob);
  for (const auto& t : r.top) EXPECT_NEAR(t.logprob, std::log(prob[t.token]), 1e-5);
  EXPECT_NEAR(r.logprob, std::log(prob[r.token]), 1e-5);
}

TEST(SamplerTest, TopKKeepsEveryTokenTiedWithTheKthLogit) {
  // HF transformers and vLLM drop only logits below the k-th largest: ties at the
  // boundary all stay in (top_k = 2 over {5, 3, 3, 3, ...} keeps four tokens).
  std::mt19937_64 rng(17);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> logits = RandomLogits(64, 300 + trial);
    for (float& x : logits) x = std::min(x, 1.0f);
    // Ties with the second largest at random ids, some below and some above the max's.
    std::vector<int> ids(64);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    logits[ids[0]] = 3.0f;
    const int ties = 2 + trial % 4;
    std::set<int> want = {ids[0]};
    for (int i = 1; i <= ties; ++i) {
      logits[ids[i]] = 2.0f;
      want.insert(ids[i]);
    }
    SamplingParams p;
    p.temperature = 1.0f;
    p.top_k = 2;
    Sampler s(trial);
    std::set<int> seen;
    for (int i = 0; i < 3000; ++i) {
      auto l = logits;
      seen.insert(s.Sample(l, p, {}, {}).token);
    }
    EXPECT_EQ(seen, want) << "trial " << trial;
  }
}

TEST(SamplerTest, TopKLargerThanTheVocabularyIsOff) {
  const auto logits = RandomLogits(6, 21);
  SamplingParams off, huge;
  huge.top_k = 1 << 30;
  Sampler a(5), b(5);
  for (int i = 0; i < 200; ++i) {
    auto l1 = logits, l2 = logits;
    EXPECT_EQ(a.Sample(l1, off, {}, {}).token, b.Sample(l2, huge, {}, {}).token);
  }
}

}  // namespace
}  // namespace leank
