// GPU sampling (engine/cuda/gpu_sampler.h, kernels/model/sampling.h) against the CPU
// sampler (engine/sampling): greedy bit-exact with ArgMax (ties, -inf, NaN), penalties
// bit-exact with ApplyPenalties, logprobs within 1e-4, the draw distribution against the
// CPU's exact filtered probabilities (chi-square at a 1e-6 false-alarm rate, and never a
// token outside the CPU's kept set), draws that depend only on (seed, step), and the CUDA
// engine's greedy output with gpu_sampling on == off. Skips without a GPU.

#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "engine/core/backend.h"
#include "engine/core/engine.h"
#include "engine/cuda/gpu_sampler.h"
#include "engine/sampling/sampler.h"
#include "kernels/model/sampling.h"
#include "tests/engine/tiny_model.h"

namespace leank {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

bool HasGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
// One GPU sampling step over host rows; returns the results and the rows as the kernel
// left them (bans and penalties applied in place).
struct GpuRun {
  std::vector<SampledToken> sampled;
  std::vector<float> after;  // [rows][vocab]
};

class GpuSamplingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HasGpu()) GTEST_SKIP() << "no CUDA device";
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
  }
  void TearDown() override {
    if (stream_) cudaStreamDestroy(stream_);
    if (d_logits_) cudaFree(d_logits_);
  }

  GpuRun Run(const std::vector<float>& logits, int64_t vocab,
             const std::vector<const DeviceSample*>& samples) {
    GpuRun run;
    const size_t bytes = logits.size() * 4;
    if (bytes > logits_bytes_) {
      if (d_logits_) cudaFree(d_logits_);
      EXPECT_EQ(cudaMalloc(&d_logits_, bytes), cudaSuccess);
      logits_bytes_ = bytes;
    }
    EXPECT_EQ(cudaMemcpy(d_logits_, logits.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
    absl::Status s = sampler_.Enqueue(d_logits_, vocab, samples, stream_);
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    sampler_.Results(&run.sampled);
    run.after.resize(logits.size());
    EXPECT_EQ(cudaMemcpy(run.after.data(), d_logits_, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    return run;
  }

  cudaStream_t stream_ = nullptr;
  float* d_logits_ = nullptr;
  size_t logits_bytes_ = 0;
  cuda::GpuSampler sampler_;
};

std::vector<float> RandomRow(int64_t vocab, std::mt19937_64& rng, float scale) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> row(vocab);
  for (float& x : row) x = dist(rng);
  return row;
}

double LogSumExp(std::span<const float> row) {
  double max = -INFINITY;
  for (float x : row) max = std::max<double>(max, x);
  double sum = 0;
  for (float x : row) sum += std::exp(x - max);
  return max + std::log(sum);
}

// The CPU sampler's kept set and probabilities (engine/sampling/sampler.cc, step by step):
// probs[v] = 0 outside the kept set.
std::vector<double> CpuProbs(std::vector<float> l, const SamplingParams& params,
                             std::span<const int32_t> prompt, std::span<const int32_t> output) {
  ApplyPenalties(l, params, prompt, output);
  const int64_t vocab = l.size();
  for (float& x : l) x /= params.temperature;
  int64_t keep = vocab;
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
  if (params.top_k > 0 && params.top_k < vocab) {
    keep = params.top_k;  // and every token tied with the k-th
    while (keep < vocab && l[order[keep]] == l[order[params.top_k - 1]]) ++keep;
  }
  order.resize(keep);
  const double max = l[order[0]];
  std::vector<double> p(order.size());
  double sum = 0;
  for (size_t i = 0; i < order.size(); ++i) sum += p[i] = std::exp(double(l[order[i]]) - max);
  for (double& x : p) x /= sum;
  size_t cut = order.size();
  if (params.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      cum += p[i];
      if (cum >= params.top_p) {
        cut = i + 1;
        break;
      }
    }
  }
  if (params.min_p > 0.0f) {
    const double threshold = params.min_p * p[0];
    size_t i = 1;
    while (i < cut && p[i] >= threshold) ++i;
    cut = i;
  }
  std::vector<double> probs(vocab, 0.0);
  double kept = 0;
  for (size_t i = 0; i < cut; ++i) kept += p[i];
  for (size_t i = 0; i < cut; ++i) probs[order[i]] = p[i] / kept;
  return probs;
}

// Upper 1e-6 quantile of chi-square with `df` degrees of freedom (Wilson-Hilferty).
double ChiSquareLimit(int df) {
  const double z = 4.7534;  // standard normal, one-sided 1e-6
  const double a = 2.0 / (9.0 * df);
  return df * std::pow(1 - a + z * std::sqrt(a), 3);
}

TEST_F(GpuSamplingTest, GreedyIsBitExactWithCpuArgMax) {
  std::mt19937_64 rng(11);
  for (int64_t vocab : {50, 1000, 128256}) {
    SCOPED_TRACE(vocab);
    const int rows = 48;
    std::vector<float> logits;
    for (int r = 0; r < rows; ++r) {
      std::vector<float> row = RandomRow(vocab, rng, 3.0f);
      std::uniform_int_distribution<int64_t> pick(0, vocab - 1);
      const int64_t top = std::max_element(row.begin(), row.end()) - row.begin();
      switch (r % 8) {
        case 0:  // exact tie with the maximum, before and after it
          row[pick(rng)] = row[top];
          row[pick(rng)] = row[top];
          break;
        case 1:  // -inf entries, and the maximum tied at a lower index
          for (int i = 0; i < 10; ++i) row[pick(rng)] = -kInf;
          row[0] = row[top];
          break;
        case 2:  // NaN entries (not at 0), one of them where the maximum was
          for (int i = 0; i < 10; ++i) row[1 + pick(rng) % (vocab - 1)] = NAN;
          if (top != 0) row[top] = NAN;
          break;
        case 3:  // NaN at index 0: the CPU returns 0
          row[0] = NAN;
          break;
        case 4:  // all -inf but one
          std::fill(row.begin(), row.end(), -kInf);
          row[pick(rng)] = 1.0f;
          break;
        case 5:  // all -inf: the CPU returns 0
          std::fill(row.begin(), row.end(), -kInf);
          break;
        case 6:  // +0 and -0 tied at the top
          std::fill(row.begin(), row.end(), -1.0f);
          row[vocab / 2] = -0.0f;
          row[vocab - 1] = 0.0f;
          break;
        default:
          break;
      }
      logits.insert(logits.end(), row.begin(), row.end());
    }
    std::vector<DeviceSample> samples(rows);
    std::vector<const DeviceSample*> ptrs;
    for (DeviceSample& s : samples) {
      s.params.temperature = 0;
      ptrs.push_back(&s);
    }
    ptrs[5] = nullptr;  // an unsampled row in between
    const GpuRun run = Run(logits, vocab, ptrs);
    ASSERT_EQ(run.sampled.size(), size_t(rows));
    for (int r = 0; r < rows; ++r) {
      SCOPED_TRACE(r);
      if (!ptrs[r]) {
        EXPECT_EQ(run.sampled[r].token, -1);
        continue;
      }
      std::span<const float> row(logits.data() + r * vocab, vocab);
      EXPECT_EQ(run.sampled[r].token, ArgMax(row));
      const bool finite_row =
          std::none_of(row.begin(), row.end(), [](float x) { return std::isnan(x); }) &&
          std::any_of(row.begin(), row.end(), [](float x) { return x > -kInf; });
      if (finite_row) {
        EXPECT_NEAR(run.sampled[r].logprob, row[run.sampled[r].token] - LogSumExp(row), 1e-4);
      }
    }
  }
}

// A positive temperature so small that the largest tempered logit overflows (1e-40 with
// logits of a few units: +inf, or -inf when every logit is negative) is greedy, as in the
// CPU sampler; dividing would make the masses NaN and draw an arbitrary token.
TEST_F(GpuSamplingTest, OverflowingTinyTemperatureIsGreedy) {
  std::mt19937_64 rng(21);
  const int64_t vocab = 1000;
  const int rows = 6;
  std::vector<float> logits;
  for (int r = 0; r < rows; ++r) {
    std::vector<float> row = RandomRow(vocab, rng, 3.0f);
    if (r % 2 == 1) {
      for (float& x : row) x = -std::abs(x) - 0.5f;  // every logit negative
    }
    logits.insert(logits.end(), row.begin(), row.end());
  }
  std::vector<DeviceSample> samples(rows);
  std::vector<const DeviceSample*> ptrs;
  for (int r = 0; r < rows; ++r) {
    DeviceSample& s = samples[r];
    s.params.temperature = r < 4 ? 1e-40f : 1e-38f;
    if (r >= 2) {
      s.params.top_k = 5;
      s.params.top_p = 0.9f;
      s.params.min_p = 0.1f;
    }
    s.seed = 1000 + r;
    ptrs.push_back(&s);
  }
  const GpuRun run = Run(logits, vocab, ptrs);
  ASSERT_EQ(run.sampled.size(), size_t(rows));
  for (int r = 0; r < rows; ++r) {
    SCOPED_TRACE(r);
    std::span<const float> row(logits.data() + r * vocab, vocab);
    // The CPU sampler on the same row and parameters.
    std::vector<float> cpu_row(row.begin(), row.end());
    Sampler cpu(samples[r].seed);
    const SampleResult want = cpu.Sample(cpu_row, samples[r].params, {}, {}, 0);
    EXPECT_EQ(want.token, ArgMax(row));
    EXPECT_EQ(run.sampled[r].token, want.token);
  }
}

TEST_F(GpuSamplingTest, PenaltiesAndBansAreBitExactWithCpu) {
  std::mt19937_64 rng(12);
  const int64_t vocab = 1000;
  const int rows = 24;
  std::vector<float> logits;
  std::vector<DeviceSample> samples(rows);
  std::vector<std::vector<int32_t>> prompts(rows), outputs(rows);
  std::uniform_int_distribution<int32_t> tok(0, 199);  // repeats likely
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (int r = 0; r < rows; ++r) {
    std::vector<float> row = RandomRow(vocab, rng, 2.0f);
    logits.insert(logits.end(), row.begin(), row.end());
    prompts[r].resize(20 + r * 5);
    outputs[r].resize(r * 3);
    for (int32_t& t : prompts[r]) t = tok(rng);
    for (int32_t& t : outputs[r]) t = tok(rng);
    DeviceSample& s = samples[r];
    s.params.temperature = 0;
    s.params.repetition_penalty = r % 3 == 0 ? 1.0f : 0.5f + 1.5f * unit(rng);
    s.params.presence_penalty = r % 4 == 1 ? 0.0f : -2.0f + 4.0f * unit(rng);
    s.params.frequency_penalty = r % 5 == 2 ? 0.0f : -2.0f + 4.0f * unit(rng);
    if (r % 2 == 0) s.banned = {tok(rng), tok(rng), 999};
    s.prompt = prompts[r];
    s.output = outputs[r];
  }
  std::vector<const DeviceSample*> ptrs;
  for (const DeviceSample& s : samples) ptrs.push_back(&s);
  const GpuRun run = Run(logits, vocab, ptrs);
  int changed = 0;
  for (int r = 0; r < rows; ++r) {
    SCOPED_TRACE(r);
    std::vector<float> raw(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
    for (int32_t t : samples[r].banned) raw[t] = -kInf;
    std::vector<float> want = raw;
    ApplyPenalties(want, samples[r].params, prompts[r], outputs[r]);
    for (int64_t v = 0; v < vocab; ++v) {
      ASSERT_EQ(run.after[r * vocab + v], want[v]) << "token " << v;  // bit-exact (no NaN here)
    }
    changed += want != raw;
    EXPECT_EQ(run.sampled[r].token, ArgMax(want));
    EXPECT_NEAR(run.sampled[r].logprob, raw[run.sampled[r].token] - LogSumExp(raw), 1e-4);
  }
  EXPECT_GT(changed, rows / 2);
}

struct DistCase {
  const char* name;
  SamplingParams params;
  bool penalties = false;
};

TEST_F(GpuSamplingTest, DrawsFollowTheCpuFilteredDistribution) {
  const int64_t vocab = 50;
  const int kDraws = 24000, kBatch = 2000;
  std::mt19937_64 rng(13);
  const std::vector<float> base = RandomRow(vocab, rng, 1.5f);
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  const std::vector<int32_t> output = {3, 3, 7, 20, 20, 20, 41};
  auto P = [](float t, int k, float p, float m) {
    SamplingParams s;
    s.temperature = t;
    s.top_k = k;
    s.top_p = p;
    s.min_p = m;
    return s;
  };
  std::vector<DistCase> cases = {
      {"temperature 1", P(1.0f, 0, 1.0f, 0.0f)},
      {"temperature 0.6", P(0.6f, 0, 1.0f, 0.0f)},
      {"temperature 1.7", P(1.7f, 0, 1.0f, 0.0f)},
      {"top_k 5", P(1.0f, 5, 1.0f, 0.0f)},
      {"top_k 1", P(1.0f, 1, 1.0f, 0.0f)},
      {"top_p 0.8", P(1.2f, 0, 0.8f, 0.0f)},
      {"top_p 0.3", P(1.0f, 0, 0.3f, 0.0f)},
      {"min_p 0.1", P(1.0f, 0, 1.0f, 0.1f)},
      {"top_k 20 top_p 0.9 min_p 0.05", P(0.8f, 20, 0.9f, 0.05f)},
      {"top_k 12 top_p 0.7", P(1.0f, 12, 0.7f, 0.0f)},
      {"penalties top_p 0.95", P(1.0f, 0, 0.95f, 0.0f), true},
  };
  cases.back().params.repetition_penalty = 1.4f;
  cases.back().params.frequency_penalty = 0.5f;
  cases.back().params.presence_penalty = 0.25f;
  for (size_t c = 0; c < cases.size(); ++c) {
    const DistCase& dc = cases[c];
    SCOPED_TRACE(dc.name);
    std::span<const int32_t> pr =
        dc.penalties ? std::span<const int32_t>(prompt) : std::span<const int32_t>();
    std::span<const int32_t> out =
        dc.penalties ? std::span<const int32_t>(output) : std::span<const int32_t>();
    const std::vector<double> probs = CpuProbs(base, dc.params, pr, out);
    std::vector<int64_t> counts(vocab, 0);
    std::vector<float> logits;
    for (int i = 0; i < kBatch; ++i) logits.insert(logits.end(), base.begin(), base.end());
    std::vector<DeviceSample> samples(kBatch);
    std::vector<const DeviceSample*> ptrs;
    for (DeviceSample& s : samples) {
      s.params = dc.params;
      s.seed = 0x5eed0000 + c;
      s.prompt = pr;
      s.output = out;
      ptrs.push_back(&s);
    }
    const double lse = LogSumExp(base);
    for (int done = 0; done < kDraws; done += kBatch) {
      for (int i = 0; i < kBatch; ++i) samples[i].step = done + i;
      const GpuRun run = Run(logits, vocab, ptrs);
      for (int i = 0; i < kBatch; ++i) {
        const int32_t t = run.sampled[i].token;
        ASSERT_TRUE(t >= 0 && t < vocab);
        ASSERT_GT(probs[t], 0.0) << "token " << t << " is outside the CPU's kept set";
        ++counts[t];
        ASSERT_NEAR(run.sampled[i].logprob, base[t] - lse, 1e-4);
      }
    }
    // Chi-square over the kept tokens, smallest expected counts grouped until each group
    // expects >= 5 (a short remainder joins the last group).
    std::vector<int64_t> kept;
    for (int64_t v = 0; v < vocab; ++v) {
      if (probs[v] > 0) kept.push_back(v);
    }
    std::sort(kept.begin(), kept.end(), [&](int64_t a, int64_t b) { return probs[a] < probs[b]; });
    std::vector<std::pair<double, double>> groups;  // (expected, observed)
    double ge = 0, go = 0;
    for (int64_t v : kept) {
      ge += probs[v] * kDraws;
      go += counts[v];
      if (ge >= 5) {
        groups.push_back({ge, go});
        ge = go = 0;
      }
    }
    if (ge > 0 && !groups.empty()) {
      groups.back().first += ge;
      groups.back().second += go;
    }
    double chi2 = 0;
    for (auto [e, o] : groups) chi2 += (o - e) * (o - e) / e;
    const int bins = static_cast<int>(groups.size());
    if (bins <= 1) {
      // One kept token (top_k 1): every draw is it.
      EXPECT_EQ(*std::max_element(counts.begin(), counts.end()), kDraws);
      continue;
    }
    EXPECT_LT(chi2, ChiSquareLimit(bins - 1)) << "bins " << bins;
  }
}

TEST_F(GpuSamplingTest, LargeVocabFiltersKeepTheCpuSet) {
  const int64_t vocab = 128256;
  const int rows = 16;
  std::mt19937_64 rng(14);
  std::vector<float> logits;
  std::vector<DeviceSample> samples(rows);
  std::vector<const DeviceSample*> ptrs;
  for (int r = 0; r < rows; ++r) {
    std::vector<float> row = RandomRow(vocab, rng, 4.0f);
    logits.insert(logits.end(), row.begin(), row.end());
    DeviceSample& s = samples[r];
    s.params.temperature = 0.5f + 0.1f * r;
    s.params.top_k = r % 2 ? 50 : 0;
    s.params.top_p = r % 3 ? 0.9f : 1.0f;
    s.params.min_p = r % 4 == 3 ? 0.05f : 0.0f;
    s.seed = 77 + r;
    s.step = 5;
    ptrs.push_back(&s);
  }
  std::vector<std::vector<double>> probs(rows);
  std::vector<double> lse(rows);
  for (int r = 0; r < rows; ++r) {
    std::vector<float> row(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
    probs[r] = CpuProbs(row, samples[r].params, {}, {});
    lse[r] = LogSumExp(row);
  }
  for (int rep = 0; rep < 4; ++rep) {
    for (DeviceSample& s : samples) s.step += 1;
    const GpuRun run = Run(logits, vocab, ptrs);
    for (int r = 0; r < rows; ++r) {
      SCOPED_TRACE(r);
      const int32_t t = run.sampled[r].token;
      ASSERT_TRUE(t >= 0 && t < vocab);
      EXPECT_GT(probs[r][t], 0.0) << "token " << t << " is outside the CPU's kept set";
      EXPECT_NEAR(run.sampled[r].logprob, logits[r * vocab + t] - lse[r], 1e-4);
    }
  }
}

TEST_F(GpuSamplingTest, DrawDependsOnlyOnSeedAndStep) {
  const int64_t vocab = 1000;
  std::mt19937_64 rng(15);
  const std::vector<float> base = RandomRow(vocab, rng, 1.0f);
  // 64 (seed, step) pairs, sampled in order and then shuffled among other rows.
  const int n = 64;
  std::vector<DeviceSample> samples(n);
  for (int i = 0; i < n; ++i) {
    samples[i].params.temperature = 1.0f;
    samples[i].seed = 1000 + i % 8;
    samples[i].step = i / 8;
  }
  auto run_order = [&](const std::vector<int>& order, int extra) {
    std::vector<float> logits;
    std::vector<const DeviceSample*> ptrs;
    DeviceSample other;
    other.params.temperature = 0.9f;
    other.seed = 4242;
    for (int k = 0; k < static_cast<int>(order.size()) + extra; ++k) {
      logits.insert(logits.end(), base.begin(), base.end());
      ptrs.push_back(k < extra ? &other : &samples[order[k - extra]]);
    }
    const GpuRun run = Run(logits, vocab, ptrs);
    std::vector<int32_t> tokens(n);
    for (int k = extra; k < static_cast<int>(ptrs.size()); ++k) {
      tokens[order[k - extra]] = run.sampled[k].token;
    }
    return tokens;
  };
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  const std::vector<int32_t> first = run_order(order, 0);
  std::shuffle(order.begin(), order.end(), rng);
  EXPECT_EQ(run_order(order, 7), first);
  // The draw is the host's Gumbel-max with the device's uniforms (plumbing of seed/step).
  for (int i = 0; i < n; ++i) {
    double best = -INFINITY;
    int32_t arg = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      const double u = kernels::model::SampleUniform(samples[i].seed, samples[i].step, uint32_t(v));
      const double score = double(base[v] / samples[i].params.temperature) - std::log(-std::log(u));
      if (score > best) best = score, arg = static_cast<int32_t>(v);
    }
    EXPECT_EQ(first[i], arg) << i;
  }
  // Different seeds (and steps) give different draws: 64 draws from a 1000-token softmax
  // of std-1 logits collide far less than this.
  EXPECT_GT(std::set<int32_t>(first.begin(), first.end()).size(), 32u);
}

// The CUDA engine: greedy with gpu_sampling on gives the tokens of gpu_sampling off, and
// seeded sampling is reproducible run to run.
class CudaEngineSamplingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HasGpu()) GTEST_SKIP() << "no CUDA device";
    dir_ = std::filesystem::temp_directory_path() /
           ("leank_gpu_sampling_test." + std::to_string(::getpid()));
    testing::WriteTinyModel(dir_, 21);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  std::map<RequestId, std::vector<TokenOutput>> Generate(bool gpu_sampling,
                                                         const std::vector<GenerationParams>& ps) {
    EngineOptions o;
    o.model_dir = dir_;
    o.backend = "cuda";
    o.kv_cache_bytes = int64_t{64} << 20;
    o.gpu_sampling = gpu_sampling;
    auto e = Engine::Create(o);
    EXPECT_TRUE(e.ok()) << e.status();
    std::map<RequestId, std::vector<TokenOutput>> out;
    if (!e.ok()) return out;
    std::mt19937_64 rng(3);
    std::uniform_int_distribution<int32_t> tok(10, 2999);
    for (size_t i = 0; i < ps.size(); ++i) {
      std::vector<int32_t> prompt(3 + 11 * i);
      for (int32_t& t : prompt) t = tok(rng);
      EXPECT_TRUE((*e)->AddRequest(RequestId(i), prompt, ps[i]).ok());
    }
    while ((*e)->HasWork()) {
      for (const RequestOutput& r : (*e)->Step()) {
        EXPECT_NE(r.finish_reason, FinishReason::kError) << r.error;
        for (const TokenOutput& t : r.tokens) out[r.id].push_back(t);
      }
    }
    return out;
  }
  std::filesystem::path dir_;
};

