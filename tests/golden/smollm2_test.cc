// SmolLM2-135M-Instruct (converted by tools/convert_smollm2.py) through the whole
// engine: chat template, tokenizer and greedy generation against transformers
// (tests/data/smollm2/expected.json, made by tools/check_smollm2.py).

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cache/mask.h"
#include "engine/core/engine.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace leank {
namespace {

namespace fs = std::filesystem;

// A greedy divergence is accepted only at a near-tie in transformers' own logits.
constexpr double kNearTie = 0.05;

fs::path ModelDir() {
  if (const char* env = std::getenv("LEANK_CACHE_DIR")) {
    return fs::path(env) / "models" / "smollm2-135m-instruct";
  }
  return fs::path(LEANK_SOURCE_DIR) / ".cache" / "models" / "smollm2-135m-instruct";
}

class SmolLM2Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(ModelDir() / "model.safetensors")) return;
    EngineOptions o;
    o.model_dir = ModelDir();
    o.kv_cache_bytes = int64_t{256} << 20;
    auto e = Engine::Create(o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = e->release();
    std::ifstream f(fs::path(LEANK_TEST_DATA_DIR) / "smollm2" / "expected.json");
    expected_ = new nlohmann::json(nlohmann::json::parse(f));
  }
  static void TearDownTestSuite() {
    delete engine_;
    delete expected_;
  }
  void SetUp() override {
    if (!engine_) GTEST_SKIP() << "SmolLM2 not converted: run tools/convert_smollm2.py";
  }

  // Runs one request to the end; returns its tokens.
  std::vector<int32_t> Generate(std::vector<int32_t> prompt, GenerationParams p) {
    static RequestId next_id = 1;
    EXPECT_TRUE(engine_->AddRequest(next_id++, std::move(prompt), p).ok());
    std::vector<int32_t> out;
    while (engine_->HasWork()) {
      for (const RequestOutput& o : engine_->Step()) {
        for (const TokenOutput& t : o.tokens) out.push_back(t.token);
        EXPECT_NE(o.finish_reason, FinishReason::kError) << o.error;
      }
    }
    return out;
  }

  static Engine* engine_;
  static nlohmann::json* expected_;
};
Engine* SmolLM2Test::engine_ = nullptr;
nlohmann::json* SmolLM2Test::expected_ = nullptr;

TEST_F(SmolLM2Test, ChatTemplateAndTokenizerMatchTransformers) {
  ASSERT_NE(engine_->chat_template(), nullptr) << engine_->chat_template_status();
  for (const auto& c : (*expected_)["cases"]) {
    std::vector<ChatMessage> messages;
    for (const auto& m : c["messages"]) messages.push_back({m["role"], m["content"]});
    auto text = engine_->chat_template()->Render(messages, true);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c["prompt_text"].get<std::string>());
    auto ids = engine_->tokenizer().Encode(*text, /*add_special_tokens=*/false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, c["prompt_ids"].get<std::vector<int32_t>>());
  }
}

