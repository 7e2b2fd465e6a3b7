#include "engine/model/weights.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model/test_util.h"

namespace leank {
namespace {

using absl::StatusCode;
using Json = nlohmann::json;
using test_util::TempDir;

Json TinyConfig(const std::string& arch) {
  Json j = {{"architectures", {arch}},
            {"vocab_size", 40},
            {"hidden_size", 16},
            {"intermediate_size", 24},
            {"num_hidden_layers", 2},
            {"num_attention_heads", 4},
            {"num_key_value_heads", 2},
            {"max_position_embeddings", 128},
            {"tie_word_embeddings", false},
            {"torch_dtype", "bfloat16"}};
  if (arch == "Qwen2ForCausalLM") j["tie_word_embeddings"] = true;
  return j;
}

// Every tensor a model of `config` needs, random bf16 values, fixed seeds.
std::vector<RawTensor> TinyTensors(const ModelConfig& c) {
  std::vector<RawTensor> out;
  uint32_t seed = 100;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::string bytes;
    for (float v : test_util::RandomFloats(n, seed++)) {
      const uint16_t h = FloatToBf16(v);
      bytes.append(reinterpret_cast<const char*>(&h), 2);
    }
    out.push_back({name, "BF16", shape, bytes});
  };
  const int64_t h = c.hidden_size, i = c.intermediate_size, q = c.q_size(), kv = c.kv_size();
  add("model.embed_tokens.weight", {c.vocab_size, h});
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", {h});
    add(p + "self_attn.q_proj.weight", {q, h});
    add(p + "self_attn.k_proj.weight", {kv, h});
    add(p + "self_attn.v_proj.weight", {kv, h});
    add(p + "self_attn.o_proj.weight", {h, q});
    if (c.attention_bias) {
      add(p + "self_attn.q_proj.bias", {q});
      add(p + "self_attn.k_proj.bias", {kv});
      add(p + "self_attn.v_proj.bias", {kv});
    }
    add(p + "post_attention_layernorm.weight", {h});
    add(p + "mlp.gate_proj.weight", {i, h});
    add(p + "mlp.up_proj.weight", {i, h});
    add(p + "mlp.down_proj.weight", {h, i});
  }
  add("model.norm.weight", {h});
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, h});
  return out;
}

class TinyModelTest : public ::testing::Test {
 protected:
  // Writes config.json and model.safetensors; `edit` may change the tensors first.
  void Write(const Json& config_json,
             const std::function<void(std::vector<RawTensor>&)>& edit = nullptr) {
    test_util::WriteBytes(dir_ / "config.json", config_json.dump());
    auto config = ParseModelConfig(config_json.dump());
    ASSERT_TRUE(config.ok()) << config.status();
    tensors_ = TinyTensors(*config);
    if (edit) edit(tensors_);
    ASSERT_TRUE(WriteSafetensors(dir_ / "model.safetensors", tensors_).ok());
  }
  const RawTensor& Raw(const std::string& name) const {
    for (const RawTensor& t : tensors_) {
      if (t.name == name) return t;
    }
    ADD_FAILURE() << name;
    return tensors_.front();
  }
  static void Erase(std::vector<RawTensor>& tensors, const std::string& name) {
    std::erase_if(tensors, [&](const RawTensor& t) { return t.name == name; });
  }
  TempDir dir_;
  std::vector<RawTensor> tensors_;
};

