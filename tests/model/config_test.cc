#include "engine/model/config.h"

#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model/test_util.h"

namespace leank {
namespace {

using Json = nlohmann::json;
using absl::StatusCode;

// Shaped like what transformers 4.x writes for each architecture (values from real models).
Json LlamaConfigJson() {
  return Json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "_name_or_path": "meta-llama/Llama-3.1-8B",
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": false, "attention_bias": false, "mlp_bias": false,
    "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    "torch_dtype": "bfloat16"})");
}

Json MistralConfigJson() {
  return Json::parse(R"({
    "architectures": ["MistralForCausalLM"], "model_type": "mistral",
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "max_position_embeddings": 32768,
    "sliding_window": 4096, "tie_word_embeddings": false, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"})");
}

Json Qwen2ConfigJson() {
  return Json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
    "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
    "sliding_window": 32768, "use_sliding_window": false, "max_window_layers": 21,
    "tie_word_embeddings": true, "hidden_act": "silu", "rope_scaling": null,
    "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16"})");
}

absl::StatusOr<ModelConfig> Parse(const Json& j) {
  return ParseModelConfig(j.dump(), "/models/test/config.json");
}

TEST(ConfigTest, Llama31) {
  auto c = Parse(LlamaConfigJson());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "LlamaForCausalLM");
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->name, "meta-llama/Llama-3.1-8B");
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_EQ(c->num_layers, 32);
  EXPECT_EQ(c->num_heads, 32);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->group_size(), 4);
  EXPECT_EQ(c->kv_size(), 1024);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_EQ(c->max_position_embeddings, 131072);
  EXPECT_EQ(c->bos_token_ids, std::vector<int>{128000});
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
  EXPECT_EQ(c->torch_dtype, DType::kBF16);
  EXPECT_EQ(c->sliding_window, 0);
}

TEST(ConfigTest, Mistral) {
  auto c = Parse(MistralConfigJson());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "mistral");
  EXPECT_EQ(c->name, "test");  // the folder name when _name_or_path is absent
  EXPECT_EQ(c->sliding_window, 4096);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_EQ(c->eos_token_ids, std::vector<int>{2});
  Json j = MistralConfigJson();
  j["sliding_window"] = nullptr;
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 0);
}

TEST(ConfigTest, Qwen2) {
  auto c = Parse(Qwen2ConfigJson());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "qwen2");
  EXPECT_TRUE(c->attention_bias);  // no key; Qwen2 always has q/k/v biases
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->group_size(), 7);
  EXPECT_EQ(c->sliding_window, 0);  // use_sliding_window is false
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
}

TEST(ConfigTest, DefaultsForOptionalKeys) {
  Json j = LlamaConfigJson();
  for (const char* key :
       {"num_key_value_heads", "rms_norm_eps", "rope_theta", "rope_scaling", "tie_word_embeddings",
        "attention_bias", "bos_token_id", "eos_token_id", "torch_dtype", "_name_or_path"}) {
    j.erase(key);
  }
  j["head_dim"] = nullptr;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 32);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);
  // LlamaConfig's bos_token_id 1 and eos_token_id 2.
  EXPECT_EQ(c->bos_token_ids, std::vector<int>{1});
  EXPECT_EQ(c->eos_token_ids, std::vector<int>{2});
  EXPECT_EQ(c->torch_dtype, DType::kF32);
}

TEST(ConfigTest, ExplicitHeadDimAndNullIds) {
  Json j = LlamaConfigJson();
  j["head_dim"] = 64;
  j["bos_token_id"] = nullptr;
  j["eos_token_id"] = nullptr;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->q_size(), 2048);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_TRUE(c->bos_token_ids.empty());  // null is None, not the class default
  EXPECT_TRUE(c->eos_token_ids.empty());
}

