// Engine::Create refuses bad options with one message naming the option and the numbers,
// before the weights are mapped or the KV pool allocated.
#include <unistd.h>

#include <filesystem>
#include <string>

#include "cache/mask.h"
#include "engine/core/engine.h"
#include "gtest/gtest.h"
#include "spdlog/sinks/ringbuffer_sink.h"
#include "spdlog/spdlog.h"
#include "tests/engine/tiny_model.h"

namespace leank {
namespace {

namespace fs = std::filesystem;

class EngineStartupTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() /
                        ("leank_engine_startup_test." + std::to_string(::getpid())));
    testing::WriteTinyModel(*dir_, 3);  // max_position_embeddings 512
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  static EngineOptions Options() {
    EngineOptions o;
    o.model_dir = *dir_;
    o.kv_cache_bytes = int64_t{16} << 20;
    o.num_threads = 1;
    return o;
  }
  // Create fails with InvalidArgument and a message holding every part.
  template <typename... Parts>
  static void ExpectRefused(const EngineOptions& o, const Parts&... parts) {
    auto e = Engine::Create(o);
    ASSERT_FALSE(e.ok());
    EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument) << e.status();
    for (const std::string& part : {std::string(parts)...}) {
      EXPECT_NE(e.status().message().find(part), std::string::npos)
          << "'" << part << "' not in: " << e.status();
    }
  }
  static fs::path* dir_;
};
fs::path* EngineStartupTest::dir_ = nullptr;

TEST_F(EngineStartupTest, MaxModelLenBeyondTheModelsIsRefused) {
  // It was silently cut to the model's 512: a server asked for 100000 served 512.
  EngineOptions o = Options();
  o.max_model_len = 513;
  ExpectRefused(o, "max_model_len 513", "max_position_embeddings 512");
  o.max_model_len = -4;
  ExpectRefused(o, "max_model_len", "-4");
  for (int len : {0, 2, 512}) {
    o.max_model_len = len;
    auto e = Engine::Create(o);
    ASSERT_TRUE(e.ok()) << e.status();
    EXPECT_EQ((*e)->info().max_model_len, len == 0 ? 512 : len);
  }
}

TEST_F(EngineStartupTest, OutOfRangeOptionsAreNamed) {
  EngineOptions o = Options();
  o.kv_cache_bytes = -1;  // was taken as "the default"
  ExpectRefused(o, "kv_cache_bytes", "-1");
  o = Options();
  o.sink = -16;  // was taken as "the mask's"
  ExpectRefused(o, "sink", "-16");
  o = Options();
  o.recent = -1;
  ExpectRefused(o, "recent", "-1");
  o = Options();
  o.max_num_seqs = 0;
  ExpectRefused(o, "max_num_seqs", "0");
  o = Options();
  o.max_batched_tokens = -5;
  ExpectRefused(o, "max_batched_tokens", "-5");
  o = Options();
  o.admission = "eager";
  ExpectRefused(o, "admission", "eager");
}

TEST_F(EngineStartupTest, SinkAndRecentFromTheMaskAreTracedToIt) {
  // A mask whose metadata sink is not a multiple of the block size: the message said
  // "sink 100 is not a multiple of block_size 16", naming no file and no flag.
  cache::Mask mask = cache::Mask::AllOnes({2, 1, 64});
  mask.sink = 100;
  mask.recent = 64;
  const fs::path path = *dir_ / "sink100.leank.safetensors";
  ASSERT_TRUE(cache::SaveMask(mask, path).ok());
  EngineOptions o = Options();
  o.mask_path = path;
  ExpectRefused(o, "sink 100 is not a multiple of block_size 16", "(sink 100 from the metadata of",
                path.string(), "--sink");
  o.sink = 32;  // the flag wins, and then nothing is wrong
  auto e = Engine::Create(o);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ((*e)->info().sink, 32);
  o.sink = 24;  // given by the user: no mention of the mask
  auto refused = Engine::Create(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().message().find("metadata"), std::string::npos) << refused.status();
}

TEST_F(EngineStartupTest, DenseServesBlockSizesThatDoNotDivideTheLeankDefaults) {
  // Without a mask, --block-size 256 (or 48) was refused as "sink 128 is not a multiple
  // of block_size 256": the LeanK sink/recent defaults were checked although dense mode
  // prunes nothing.
  for (int block : {48, 256, 1024}) {
    EngineOptions o = Options();
    o.block_size = block;
    auto e = Engine::Create(o);
    ASSERT_TRUE(e.ok()) << block << ": " << e.status();
    EXPECT_EQ((*e)->info().block_size, block);
    EXPECT_EQ((*e)->info().sink, 0);
    ASSERT_TRUE((*e)->AddRequest(1, {5, 6, 7}, GenerationParams{}).ok());
    int tokens = 0;
    while ((*e)->HasWork()) {
      for (const RequestOutput& out : (*e)->Step()) tokens += static_cast<int>(out.tokens.size());
    }
    EXPECT_GT(tokens, 0);
  }
}

TEST_F(EngineStartupTest, APoolShorterThanTheContextIsWarnedAbout) {
  // Serving it is allowed (requests beyond the pool are refused, naming its capacity),
  // but the start-up log says so instead of leaving it to the first long request.
  auto ring = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(32);
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("startup-test", ring));
  EngineOptions o = Options();
  o.kv_cache_bytes = 4 * 16 * 2 * 64 * 4 * 2;  // 4 blocks of 16 tokens: 2 layers, fp32 K and V
  auto e = Engine::Create(o);
  spdlog::set_default_logger(previous);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ((*e)->info().kv_capacity_tokens, 64);
  bool warned = false;
  for (const std::string& line : ring->last_formatted()) {
    warned |=
        line.find("holds 64 tokens per sequence, less than max_model_len 512") != std::string::npos;
  }
  EXPECT_TRUE(warned);
}

}  // namespace
}  // namespace leank
