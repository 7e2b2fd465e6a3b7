// The engine's device-sampling path (SeqWork::sample -> StepOutput::sampled) without a
// GPU: a fake backend wraps the CPU backend, claims samples_on_device(), draws the rows
// that carry a DeviceSample itself on the CPU (the same penalties and argmax as
// engine/sampling), and poisons those rows' logits with NaN so that an engine reading
// them instead of `sampled` would produce different tokens. Compared against the same
// engine with gpu_sampling off (the CPU sampler path).

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <vector>

#include "engine/core/backend.h"
#include "engine/core/engine.h"
#include "engine/sampling/sampler.h"
#include "gtest/gtest.h"
#include "tests/engine/tiny_model.h"

namespace leank {
namespace {

namespace fs = std::filesystem;

// What the fake saw of one sampled row.
struct SeenSample {
  uint64_t seed, step;
  std::vector<int32_t> banned;
  std::vector<int32_t> prompt, output;
};

struct FakeLog {
  int64_t sampled_rows = 0, unsampled_rows = 0;
  std::vector<SeenSample> samples;
};

class FakeDeviceSampler final : public Backend {
 public:
  FakeDeviceSampler(std::unique_ptr<Backend> inner, FakeLog* log)
      : inner_(std::move(inner)), log_(log) {}
  std::string name() const override { return inner_->name(); }
  const ModelConfig& config() const override { return inner_->config(); }
  const cache::CacheLayout& layout() const override { return inner_->layout(); }
  cache::PoolSizes pool_sizes() const override { return inner_->pool_sizes(); }
  bool samples_on_device() const override { return true; }

  absl::Status Forward(const StepPlan& plan, StepOutput* out) override {
    if (auto s = inner_->Forward(plan, out); !s.ok()) return s;
    int64_t row = 0;
    bool any = false;
    for (const SeqWork& w : plan.seqs) {
      if (!w.want_logits) {
        EXPECT_FALSE(w.sample.has_value()) << "sample set on a row without logits";
        continue;
      }
      const int64_t r = row++;
      if (!w.sample) {
        ++log_->unsampled_rows;
        continue;
      }
      if (!any) out->sampled.assign(out->logits.size() / out->vocab, SampledToken{-1, 0});
      any = true;
      ++log_->sampled_rows;
      const DeviceSample& d = *w.sample;
      log_->samples.push_back({d.seed,
                               d.step,
                               d.banned,
                               {d.prompt.begin(), d.prompt.end()},
                               {d.output.begin(), d.output.end()}});
      std::span<float> logits(out->logits.data() + r * out->vocab, out->vocab);
      std::vector<float> l(logits.begin(), logits.end());
      for (int32_t t : d.banned) l[t] = -INFINITY;
      double max = -INFINITY, sum = 0;
      for (float x : l) max = std::max<double>(max, x);
      for (float x : l) sum += std::exp(x - max);
      const std::vector<float> raw = l;
      // Greedy only here (the engine tests below use temperature 0).
      EXPECT_TRUE(d.params.greedy());
      ApplyPenalties(l, d.params, d.prompt, d.output);
      const int32_t token = ArgMax(l);
      out->sampled[r] = {token, static_cast<float>(raw[token] - (max + std::log(sum)))};
      for (float& x : logits) x = NAN;  // the engine must not read a sampled row
    }
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Backend> inner_;
  FakeLog* log_;
};

class DeviceSamplingEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Per process: ctest runs each test case as its own process, possibly in parallel.
    dir_ = new fs::path(fs::temp_directory_path() /
                        ("leank_device_sampling_engine_test." + std::to_string(::getpid())));
    testing::WriteTinyModel(*dir_, 7);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }

  // gpu: gpu_sampling on; the fake wraps the backend either way (it samples only rows
  // the engine marked).
  std::unique_ptr<Engine> MakeEngine(bool gpu, FakeLog* log) {
    EngineOptions o;
    o.model_dir = *dir_;
    o.kv_cache_bytes = int64_t{16} << 20;
    o.num_threads = 2;
    o.gpu_sampling = gpu;
    o.wrap_backend = [log](std::unique_ptr<Backend> b) -> std::unique_ptr<Backend> {
      return std::make_unique<FakeDeviceSampler>(std::move(b), log);
    };
    auto e = Engine::Create(o);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? *std::move(e) : nullptr;
  }