TEST_F(TinyModelTest, LlamaUntied) {
  Write(TinyConfig("LlamaForCausalLM"));
  auto model = LoadModel(dir_.path());
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelWeights& w = model->weights;
  ASSERT_EQ(w.layers.size(), 2u);
  EXPECT_EQ(w.embed_tokens.shape, (std::vector<int64_t>{40, 16}));
  EXPECT_EQ(w.layers[1].k_proj.shape, (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(w.layers[1].o_proj.shape, (std::vector<int64_t>{16, 16}));
  EXPECT_EQ(w.layers[0].down_proj.shape, (std::vector<int64_t>{16, 24}));
  EXPECT_FALSE(w.layers[0].q_bias.has_value());
  EXPECT_EQ(w.lm_head.name, "lm_head.weight");
  EXPECT_NE(w.lm_head.data, w.embed_tokens.data);
  // The views point at the bytes that were written.
  const RawTensor& raw = Raw("model.layers.1.mlp.up_proj.weight");
  ASSERT_EQ(w.layers[1].up_proj.num_bytes, static_cast<int64_t>(raw.bytes.size()));
  EXPECT_EQ(std::memcmp(w.layers[1].up_proj.data, raw.bytes.data(), raw.bytes.size()), 0);
  EXPECT_EQ(w.layers[1].up_proj.dtype, DType::kBF16);
}

TEST_F(TinyModelTest, Qwen2TiedWithBiases) {
  Write(TinyConfig("Qwen2ForCausalLM"));
  auto model = LoadModel(dir_.path());
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelWeights& w = model->weights;
  EXPECT_EQ(w.lm_head.data, w.embed_tokens.data);
  for (const LayerWeights& layer : w.layers) {
    ASSERT_TRUE(layer.q_bias && layer.k_bias && layer.v_bias);
    EXPECT_EQ(layer.q_bias->shape, std::vector<int64_t>{16});
    EXPECT_EQ(layer.k_bias->shape, std::vector<int64_t>{8});
  }
  std::vector<float> bias = w.layers[1].v_bias->ToFloat();
  std::vector<float> want;
  const std::string& bytes = Raw("model.layers.1.self_attn.v_proj.bias").bytes;
  for (size_t i = 0; i < bytes.size(); i += 2) {
    uint16_t h;
    std::memcpy(&h, bytes.data() + i, 2);
    want.push_back(Bf16ToFloat(h));
  }
  EXPECT_EQ(bias, want);
}

TEST_F(TinyModelTest, MissingTensorIsNamed) {
  Write(TinyConfig("MistralForCausalLM"),
        [](auto& t) { Erase(t, "model.layers.1.mlp.down_proj.weight"); });
  EXPECT_STATUS(LoadModel(dir_.path()).status(), StatusCode::kNotFound,
                "model.layers.1.mlp.down_proj.weight");
}

TEST_F(TinyModelTest, MissingBiasIsNamed) {
  Write(TinyConfig("Qwen2ForCausalLM"),
        [](auto& t) { Erase(t, "model.layers.0.self_attn.k_proj.bias"); });
  EXPECT_STATUS(LoadModel(dir_.path()).status(), StatusCode::kNotFound,
                "model.layers.0.self_attn.k_proj.bias");
}

TEST_F(TinyModelTest, UntiedNeedsLmHead) {
  Write(TinyConfig("LlamaForCausalLM"), [](auto& t) { Erase(t, "lm_head.weight"); });
  EXPECT_STATUS(LoadModel(dir_.path()).status(), StatusCode::kNotFound, "lm_head.weight",
                "tie_word_embeddings");
}

TEST_F(TinyModelTest, WrongShapeIsNamed) {
  Write(TinyConfig("LlamaForCausalLM"), [](auto& tensors) {
    for (RawTensor& t : tensors) {
      if (t.name == "model.layers.0.self_attn.k_proj.weight") t.shape = {16, 8};  // transposed
    }
  });
  EXPECT_STATUS(LoadModel(dir_.path()).status(), StatusCode::kInvalidArgument,
                "model.layers.0.self_attn.k_proj.weight", "model.safetensors", "[16, 8]",
                "[8, 16]");
}

TEST_F(TinyModelTest, ConfigLayersMustMatchTensors) {
  Json config = TinyConfig("LlamaForCausalLM");
  Write(config);
  // More layers than the file has, fewer (the last layer was silently ignored: a
  // different model ran), and a count so large that sizing the layer table for it
  // threw std::bad_alloc and aborted the process.
  for (int layers : {3, 1, 2147483647}) {
    config["num_hidden_layers"] = layers;
    test_util::WriteBytes(dir_ / "config.json", config.dump());
    EXPECT_STATUS(LoadModel(dir_.path()).status(), StatusCode::kInvalidArgument,
                  absl::StrCat("num_hidden_layers is ", layers), "hold 2 layers", "model.layers.1)",
                  dir_.path().string());
  }
}

TEST_F(TinyModelTest, UnusedTensorsAreRefused) {
  // A tensor the model would not read means the checkpoint is not the model config.json
  // describes (here: a Qwen3-style QK norm, biases on a model without attention_bias).
  for (const char* extra : {"model.layers.1.self_attn.q_norm.weight",
                            "model.layers.0.self_attn.k_proj.bias", "lm_head.bias"}) {
    Write(TinyConfig("LlamaForCausalLM"), [&](auto& t) {
      t.push_back({extra, "BF16", {16}, std::string(32, '\0')});
    });
    EXPECT_STATUS(LoadModel(dir_.path()).status(), StatusCode::kInvalidArgument, extra, "not used",
                  "LlamaForCausalLM", "1 unused tensor", dir_.path().string());
  }
  // Tolerated: rotary inverse frequencies (recomputed from the config) and the copy of
  // the embedding some tied checkpoints carry as lm_head.weight.
  Write(TinyConfig("Qwen2ForCausalLM"), [](auto& t) {
    t.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", "F32", {2}, std::string(8, '\0')});
    t.push_back({"lm_head.weight", "BF16", {40, 16}, std::string(40 * 16 * 2, '\0')});
  });
  auto model = LoadModel(dir_.path());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->weights.lm_head.data, model->weights.embed_tokens.data);
}

TEST(LoadModelTest, MissingConfig) {
  TempDir dir;
  EXPECT_STATUS(LoadModel(dir.path()).status(), StatusCode::kNotFound, "config.json");
}

// Tiny models saved by transformers (tests/data/model/make_test_models.py): every tensor
// compared with what torch saw.
class TransformersModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TransformersModelTest, MatchesTorch) {
  const std::filesystem::path data = std::filesystem::path(LEANK_TEST_DATA_DIR) / "model";
  std::ifstream in(data / "expected.json");
  const Json expected = Json::parse(in)[GetParam()];
  auto model = LoadModel(data / GetParam());
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_GT(expected.size(), 10u);
  for (const auto& [name, e] : expected.items()) {
    if (!model->store->Has(name)) {  // lm_head of a tied model: the embedding
      EXPECT_EQ(name, "lm_head.weight");
      EXPECT_TRUE(model->config.tie_word_embeddings);
      continue;
    }
    auto view = model->store->Get(name, e["shape"].get<std::vector<int64_t>>());
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(DTypeName(view->dtype), e["dtype"].get<std::string>()) << name;
    const std::vector<float> values = view->ToFloat();
    double sum = 0;
    for (float v : values) sum += v;
    EXPECT_NEAR(sum, e["sum"].get<double>(), 1e-9 * values.size() + 1e-9) << name;
    const auto first = e["first"].get<std::vector<double>>();
    for (size_t i = 0; i < first.size(); ++i) EXPECT_EQ(values[i], first[i]) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, TransformersModelTest,
                         ::testing::Values("tiny_llama_sharded", "tiny_qwen2"));

TEST(TransformersConfigTest, ConfigsAndBinding) {
  const std::filesystem::path data = std::filesystem::path(LEANK_TEST_DATA_DIR) / "model";
  auto llama = LoadModel(data / "tiny_llama_sharded");
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(llama->config.eos_token_ids, (std::vector<int>{2, 3}));
  EXPECT_EQ(llama->config.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(llama->config.rope_scaling.original_max_position_embeddings, 64);
  EXPECT_EQ(llama->config.torch_dtype, DType::kBF16);
  EXPECT_NE(llama->weights.lm_head.file, llama->weights.embed_tokens.file);  // two shards
  auto qwen = LoadModel(data / "tiny_qwen2");
  ASSERT_TRUE(qwen.ok()) << qwen.status();
  EXPECT_TRUE(qwen->config.attention_bias);
  EXPECT_EQ(qwen->config.num_kv_heads, 1);
  EXPECT_EQ(qwen->config.torch_dtype, DType::kF16);
  EXPECT_EQ(qwen->weights.lm_head.data, qwen->weights.embed_tokens.data);
  EXPECT_TRUE(qwen->weights.layers[1].q_bias.has_value());
}

}  // namespace
}  // namespace leank
