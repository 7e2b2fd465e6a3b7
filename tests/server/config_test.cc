#include "server/config.h"

#include <set>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace leank::server {
namespace {

TEST(ConfigSchema, EveryFlagHasAUniqueLeankEnvTwin) {
  const std::vector<FlagSchema> schema = ConfigSchema();
  ASSERT_GE(schema.size(), 15u);
  std::set<std::string> flags, envs;
  for (const FlagSchema& f : schema) {
    EXPECT_EQ(f.flag.rfind("--", 0), 0u) << f.flag;
    EXPECT_EQ(f.env.rfind("LEANK_", 0), 0u) << f.env;
    EXPECT_TRUE(flags.insert(f.flag).second) << "duplicate " << f.flag;
    EXPECT_TRUE(envs.insert(f.env).second) << "duplicate " << f.env;
    EXPECT_FALSE(f.help.empty()) << f.flag;
  }
  for (const char* env :
       {"LEANK_MODEL", "LEANK_MASKS", "LEANK_PORT", "LEANK_METRICS_PORT", "LEANK_HOST",
        "LEANK_KV_CACHE_MEMORY", "LEANK_MAX_NUM_SEQS", "LEANK_MAX_BATCHED_TOKENS",
        "LEANK_MAX_WAITING", "LEANK_BLOCK_SIZE", "LEANK_SINK", "LEANK_RECENT", "LEANK_BACKEND",
        "LEANK_DRAIN_TIMEOUT", "LEANK_LOG_LEVEL"}) {
    EXPECT_TRUE(envs.count(env)) << env;
  }
}

TEST(ConfigSchema, JsonCarriesTheDefaults) {
  const nlohmann::json j = nlohmann::json::parse(ConfigSchemaJson());
  ASSERT_TRUE(j.is_array());
  std::map<std::string, std::string> defaults;
  for (const auto& e : j) defaults[e.at("env").get<std::string>()] = e.at("default");
  EXPECT_EQ(defaults["LEANK_PORT"], "50051");
  EXPECT_EQ(defaults["LEANK_METRICS_PORT"], "9090");
  EXPECT_EQ(defaults["LEANK_DRAIN_TIMEOUT"], "30");
  EXPECT_EQ(defaults["LEANK_BACKEND"], "cpu");
  EXPECT_EQ(defaults["LEANK_WARMUP"], "true");
}

TEST(ParseConfig, FlagsEnvAndPrecedence) {
  setenv("LEANK_PORT", "6000", 1);
  setenv("LEANK_MAX_NUM_SEQS", "7", 1);
  setenv("LEANK_KV_CACHE_MEMORY", "2MiB", 1);
  std::vector<std::string> args = {"leank-server", "--model=/m", "--max-num-seqs=9",
                                   "--drain-timeout=1.5", "--warmup=false"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  absl::StatusOr<ServerConfig> c = ParseConfig(static_cast<int>(argv.size()), argv.data());
  unsetenv("LEANK_PORT");
  unsetenv("LEANK_MAX_NUM_SEQS");
  unsetenv("LEANK_KV_CACHE_MEMORY");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model, "/m");
  EXPECT_EQ(c->port, 6000);                // from the env twin
  EXPECT_EQ(c->max_num_seqs, 9);           // the flag wins
  EXPECT_EQ(c->kv_cache_memory, 2 << 20);  // units
  EXPECT_DOUBLE_EQ(c->drain_timeout, 1.5);
  EXPECT_FALSE(c->warmup);
  EXPECT_TRUE(CheckConfig(*c).ok());
  const EngineOptions o = c->ToEngineOptions();
  EXPECT_EQ(o.max_num_seqs, 9);
  EXPECT_FALSE(o.sink.has_value());
}

TEST(CheckConfig, NamesTheBadFlag) {
  ServerConfig c;
  c.model = "/m";
  c.block_size = 10;
  absl::Status s = CheckConfig(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("--block-size"), absl::string_view::npos) << s;
  c.block_size = 16;
  c.backend = "tpu";
  EXPECT_NE(CheckConfig(c).message().find("--backend"), absl::string_view::npos);
  c.backend = "cpu";
  c.admission = "greedy";
  EXPECT_NE(CheckConfig(c).message().find("--admission"), absl::string_view::npos);
  c.admission = "optimistic";
  EXPECT_TRUE(CheckConfig(c).ok());
  EXPECT_EQ(c.ToEngineOptions().admission, "optimistic");
  c.model.clear();
  EXPECT_NE(CheckConfig(c).message().find("--model"), absl::string_view::npos);
}

TEST(CheckConfig, CpuActivations) {
  ServerConfig c;
  c.model = "/m";
  EXPECT_EQ(c.cpu_activations, "f32");
  EXPECT_FALSE(c.ToEngineOptions().cpu_bf16_activations);  // the fp32 reference by default
  c.cpu_activations = "fp16";
  absl::Status s = CheckConfig(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("--cpu-activations"), absl::string_view::npos) << s;
  c.cpu_activations = "bf16";
  EXPECT_TRUE(CheckConfig(c).ok());
  EXPECT_TRUE(c.ToEngineOptions().cpu_bf16_activations);
  c.backend = "cuda";
  EXPECT_NE(CheckConfig(c).message().find("--cpu-activations"), absl::string_view::npos);
}

// --max-model-len 1 fits no request (one prompt token, no room to generate): refused at
// start-up naming the flag, not after loading by a failed warm-up generation.
TEST(CheckConfig, MaxModelLen) {
  ServerConfig c;
  c.model = "/m";
  for (int64_t bad : {-1, 1}) {
    c.max_model_len = static_cast<decltype(c.max_model_len)>(bad);
    absl::Status s = CheckConfig(c);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(s.message().find("--max-model-len"), absl::string_view::npos) << s;
  }
  for (int64_t good : {0, 2, 8192}) {
    c.max_model_len = static_cast<decltype(c.max_model_len)>(good);
    EXPECT_TRUE(CheckConfig(c).ok()) << good;
  }
}

TEST(ParseConfig, CpuActivationsFromEnvTwin) {
  setenv("LEANK_CPU_ACTIVATIONS", "bf16", 1);
  std::vector<std::string> args = {"leank-server", "--model=/m"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  absl::StatusOr<ServerConfig> c = ParseConfig(static_cast<int>(argv.size()), argv.data());
  unsetenv("LEANK_CPU_ACTIVATIONS");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->cpu_activations, "bf16");
  EXPECT_TRUE(c->ToEngineOptions().cpu_bf16_activations);
}

}  // namespace
}  // namespace leank::server