  struct Result {
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
    std::vector<size_t> top_sizes;
    FinishReason reason = FinishReason::kNone;
  };
  // Runs all requests together to the end.
  static std::map<RequestId, Result> Run(Engine& e,
                                         const std::vector<std::vector<int32_t>>& prompts,
                                         const std::vector<GenerationParams>& params) {
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_TRUE(e.AddRequest(static_cast<RequestId>(i), prompts[i], params[i]).ok());
    }
    std::map<RequestId, Result> out;
    while (e.HasWork()) {
      for (const RequestOutput& o : e.Step()) {
        EXPECT_NE(o.finish_reason, FinishReason::kError) << o.error;
        for (const TokenOutput& t : o.tokens) {
          out[o.id].tokens.push_back(t.token);
          out[o.id].logprobs.push_back(t.logprob);
          out[o.id].top_sizes.push_back(t.top.size());
        }
        if (o.finished) out[o.id].reason = o.finish_reason;
      }
    }
    return out;
  }

  static std::vector<std::vector<int32_t>> Prompts(int n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int32_t> tok(10, 2999);
    std::vector<std::vector<int32_t>> prompts(n);
    for (int i = 0; i < n; ++i) {
      prompts[i].resize(5 + 7 * i);
      for (int32_t& t : prompts[i]) t = tok(rng);
    }
    return prompts;
  }

  static fs::path* dir_;
};
fs::path* DeviceSamplingEngineTest::dir_ = nullptr;

GenerationParams Greedy(int max_tokens) {
  GenerationParams p;
  p.sampling.temperature = 0;
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  p.logprobs = 0;  // the chosen token's logprob, no alternatives
  return p;
}

TEST_F(DeviceSamplingEngineTest, GreedyTokensAndLogprobsMatchTheCpuPath) {
  const auto prompts = Prompts(4, 1);
  std::vector<GenerationParams> params(4, Greedy(12));
  params[1].sampling.repetition_penalty = 1.5f;  // penalties see prompt and output
  params[2].sampling.frequency_penalty = 0.7f;
  params[2].sampling.presence_penalty = 0.3f;
  for (int i = 0; i < 4; ++i) {  // greedy ignores the seed; it names the request here
    params[i].sampling.has_seed = true;
    params[i].sampling.seed = 1000 + i;
  }
  FakeLog cpu_log, gpu_log;
  auto cpu = MakeEngine(false, &cpu_log);
  auto gpu = MakeEngine(true, &gpu_log);
  ASSERT_TRUE(cpu && gpu);
  const auto want = Run(*cpu, prompts, params);
  const auto got = Run(*gpu, prompts, params);
  EXPECT_EQ(cpu_log.sampled_rows, 0);  // gpu_sampling off: the engine never asks
  EXPECT_EQ(gpu_log.unsampled_rows, 0);
  EXPECT_EQ(gpu_log.sampled_rows, 4 * 12);
  ASSERT_EQ(got.size(), 4u);
  for (RequestId id = 0; id < 4; ++id) {
    SCOPED_TRACE(id);
    ASSERT_EQ(want.at(id).tokens.size(), 12u);  // ignore_eos: max_tokens, so no loop is empty
    EXPECT_EQ(got.at(id).tokens, want.at(id).tokens);
    ASSERT_EQ(got.at(id).logprobs.size(), want.at(id).logprobs.size());
    for (size_t i = 0; i < want.at(id).logprobs.size(); ++i) {
      EXPECT_NEAR(got.at(id).logprobs[i], want.at(id).logprobs[i], 1e-5);
      EXPECT_LT(got.at(id).logprobs[i], 0.0f);
    }
    EXPECT_EQ(got.at(id).reason, FinishReason::kLength);
  }
  // Each draw saw its request's seed, step = output so far, the prompt and the output
  // (what the penalties need).
  std::vector<int> draws(4, 0);
  for (const SeenSample& s : gpu_log.samples) {
    const int i = static_cast<int>(s.seed) - 1000;
    ASSERT_TRUE(i >= 0 && i < 4);
    EXPECT_EQ(s.step, static_cast<uint64_t>(draws[i]));
    EXPECT_EQ(s.prompt, prompts[i]);
    EXPECT_EQ(s.output, std::vector<int32_t>(want.at(i).tokens.begin(),
                                             want.at(i).tokens.begin() + draws[i]));
    EXPECT_TRUE(s.banned.empty());
    ++draws[i];
  }
  EXPECT_EQ(draws, std::vector<int>(4, 12));
}