// Bad requests are refused with InvalidArgument naming the field; the engine keeps serving.
TEST_F(SmolLM2Test, BadRequestsAreRefusedByName) {
  const std::vector<int32_t> ok_prompt = {1, 2, 3};
  GenerationParams ok;
  struct Case {
    std::vector<int32_t> prompt;
    GenerationParams params;
    std::string field;
  };
  std::vector<Case> cases;
  cases.push_back({{}, ok, "prompt is empty"});
  cases.push_back({{1, 49152}, ok, "token_ids[1]"});
  cases.push_back({{-1}, ok, "token_ids[0]"});
  GenerationParams p = ok;
  p.max_tokens = 8192;
  cases.push_back({ok_prompt, p, "context length"});
  p = ok;
  p.max_tokens = 0;
  cases.push_back({ok_prompt, p, "max_tokens"});
  p = ok;
  p.sampling.temperature = NAN;
  cases.push_back({ok_prompt, p, "temperature"});
  p = ok;
  p.sampling.temperature = -1;
  cases.push_back({ok_prompt, p, "temperature"});
  p = ok;
  p.sampling.top_p = 0;
  cases.push_back({ok_prompt, p, "top_p"});
  p = ok;
  p.sampling.min_p = 1.5f;
  cases.push_back({ok_prompt, p, "min_p"});
  p = ok;
  p.min_tokens = 300;
  cases.push_back({ok_prompt, p, "min_tokens"});
  p = ok;
  p.stop = std::vector<std::string>(17, "x");
  cases.push_back({ok_prompt, p, "stop"});
  p = ok;
  p.stop = {std::string(300, 'x')};
  cases.push_back({ok_prompt, p, "stop[0]"});
  p = ok;
  p.stop_token_ids = {70000};
  cases.push_back({ok_prompt, p, "stop_token_ids[0]"});
  p = ok;
  p.logprobs = 21;
  cases.push_back({ok_prompt, p, "logprobs"});
  RequestId id = 5000;
  for (const Case& c : cases) {
    absl::Status s = engine_->AddRequest(id++, c.prompt, c.params);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(std::string(s.message()).find(c.field), std::string::npos)
        << "message '" << s.message() << "' does not name " << c.field;
  }
  EXPECT_FALSE(engine_->HasWork());
  // A prompt longer than the context.
  std::vector<int32_t> long_prompt(9000, 28);
  EXPECT_EQ(engine_->Validate(long_prompt, ok).code(), absl::StatusCode::kInvalidArgument);
  // Invalid UTF-8 never reaches the engine: the tokenizer refuses it.
  EXPECT_EQ(engine_->tokenizer().Encode("ok \xC3\x28 bad").status().code(),
            absl::StatusCode::kInvalidArgument);
  // And the engine still serves.
  ok.max_tokens = 3;
  ok.ignore_eos = true;
  EXPECT_EQ(Generate(ok_prompt, ok).size(), 3u);
}

TEST_F(SmolLM2Test, Greedy32TokensMatchTransformers) {
  // All three prompts at once: also exercises batching.
  std::vector<std::vector<int32_t>> outputs((*expected_)["cases"].size());
  GenerationParams p;
  p.sampling.temperature = 0;
  p.max_tokens = 32;
  p.ignore_eos = true;
  RequestId id = 1000;
  for (const auto& c : (*expected_)["cases"]) {
    ASSERT_TRUE(engine_->AddRequest(id++, c["prompt_ids"].get<std::vector<int32_t>>(), p).ok());
  }
  while (engine_->HasWork()) {
    for (const RequestOutput& o : engine_->Step()) {
      for (const TokenOutput& t : o.tokens) outputs[o.id - 1000].push_back(t.token);
    }
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    const auto& c = (*expected_)["cases"][i];
    const auto want = c["greedy_ids"].get<std::vector<int32_t>>();
    const auto gap = c["top2_gap"].get<std::vector<double>>();
    ASSERT_EQ(outputs[i].size(), want.size()) << "case " << i;
    for (size_t t = 0; t < want.size(); ++t) {
      if (outputs[i][t] == want[t]) continue;
      // A divergence must sit on a near-tie; after it the texts legitimately differ.
      EXPECT_LT(gap[t], kNearTie) << "case " << i << " diverges at step " << t
                                  << " where transformers' top-2 gap is " << gap[t];
      break;
    }
  }
}