// Keys absent from config.json take what the transformers config class (4.x and 5.x)
// defaults to for that architecture; the old code used one set of defaults for all
// three (no window, kv heads = heads, no bos/eos), so a Mistral config without
// sliding_window ran full attention where transformers slides a 4096-token window.
TEST(ConfigTest, AbsentKeysTakeTheArchitecturesTransformersDefaults) {
  // MistralConfig: sliding_window 4096, num_key_value_heads 8, bos 1, eos 2.
  Json m = MistralConfigJson();
  for (const char* key : {"sliding_window", "num_key_value_heads", "bos_token_id", "eos_token_id"})
    m.erase(key);
  auto c = Parse(m);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 4096);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->bos_token_ids, std::vector<int>{1});
  EXPECT_EQ(c->eos_token_ids, std::vector<int>{2});
  // null: None (no window; kv heads = heads).
  m["sliding_window"] = nullptr;
  m["num_key_value_heads"] = nullptr;
  c = Parse(m);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 0);
  EXPECT_EQ(c->num_kv_heads, 32);

  // Qwen2Config: num_key_value_heads 32, no bos/eos; with use_sliding_window a 4096
  // window on layers >= max_window_layers (28), so a 24-layer model has none.
  Json q = Qwen2ConfigJson();
  for (const char* key : {"num_key_value_heads", "bos_token_id", "eos_token_id", "sliding_window",
                          "max_window_layers"})
    q.erase(key);
  q["num_attention_heads"] = 32;
  q["hidden_size"] = 2048;
  q["use_sliding_window"] = true;
  c = Parse(q);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 32);
  EXPECT_TRUE(c->bos_token_ids.empty());
  EXPECT_TRUE(c->eos_token_ids.empty());
  EXPECT_EQ(c->sliding_window, 0);  // 24 layers, none >= 28
  q["num_hidden_layers"] = 30;
  c = Parse(q);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 4096);
  q["max_window_layers"] = 30;
  c = Parse(q);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 0);
  // transformers 5.x writes layer_types; it decides which layers slide.
  q["layer_types"] = Json::array();
  for (int i = 0; i < 30; ++i)
    q["layer_types"].push_back(i == 29 ? "sliding_attention" : "full_attention");
  q["sliding_window"] = 1024;
  c = Parse(q);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 1024);
  q["sliding_window"] = nullptr;
  c = Parse(q);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 0);

  // A default id the vocabulary cannot produce is left out (it could never stop anything).
  Json tiny = LlamaConfigJson();
  tiny.erase("bos_token_id");
  tiny.erase("eos_token_id");
  tiny["vocab_size"] = 2;
  c = Parse(tiny);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bos_token_ids, std::vector<int>{1});
  EXPECT_TRUE(c->eos_token_ids.empty());
}

// transformers' attention biases: Qwen2 q/k/v always; Llama's attention_bias puts one on
// q/k/v AND o_proj (which the backends do not add: refused by name, where the old code
// bound q/k/v only and then called the checkpoint's o_proj.bias an unused tensor);
// Mistral has none, whatever config.json says (the old code required q/k/v biases).
TEST(ConfigTest, AttentionBiasAsTransformersBuildsIt) {
  Json l = LlamaConfigJson();
  l["attention_bias"] = true;
  auto c = Parse(l);
  ASSERT_EQ(c.status().code(), StatusCode::kUnimplemented) << c.status();
  EXPECT_NE(c.status().message().find("attention_bias"), std::string::npos) << c.status();
  EXPECT_NE(c.status().message().find("o_proj"), std::string::npos) << c.status();
  Json m = MistralConfigJson();
  m["attention_bias"] = true;
  c = Parse(m);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->attention_bias);
}

TEST(ConfigTest, LinearRopeScalingWithLegacyTypeKey) {
  Json j = LlamaConfigJson();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.5}};
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLinear);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 2.5);
  j["rope_scaling"] = {{"rope_type", "default"}};
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);
}

// transformers 5.x: rope_theta and scaling live in rope_parameters; `dtype` replaces
// torch_dtype; no architectures when the config was saved without a model.
TEST(ConfigTest, Transformers5RopeParameters) {
  Json j = LlamaConfigJson();
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j.erase("torch_dtype");
  j.erase("architectures");
  j["dtype"] = "float16";
  j["rope_parameters"] = {{"rope_theta", 250000.0},  {"rope_type", "llama3"},
                          {"factor", 32.0},          {"low_freq_factor", 2.0},
                          {"high_freq_factor", 8.0}, {"original_max_position_embeddings", 4096}};
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "LlamaForCausalLM");
  EXPECT_EQ(c->torch_dtype, DType::kF16);
  EXPECT_DOUBLE_EQ(c->rope_theta, 250000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 32.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.low_freq_factor, 2.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.high_freq_factor, 8.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 4096);

  j["rope_parameters"] = {{"rope_theta", 1e6}, {"rope_type", "default"}};
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);

  j["rope_parameters"] = {{"rope_theta", 1e4}, {"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_STATUS(Parse(j).status(), StatusCode::kUnimplemented, "yarn", "config.json");
}

TEST(ConfigTest, RefusesUnsupportedRopeType) {
  Json j = LlamaConfigJson();
  j["rope_scaling"] = {
      {"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32768}};
  EXPECT_STATUS(Parse(j).status(), StatusCode::kUnimplemented, "yarn", "/models/test/config.json",
                "llama3");
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  EXPECT_STATUS(Parse(j).status(), StatusCode::kUnimplemented, "dynamic");
}

TEST(ConfigTest, RopeScalingNeedsItsParameters) {
  Json j = LlamaConfigJson();
  j["rope_scaling"].erase("low_freq_factor");
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "rope_scaling.low_freq_factor");
  j["rope_scaling"] = {{"type", "linear"}};
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "rope_scaling.factor");
  j["rope_scaling"] = {{"type", "linear"}, {"factor", -1.0}};
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "factor");
}

TEST(ConfigTest, MissingRequiredKeysAreNamed) {
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "max_position_embeddings"}) {
    Json j = Qwen2ConfigJson();
    j.erase(key);
    EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, key, "/models/test/config.json");
  }
}

