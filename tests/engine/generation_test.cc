// Generation semantics of the real engine (tiny random model, CPU backend): EOS, stop
// token ids and stop strings against min_tokens, ignore_eos and max_tokens, finish
// reasons, usage counts, and seeded sampling independent of the batch. A wrapper around
// the backend can force chosen tokens at chosen positions (a large boost on their logit)
// so that each case happens where the test wants it.

#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/core/backend.h"
#include "engine/core/engine.h"
#include "gtest/gtest.h"
#include "tests/engine/tiny_model.h"

namespace leank {
namespace {

namespace fs = std::filesystem;

// Sequence length (prompt + output so far) -> the token forced as the next one.
using Script = std::map<int64_t, int32_t>;
// Sequence length -> tokens whose logits are all set to exactly the same large value.
using Ties = std::map<int64_t, std::vector<int32_t>>;

class ScriptedBackend final : public Backend {
 public:
  ScriptedBackend(std::unique_ptr<Backend> inner, const Script* script, const Ties* ties)
      : inner_(std::move(inner)), script_(script), ties_(ties) {}
  std::string name() const override { return inner_->name(); }
  const ModelConfig& config() const override { return inner_->config(); }
  const cache::CacheLayout& layout() const override { return inner_->layout(); }
  cache::PoolSizes pool_sizes() const override { return inner_->pool_sizes(); }
  absl::Status Forward(const StepPlan& plan, StepOutput* out) override {
    if (auto s = inner_->Forward(plan, out); !s.ok()) return s;
    int64_t row = 0;
    for (const SeqWork& w : plan.seqs) {
      if (!w.want_logits) continue;
      const int64_t r = row++;
      auto it = script_->find(w.cache.start_pos + w.cache.num_new_tokens);
      if (it != script_->end()) out->logits[r * out->vocab + it->second] += 1000.0f;
      auto tie = ties_->find(w.cache.start_pos + w.cache.num_new_tokens);
      if (tie != ties_->end()) {
        for (int32_t t : tie->second) out->logits[r * out->vocab + t] = 100.0f;
      }
    }
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Backend> inner_;
  const Script* script_;
  const Ties* ties_;
};

struct Result {
  std::vector<int32_t> tokens;
  std::string text;
  FinishReason reason = FinishReason::kNone;
  int completion_tokens = -1;
  int prompt_tokens = -1;
};

class GenerationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() /
                        ("leank_generation_test." + std::to_string(::getpid())));
    testing::WriteTinyModel(*dir_, 11);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }

  void SetUp() override {
    EngineOptions o;
    o.model_dir = *dir_;
    o.kv_cache_bytes = int64_t{16} << 20;
    o.num_threads = 2;
    o.wrap_backend = [this](std::unique_ptr<Backend> b) -> std::unique_ptr<Backend> {
      return std::make_unique<ScriptedBackend>(std::move(b), &script_, &ties_);
    };
    auto e = Engine::Create(o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = *std::move(e);
  }

  std::map<RequestId, Result> RunAll(const std::vector<std::vector<int32_t>>& prompts,
                                     const std::vector<GenerationParams>& params) {
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_TRUE(engine_->AddRequest(static_cast<RequestId>(i), prompts[i], params[i]).ok());
    }
    std::map<RequestId, Result> out;
    while (engine_->HasWork()) {
      for (const RequestOutput& o : engine_->Step()) {
        Result& r = out[o.id];
        EXPECT_EQ(r.reason, FinishReason::kNone) << "output after the end";
        for (const TokenOutput& t : o.tokens) r.tokens.push_back(t.token);
        r.text += o.text;
        if (o.finished) {
          r.reason = o.finish_reason;
          r.completion_tokens = o.completion_tokens;
          r.prompt_tokens = o.prompt_tokens;
        }
      }
    }
    return out;
  }
  Result Run(const std::vector<int32_t>& prompt, const GenerationParams& params) {
    return RunAll({prompt}, {params}).at(0);
  }

  static std::vector<int32_t> Prompt(int n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int32_t> tok(10, 2999);
    std::vector<int32_t> p(n);
    for (int32_t& t : p) t = tok(rng);
    return p;
  }
  std::string Text(std::vector<int32_t> ids) const {
    return engine_->tokenizer().Decode(ids, true);
  }