TEST_F(DeviceSamplingEngineTest, MinTokensBansEosAndStopIdsLikeTheCpuPath) {
  const auto prompts = Prompts(2, 2);
  // Greedy first tokens without bans, to make them stop ids / "EOS" that must be banned.
  FakeLog log;
  auto probe = MakeEngine(false, &log);
  const auto free_run = Run(*probe, prompts, {Greedy(6), Greedy(6)});
  std::vector<GenerationParams> params(2, Greedy(10));
  for (int i = 0; i < 2; ++i) {
    params[i].ignore_eos = false;
    params[i].min_tokens = 4;
    params[i].stop_token_ids = {free_run.at(i).tokens[0], free_run.at(i).tokens[1]};
    params[i].sampling.has_seed = true;
    params[i].sampling.seed = 100 + i;
  }
  FakeLog cpu_log, gpu_log;
  auto cpu = MakeEngine(false, &cpu_log);
  auto gpu = MakeEngine(true, &gpu_log);
  const auto want = Run(*cpu, prompts, params);
  const auto got = Run(*gpu, prompts, params);
  for (RequestId id = 0; id < 2; ++id) {
    SCOPED_TRACE(id);
    EXPECT_EQ(got.at(id).tokens, want.at(id).tokens);
    EXPECT_EQ(got.at(id).reason, want.at(id).reason);
    ASSERT_GE(got.at(id).tokens.size(), 4u);
    EXPECT_NE(got.at(id).tokens[0], free_run.at(id).tokens[0]);  // the ban bit
  }
  // Banned: EOS (2, 3) and the stop ids while output < min_tokens, nothing after.
  int checked = 0;
  for (const SeenSample& s : gpu_log.samples) {
    const int i = static_cast<int>(s.seed - 100);
    ASSERT_TRUE(i == 0 || i == 1);
    EXPECT_EQ(s.output.size(), s.step);
    EXPECT_EQ(s.prompt, prompts[i]);
    if (s.step < 4) {
      EXPECT_EQ(s.banned, (std::vector<int32_t>{2, 3, params[i].stop_token_ids[0],
                                                params[i].stop_token_ids[1]}));
      ++checked;
    } else {
      EXPECT_TRUE(s.banned.empty());
    }
  }
  EXPECT_EQ(checked, 8);
}

TEST_F(DeviceSamplingEngineTest, TopLogprobsStayOnTheCpuSampler) {
  const auto prompts = Prompts(2, 3);
  std::vector<GenerationParams> params(2, Greedy(5));
  params[0].logprobs = 3;  // alternatives: the CPU path
  FakeLog cpu_log, gpu_log;
  auto cpu = MakeEngine(false, &cpu_log);
  auto gpu = MakeEngine(true, &gpu_log);
  const auto want = Run(*cpu, prompts, params);
  const auto got = Run(*gpu, prompts, params);
  EXPECT_EQ(gpu_log.unsampled_rows, 5);  // request 0, every step
  EXPECT_EQ(gpu_log.sampled_rows, 5);    // request 1, in the same steps
  for (RequestId id = 0; id < 2; ++id) {
    ASSERT_EQ(want.at(id).tokens.size(), 5u);  // the loops below are never empty
    EXPECT_EQ(got.at(id).tokens, want.at(id).tokens);
    ASSERT_EQ(got.at(id).top_sizes.size(), 5u);
    for (size_t n : got.at(id).top_sizes) EXPECT_EQ(n, id == 0 ? 3u : 0u);
  }
  ASSERT_EQ(got.at(0).logprobs.size(), want.at(0).logprobs.size());
  for (size_t i = 0; i < want.at(0).logprobs.size(); ++i) {
    EXPECT_FLOAT_EQ(got.at(0).logprobs[i], want.at(0).logprobs[i]);
  }
}

}  // namespace
}  // namespace leank