TEST_F(CudaEngineSamplingTest, GreedyOnEqualsOff) {
  std::vector<GenerationParams> ps(6);
  for (size_t i = 0; i < ps.size(); ++i) {
    ps[i].sampling.temperature = 0;
    ps[i].max_tokens = 40;
    ps[i].ignore_eos = true;
    ps[i].logprobs = 0;
  }
  ps[1].sampling.repetition_penalty = 1.3f;
  ps[2].sampling.frequency_penalty = 0.5f;
  ps[3].min_tokens = 10;
  ps[3].ignore_eos = false;
  const auto off = Generate(false, ps);
  const auto on = Generate(true, ps);
  ASSERT_EQ(on.size(), ps.size());
  for (RequestId id = 0; id < RequestId(ps.size()); ++id) {
    SCOPED_TRACE(id);
    ASSERT_EQ(on.at(id).size(), off.at(id).size());
    for (size_t k = 0; k < on.at(id).size(); ++k) {
      EXPECT_EQ(on.at(id)[k].token, off.at(id)[k].token) << "step " << k;
      EXPECT_NEAR(on.at(id)[k].logprob, off.at(id)[k].logprob, 1e-4);
    }
  }
}

TEST_F(CudaEngineSamplingTest, SeededSamplingIsReproducible) {
  std::vector<GenerationParams> ps(4);
  for (size_t i = 0; i < ps.size(); ++i) {
    ps[i].sampling.temperature = 0.9f;
    ps[i].sampling.top_p = 0.95f;
    ps[i].sampling.top_k = i % 2 ? 40 : 0;
    ps[i].sampling.has_seed = true;
    ps[i].sampling.seed = 500 + i;
    ps[i].max_tokens = 30;
    ps[i].ignore_eos = true;
  }
  const auto a = Generate(true, ps);
  const auto b = Generate(true, ps);
  ASSERT_EQ(a.size(), ps.size());
  for (RequestId id = 0; id < RequestId(ps.size()); ++id) {
    ASSERT_EQ(a.at(id).size(), b.at(id).size());
    for (size_t k = 0; k < a.at(id).size(); ++k) EXPECT_EQ(a.at(id)[k].token, b.at(id)[k].token);
  }
}

}  // namespace
}  // namespace leank