TEST(ConfigTest, RefusesUnsupportedArchitecture) {
  Json j = LlamaConfigJson();
  j["architectures"] = {"GPT2LMHeadModel"};
  EXPECT_STATUS(Parse(j).status(), StatusCode::kUnimplemented, "GPT2LMHeadModel",
                "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM");
  j.erase("architectures");
  j["model_type"] = "gemma";
  EXPECT_STATUS(Parse(j).status(), StatusCode::kUnimplemented, "gemma", "Qwen2ForCausalLM");
  j.erase("model_type");
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "architectures");
}

TEST(ConfigTest, SanityChecks) {
  Json j = LlamaConfigJson();
  j["num_key_value_heads"] = 5;
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "num_key_value_heads");
  j = LlamaConfigJson();
  j["hidden_size"] = 0;
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "hidden_size");
  j = LlamaConfigJson();
  j["vocab_size"] = -3;
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "vocab_size");
  j = LlamaConfigJson();
  j["hidden_size"] = 4100;  // not a multiple of 32 heads, no head_dim
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "hidden_size");
  j = LlamaConfigJson();
  j["num_hidden_layers"] = "32";
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "num_hidden_layers");
  j = LlamaConfigJson();
  j["intermediate_size"] = 14336.5;
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "intermediate_size");
  j = LlamaConfigJson();
  j["eos_token_id"] = {1, "x"};
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "eos_token_id");
  // 32 x 2^30 wrapped around int: "expected [0, 4096]" for q_proj.
  j = LlamaConfigJson();
  j["head_dim"] = 1073741824;
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "head_dim", "34359738368");
  // Ids outside the vocabulary were accepted: an EOS that can never be sampled.
  j = LlamaConfigJson();
  j["eos_token_id"] = {128001, 128256};
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "eos_token_id", "128256",
                "vocab_size 128256");
  j = LlamaConfigJson();
  j["bos_token_id"] = -1;
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "bos_token_id", "-1");
  // RoPE splits a head in two halves: an odd head_dim loaded and ran a shifted rotation.
  j = LlamaConfigJson();
  j["head_dim"] = 127;
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "head_dim", "must be even");
  j = LlamaConfigJson();
  j["torch_dtype"] = "int8";
  EXPECT_STATUS(Parse(j).status(), StatusCode::kInvalidArgument, "torch_dtype", "int8");
  j = LlamaConfigJson();
  j["hidden_act"] = "gelu";
  EXPECT_STATUS(Parse(j).status(), StatusCode::kUnimplemented, "gelu");
  EXPECT_STATUS(ParseModelConfig("{not json", "x/config.json").status(),
                StatusCode::kInvalidArgument, "x/config.json");
  EXPECT_STATUS(ParseModelConfig("[1, 2]", "x/config.json").status(), StatusCode::kInvalidArgument,
                "x/config.json");
}

TEST(ConfigTest, LoadFromFolder) {
  test_util::TempDir dir;
  EXPECT_STATUS(LoadModelConfig(dir.path()).status(), StatusCode::kNotFound, "config.json");
  test_util::WriteBytes(dir / "config.json", MistralConfigJson().dump());
  auto c = LoadModelConfig(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->name, dir.path().filename().string());
  EXPECT_EQ(c->num_kv_heads, 8);
}

TEST(ConfigTest, GenerationConfigEosIdsJoinConfigs) {
  // Llama-3-Instruct: config.json names <|end_of_text|> only, generation_config.json also
  // <|eot_id|>; HF generate and vLLM stop on both.
  test_util::TempDir dir;
  nlohmann::json j = LlamaConfigJson();
  j["eos_token_id"] = 128001;
  test_util::WriteBytes(dir / "config.json", j.dump());
  auto c = LoadModelConfig(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{128001}));
  test_util::WriteBytes(dir / "generation_config.json",
                        R"({"bos_token_id": 128000, "eos_token_id": [128001, 128009]})");
  c = LoadModelConfig(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{128001, 128009}));
  test_util::WriteBytes(dir / "generation_config.json", R"({"eos_token_id": 128008})");
  c = LoadModelConfig(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{128001, 128008}));
  test_util::WriteBytes(dir / "generation_config.json", R"({"temperature": 0.6})");
  c = LoadModelConfig(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{128001}));
  test_util::WriteBytes(dir / "generation_config.json", R"({"eos_token_id": [128001, 999999]})");
  EXPECT_STATUS(LoadModelConfig(dir.path()).status(), StatusCode::kInvalidArgument,
                "generation_config.json", "eos_token_id", "999999");
  test_util::WriteBytes(dir / "generation_config.json", "{oops");
  EXPECT_STATUS(LoadModelConfig(dir.path()).status(), StatusCode::kInvalidArgument,
                "generation_config.json");
}

}  // namespace
}  // namespace leank