  static fs::path* dir_;
  Script script_;
  Ties ties_;
  std::unique_ptr<Engine> engine_;
};
fs::path* GenerationTest::dir_ = nullptr;

constexpr int32_t kEos = 2;  // the tiny model's eos_token_id is [2, 3]

GenerationParams Greedy(int max_tokens) {
  GenerationParams p;
  p.sampling.temperature = 0;
  p.max_tokens = max_tokens;
  return p;
}

TEST_F(GenerationTest, EosOnTheLastAllowedTokenIsEosAndCounted) {
  const auto prompt = Prompt(9, 1);
  script_[9 + 5] = kEos;  // the 6th output token
  Result r = Run(prompt, Greedy(6));
  ASSERT_EQ(r.tokens.size(), 6u);
  EXPECT_EQ(r.tokens.back(), kEos);
  EXPECT_EQ(r.reason, FinishReason::kEos);
  EXPECT_EQ(r.completion_tokens, 6);  // the EOS token counts, as in token_ids
  EXPECT_EQ(r.prompt_tokens, 9);
  // Its text does not appear (the stream is the text of the tokens before it).
  EXPECT_EQ(r.text, Text({r.tokens.begin(), r.tokens.end() - 1}));
}

TEST_F(GenerationTest, StopTokenIdOnTheLastTokenIsStop) {
  const auto prompt = Prompt(7, 2);
  const int32_t stop_id = 1234;
  script_[7 + 3] = stop_id;
  GenerationParams p = Greedy(4);
  p.stop_token_ids = {stop_id};
  Result r = Run(prompt, p);
  ASSERT_EQ(r.tokens.size(), 4u);
  EXPECT_EQ(r.tokens.back(), stop_id);
  EXPECT_EQ(r.reason, FinishReason::kStop);
  EXPECT_EQ(r.completion_tokens, 4);
  EXPECT_EQ(r.text, Text({r.tokens.begin(), r.tokens.end() - 1}));
}

TEST_F(GenerationTest, MinTokensHoldsEosAndStopIdsBackThenTheyStop) {
  const auto prompt = Prompt(5, 3);
  const int32_t stop_id = 777;
  for (int64_t len = 5; len < 40; ++len) script_[len] = kEos;  // EOS wanted at every step
  GenerationParams p = Greedy(20);
  p.min_tokens = 4;
  Result r = Run(prompt, p);
  ASSERT_EQ(r.tokens.size(), 5u);
  for (int i = 0; i < 4; ++i) EXPECT_NE(r.tokens[i], kEos) << i;
  EXPECT_EQ(r.tokens[4], kEos);
  EXPECT_EQ(r.reason, FinishReason::kEos);
  EXPECT_EQ(r.completion_tokens, 5);

  for (int64_t len = 5; len < 40; ++len) script_[len] = stop_id;
  p.stop_token_ids = {stop_id};
  r = Run(prompt, p);
  ASSERT_EQ(r.tokens.size(), 5u);
  for (int i = 0; i < 4; ++i) EXPECT_NE(r.tokens[i], stop_id) << i;
  EXPECT_EQ(r.reason, FinishReason::kStop);
}

TEST_F(GenerationTest, IgnoreEosRunsToMaxTokensButStopIdsStillStop) {
  const auto prompt = Prompt(6, 4);
  for (int64_t len = 6; len < 40; ++len) script_[len] = kEos;
  GenerationParams p = Greedy(7);
  p.ignore_eos = true;
  Result r = Run(prompt, p);
  EXPECT_EQ(r.tokens, std::vector<int32_t>(7, kEos));
  EXPECT_EQ(r.reason, FinishReason::kLength);
  EXPECT_EQ(r.completion_tokens, 7);
  p.stop_token_ids = {kEos};
  r = Run(prompt, p);
  EXPECT_EQ(r.tokens, std::vector<int32_t>(1, kEos));
  EXPECT_EQ(r.reason, FinishReason::kStop);
}