// LeanK on the real model: a random aligned 50% mask (quality is not expected from a
// random mask; what is checked is that the paged LeanK path is exact and robust).
class SmolLM2LeanKTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(ModelDir() / "model.safetensors")) {
      GTEST_SKIP() << "SmolLM2 not converted: run tools/convert_smollm2.py";
    }
  }

  // `mask`: empty for dense, else a mask file (relative paths under tests/data/cache).
  static std::unique_ptr<Engine> Make(const fs::path& mask, int max_batched_tokens) {
    EngineOptions o;
    o.model_dir = ModelDir();
    if (!mask.empty()) o.mask_path = fs::path(LEANK_TEST_DATA_DIR) / "cache" / mask;
    o.sink = 32;
    o.recent = 64;
    o.kv_cache_bytes = int64_t{256} << 20;
    o.max_batched_tokens = max_batched_tokens;
    auto e = Engine::Create(o);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? *std::move(e) : nullptr;
  }

  // Greedy generations of `prompts`, all submitted at once.
  static std::vector<std::vector<int32_t>> Run(Engine& e,
                                               const std::vector<std::vector<int32_t>>& prompts,
                                               int max_tokens, EngineStats* peak = nullptr) {
    GenerationParams p;
    p.sampling.temperature = 0;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_TRUE(e.AddRequest(static_cast<RequestId>(i), prompts[i], p).ok());
    }
    std::vector<std::vector<int32_t>> out(prompts.size());
    while (e.HasWork()) {
      for (const RequestOutput& o : e.Step()) {
        EXPECT_NE(o.finish_reason, FinishReason::kError) << o.error;
        for (const TokenOutput& t : o.tokens) out[o.id].push_back(t.token);
      }
      if (peak) {
        EngineStats s = e.stats();
        peak->free_full_blocks = std::min(peak->free_full_blocks, s.free_full_blocks);
        peak->free_pruned_blocks = std::min(peak->free_pruned_blocks, s.free_pruned_blocks);
      }
    }
    return out;
  }

  static std::vector<std::vector<int32_t>> Prompts(const Engine& e) {
    std::string a = "Here is a list of facts about the solar system. ", b;
    for (int i = 0; i < 50; ++i) a += "The planet number " + std::to_string(i) + " is far away. ";
    b = "Summarise in one line: the quick brown fox jumps over the lazy dog. ";
    return {*e.tokenizer().Encode(a + "Which planet is number 7?"), *e.tokenizer().Encode(b)};
  }
};

TEST_F(SmolLM2LeanKTest, AllOnesMaskGivesTheDenseTokens) {
  // An all-ones mask in the project format, written next to the test's temp files.
  const fs::path tmp = fs::temp_directory_path() / "leank_allones_smollm2.safetensors";
  {
    auto mask = cache::Mask::AllOnes({30, 3, 64});
    mask.align = 16;
    ASSERT_TRUE(cache::SaveMask(mask, tmp).ok());
  }
  auto dense = Make("", 512);
  auto leank = Make(tmp, 512);  // an absolute path replaces the data folder
  ASSERT_TRUE(dense && leank);
  EXPECT_TRUE(leank->info().masked);
  const auto prompts = Prompts(*dense);
  ASSERT_GT(prompts[0].size(), 128u);  // crosses sink + recent + a block
  EXPECT_EQ(Run(*dense, prompts, 48), Run(*leank, prompts, 48));
}

TEST_F(SmolLM2LeanKTest, RandomHalfMaskIsIndependentOfChunkingAndBatching) {
  auto big_chunks = Make("smollm2-random50.leank.safetensors", 512);
  auto small_chunks = Make("smollm2-random50.leank.safetensors", 48);
  ASSERT_TRUE(big_chunks && small_chunks);
  EXPECT_GT(big_chunks->info().k_sparsity, 0.45);
  const auto prompts = Prompts(*big_chunks);
  const int64_t total_full = small_chunks->stats().free_full_blocks;
  EngineStats peak;
  peak.free_full_blocks = peak.free_pruned_blocks = INT64_MAX;
  const auto together = Run(*big_chunks, prompts, 40);
  const auto chunked = Run(*small_chunks, prompts, 40, &peak);
  EXPECT_EQ(together, chunked);
  // Alone, one at a time: the same tokens.
  EXPECT_EQ(Run(*big_chunks, {prompts[0]}, 40)[0], together[0]);
  // The middle really went to pruned blocks, and the long prompt was never held at
  // full size: per sequence at most sink + recent + one block, plus the step's chunk
  // (48 tokens) before its compaction.
  const int64_t total_pruned = small_chunks->stats().free_pruned_blocks;
  EXPECT_LT(peak.free_pruned_blocks, total_pruned);
  const int64_t peak_full = total_full - peak.free_full_blocks;
  const int64_t bound = 2 * ((32 + 64 + 16) / 16) + (48 / 16 + 1);
  EXPECT_LE(peak_full, bound);
  int64_t full_size_blocks = 0;  // what the two sequences would take at full size
  for (const auto& p : prompts) full_size_blocks += (p.size() + 40 + 15) / 16;
  EXPECT_LT(2 * bound, full_size_blocks);  // the bound is a real limit
}

}  // namespace
}  // namespace leank
