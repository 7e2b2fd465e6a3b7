// SmolLM2-135M-Instruct (converted by tools/convert_smollm2.py) through the whole
// engine: chat template, tokenizer and greedy generation against transformers
// (tests/data/smollm2/expected.json, made by tools/check_smollm2.py).

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

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

}  // namespace
}  // namespace leank