TEST_F(GenerationTest, StopStringOnTheLastTokenIsStopAndAStopInThePromptIsNot) {
  // Force a known tail: the free greedy run, then a token whose text ends the stop.
  const auto prompt = Prompt(8, 5);
  Result free_run = Run(prompt, Greedy(6));
  ASSERT_EQ(free_run.tokens.size(), 6u);
  for (size_t i = 0; i < 6; ++i) script_[8 + i] = free_run.tokens[i];
  const std::string tail = Text({free_run.tokens.begin() + 4, free_run.tokens.end()});
  ASSERT_FALSE(tail.empty());
  GenerationParams p = Greedy(6);
  p.stop = {tail, Text(prompt)};  // the prompt's own text must not stop anything
  Result r = Run(prompt, p);
  EXPECT_EQ(r.reason, FinishReason::kStop);
  EXPECT_EQ(r.tokens, free_run.tokens);
  EXPECT_EQ(r.completion_tokens, 6);  // every generated token, also the cut ones
  const std::string full = Text(free_run.tokens);
  EXPECT_EQ(r.text, full.substr(0, full.find(tail)));
  p.include_stop_str_in_output = true;
  r = Run(prompt, p);
  EXPECT_EQ(r.text, full.substr(0, full.find(tail) + tail.size()));
  // Without the stop the same request runs to max_tokens.
  r = Run(prompt, Greedy(6));
  EXPECT_EQ(r.reason, FinishReason::kLength);
  EXPECT_EQ(r.text, full);
}

TEST_F(GenerationTest, SeededSamplingIsIndependentOfTheBatch) {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<GenerationParams> params;
  for (int i = 0; i < 4; ++i) {
    prompts.push_back(Prompt(6 + 11 * i, 100 + i));
    GenerationParams p;
    p.max_tokens = 16 + 3 * i;
    p.ignore_eos = true;
    p.sampling.temperature = 0.8f + 0.2f * i;
    p.sampling.top_p = 0.95f;
    p.sampling.top_k = i == 2 ? 40 : 0;
    p.sampling.min_p = i == 3 ? 0.05f : 0.0f;
    p.sampling.repetition_penalty = i == 1 ? 1.2f : 1.0f;
    p.sampling.has_seed = true;
    p.sampling.seed = 4242 + i;
    params.push_back(p);
  }
  const auto together = RunAll(prompts, params);
  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE(i);
    const Result alone = Run(prompts[i], params[i]);
    EXPECT_EQ(alone.tokens, together.at(i).tokens);
    EXPECT_EQ(alone.text, together.at(i).text);
  }
  // And another seed draws something else.
  GenerationParams other = params[0];
  other.sampling.seed = 9999;
  EXPECT_NE(Run(prompts[0], other).tokens, together.at(0).tokens);
}

TEST_F(GenerationTest, TemperatureBelowVllmsEpsilonIsGreedy) {
  // vLLM samples greedily below a temperature of 1e-5 (_SAMPLING_EPS). Dividing by such a
  // temperature instead draws at random among tied (or nearly tied) top logits: here
  // tokens 50 and 40 tie at every step, and greedy takes the lower id every time.
  const auto prompt = Prompt(5, 6);
  for (int64_t len = 5; len < 5 + 8; ++len) ties_[len] = {50, 40};
  const Result greedy = Run(prompt, Greedy(8));
  EXPECT_EQ(greedy.tokens, std::vector<int32_t>(8, 40));
  for (float t : {1e-6f, 9.9e-6f}) {
    for (uint64_t seed : {1, 2, 3, 4}) {
      SCOPED_TRACE(::testing::Message() << "temperature " << t << " seed " << seed);
      GenerationParams p = Greedy(8);
      p.sampling.temperature = t;
      p.sampling.has_seed = true;
      p.sampling.seed = seed;
      EXPECT_EQ(Run(prompt, p).tokens, greedy.tokens);
    }
  }
  // At 1e-5 and above the temperature applies: the tie is a fair coin.
  GenerationParams p = Greedy(8);
  p.sampling.temperature = 1e-5f;
  p.sampling.has_seed = true;
  p.sampling.seed = 1;
  const Result sampled = Run(prompt, p);
  EXPECT_NE(sampled.tokens, greedy.tokens);
  for (int32_t t : sampled.tokens) EXPECT_TRUE(t == 40 || t == 50) << t;
}

}  // namespace
}  // namespace leank
