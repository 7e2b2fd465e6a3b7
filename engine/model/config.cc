#include "engine/model/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace leank {
namespace {

using Json = nlohmann::json;

constexpr const char* kSupportedArchitectures[] = {"LlamaForCausalLM", "MistralForCausalLM",
                                                   "Qwen2ForCausalLM"};

std::string ArchitectureForModelType(std::string_view model_type) {
  if (model_type == "llama") return "LlamaForCausalLM";
  if (model_type == "mistral") return "MistralForCausalLM";
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  return "";
}

std::string ModelTypeForArchitecture(std::string_view arch) {
  if (arch == "LlamaForCausalLM") return "llama";
  if (arch == "MistralForCausalLM") return "mistral";
  if (arch == "Qwen2ForCausalLM") return "qwen2";
  return "";
}

// Typed access to one JSON object; every error names the file and the key.
class FieldReader {
 public:
  FieldReader(const Json& object, std::string origin, std::string prefix = "")
      : object_(object), origin_(std::move(origin)), prefix_(std::move(prefix)) {}

  // Null counts as absent: HF writes `"head_dim": null` for "use the default".
  const Json* Find(const char* key) const {
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::Status Missing(const char* key) const {
    return absl::InvalidArgumentError(
        absl::StrCat(origin_, ": missing required key '", prefix_, key, "'"));
  }
  absl::Status Bad(const char* key, absl::string_view why) const {
    return absl::InvalidArgumentError(absl::StrCat(origin_, ": key '", prefix_, key, "' ", why));
  }

  absl::StatusOr<int> Int(const char* key) const {
    const Json* v = Find(key);
    if (v == nullptr) return Missing(key);
    return AsInt(key, *v);
  }
  absl::StatusOr<int> Int(const char* key, int fallback) const {
    const Json* v = Find(key);
    return v == nullptr ? fallback : AsInt(key, *v);
  }
  absl::StatusOr<double> Double(const char* key) const {
    const Json* v = Find(key);
    if (v == nullptr) return Missing(key);
    if (!v->is_number()) return Bad(key, absl::StrCat("must be a number, got ", v->dump()));
    return v->get<double>();
  }
  absl::StatusOr<double> Double(const char* key, double fallback) const {
    return Find(key) == nullptr ? fallback : Double(key);
  }
  absl::StatusOr<bool> Bool(const char* key, bool fallback) const {
    const Json* v = Find(key);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) return Bad(key, absl::StrCat("must be true or false, got ", v->dump()));
    return v->get<bool>();
  }
  absl::StatusOr<std::string> String(const char* key, std::string fallback) const {
    const Json* v = Find(key);
    if (v == nullptr) return fallback;
    if (!v->is_string()) return Bad(key, absl::StrCat("must be a string, got ", v->dump()));
    return v->get<std::string>();
  }
  // An int, a list of ints, or null/absent (empty).
  absl::StatusOr<std::vector<int>> IntList(const char* key) const {
    const Json* v = Find(key);
    std::vector<int> out;
    if (v == nullptr) return out;
    if (!v->is_array()) {
      auto one = AsInt(key, *v);
      if (!one.ok()) return one.status();
      out.push_back(*one);
      return out;
    }
    for (const Json& item : *v) {
      auto one = AsInt(key, item);
      if (!one.ok()) return one.status();
      out.push_back(*one);
    }
    return out;
  }

 private:
  absl::StatusOr<int> AsInt(const char* key, const Json& v) const {
    double d;
    if (v.is_number_integer() || v.is_number_unsigned()) {
      d = static_cast<double>(v.get<int64_t>());
      if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{1} << 62) d = 1e300;
    } else if (v.is_number_float()) {
      d = v.get<double>();  // some exporters write 8192.0
      if (d != std::floor(d)) return Bad(key, absl::StrCat("must be an integer, got ", v.dump()));
    } else {
      return Bad(key, absl::StrCat("must be an integer, got ", v.dump()));
    }
    if (d < std::numeric_limits<int>::min() || d > std::numeric_limits<int>::max()) {
      return Bad(key, absl::StrCat("is out of range: ", v.dump()));
    }
    return static_cast<int>(d);
  }

  const Json& object_;
  std::string origin_;
  std::string prefix_;
};

#define MODEL_ASSIGN_OR_RETURN(lhs, expr) \
  do {                                    \
    auto _r = (expr);                     \
    if (!_r.ok()) return _r.status();     \
    lhs = *std::move(_r);                 \
  } while (0)

absl::Status ParseArchitecture(const Json& root, const FieldReader& r, const std::string& origin,
                               ModelConfig& c) {
  MODEL_ASSIGN_OR_RETURN(c.model_type, r.String("model_type", ""));
  const Json* archs = r.Find("architectures");
  if (archs != nullptr) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
      return r.Bad("architectures", "must be a non-empty list of strings");
    }
    c.architecture = (*archs)[0].get<std::string>();
  } else {
    // transformers writes no `architectures` for a config saved without a model.
    c.architecture = ArchitectureForModelType(c.model_type);
    if (c.architecture.empty()) {
      if (c.model_type.empty()) return r.Missing("architectures");
      return absl::UnimplementedError(absl::StrCat(
          origin, ": unsupported model_type '", c.model_type,
          "' (supported architectures: ", absl::StrJoin(kSupportedArchitectures, ", "), ")"));
    }
  }
  std::string expected_type = ModelTypeForArchitecture(c.architecture);
  if (expected_type.empty()) {
    return absl::UnimplementedError(
        absl::StrCat(origin, ": unsupported architecture '", c.architecture,
                     "' (supported: ", absl::StrJoin(kSupportedArchitectures, ", "), ")"));
  }
  if (c.model_type.empty()) c.model_type = expected_type;
  return absl::OkStatus();
}

absl::Status ParseRope(const Json& root, const FieldReader& r, const std::string& origin,
                       ModelConfig& c) {
  // transformers 5.x moved rope_theta and the scaling into `rope_parameters`; older
  // configs have top-level `rope_theta` and `rope_scaling`. Both are accepted.
  const Json* params = r.Find("rope_parameters");
  if (params != nullptr && !params->is_object())
    return r.Bad("rope_parameters", "must be an object");
  // Per-layer-type layout {"full_attention": {...}}: these models only have full attention.
  if (params != nullptr && params->contains("full_attention") && !params->contains("rope_type")) {
    params = &(*params)["full_attention"];
    if (!params->is_object()) return r.Bad("rope_parameters", "full_attention must be an object");
  }
  MODEL_ASSIGN_OR_RETURN(c.rope_theta, r.Double("rope_theta", 10000.0));
  std::string scaling_key = "rope_scaling";
  const Json* scaling = r.Find("rope_scaling");
  if (scaling != nullptr && !scaling->is_object())
    return r.Bad("rope_scaling", "must be an object or null");
  if (params != nullptr) {
    FieldReader p(*params, std::string(origin), "rope_parameters.");
    MODEL_ASSIGN_OR_RETURN(c.rope_theta, p.Double("rope_theta", c.rope_theta));
    if (scaling == nullptr) {
      scaling = params;
      scaling_key = "rope_parameters";
    }
  }
  if (!(c.rope_theta > 0)) return r.Bad("rope_theta", "must be positive");
  c.rope_scaling = RopeScaling{};
  if (scaling == nullptr) return absl::OkStatus();

  FieldReader s(*scaling, std::string(origin), scaling_key + ".");
  std::string type;
  MODEL_ASSIGN_OR_RETURN(type, s.String("rope_type", ""));
  if (type.empty()) MODEL_ASSIGN_OR_RETURN(type, s.String("type", "default"));
  RopeScaling& rs = c.rope_scaling;
  if (type == "default") return absl::OkStatus();
  if (type == "linear") {
    rs.type = RopeScaling::Type::kLinear;
  } else if (type == "llama3") {
    rs.type = RopeScaling::Type::kLlama3;
    MODEL_ASSIGN_OR_RETURN(rs.low_freq_factor, s.Double("low_freq_factor"));
    MODEL_ASSIGN_OR_RETURN(rs.high_freq_factor, s.Double("high_freq_factor"));
    MODEL_ASSIGN_OR_RETURN(rs.original_max_position_embeddings,
                           s.Int("original_max_position_embeddings"));
    if (!(rs.low_freq_factor > 0) || !(rs.high_freq_factor > rs.low_freq_factor)) {
      return s.Bad("high_freq_factor", "must be greater than low_freq_factor > 0");
    }
    if (rs.original_max_position_embeddings <= 0) {
      return s.Bad("original_max_position_embeddings", "must be positive");
    }
  } else {
    return absl::UnimplementedError(
        absl::StrCat(origin, ": ", scaling_key, " type '", type,
                     "' is not supported (supported: default, linear, llama3)"));
  }
  MODEL_ASSIGN_OR_RETURN(rs.factor, s.Double("factor"));
  if (!(rs.factor > 0)) return s.Bad("factor", "must be positive");
  return absl::OkStatus();
}

// Token ids of `key` inside [0, vocab_size): an id outside is never produced, so an EOS
// there would never stop a generation.
absl::Status CheckIdsInVocab(const FieldReader& r, const char* key, const std::vector<int>& ids,
                             int vocab_size) {
  for (int id : ids) {
    if (id < 0 || id >= vocab_size) {
      return r.Bad(key, absl::StrCat("(", id, ") must be in [0, vocab_size ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSanity(const FieldReader& r, const ModelConfig& c) {
  const std::pair<const char*, int> positive[] = {
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_layers},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"max_position_embeddings", c.max_position_embeddings},
  };
  for (const auto& [key, value] : positive) {
    if (value <= 0) return r.Bad(key, absl::StrCat("must be positive, got ", value));
  }
  // q_size() and the attention code count in int: num_heads x head_dim must fit.
  if (int64_t{c.num_heads} * c.head_dim > std::numeric_limits<int>::max()) {
    return r.Bad("head_dim",
                 absl::StrCat("(", c.head_dim, ") x num_attention_heads (", c.num_heads,
                              ") = ", int64_t{c.num_heads} * c.head_dim, " is out of range"));
  }
  // RoPE rotates channel pairs (i, i + head_dim / 2): an odd head_dim has no such split
  // (transformers fails on it too).
  if (c.head_dim % 2 != 0) return r.Bad("head_dim", absl::StrCat("must be even, got ", c.head_dim));
  if (c.num_heads % c.num_kv_heads != 0) {
    return r.Bad(
        "num_key_value_heads",
        absl::StrCat("(", c.num_kv_heads, ") must divide num_attention_heads (", c.num_heads, ")"));
  }
  if (!(c.rms_norm_eps > 0)) return r.Bad("rms_norm_eps", "must be positive");
  if (c.sliding_window < 0) return r.Bad("sliding_window", "must be positive or null");
  if (absl::Status st = CheckIdsInVocab(r, "bos_token_id", c.bos_token_ids, c.vocab_size);
      !st.ok()) {
    return st;
  }
  return CheckIdsInVocab(r, "eos_token_id", c.eos_token_ids, c.vocab_size);
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view origin) {
  Json root = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(origin), ": not valid JSON"));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(origin), ": top level must be a JSON object"));
  }
  // absl::string_view is not std::string_view in Debian's absl: keep a std::string.
  const std::string origin_str(origin);
  const FieldReader r(root, origin_str);
  ModelConfig c;
  if (auto s = ParseArchitecture(root, r, origin_str, c); !s.ok()) return s;

  MODEL_ASSIGN_OR_RETURN(c.name, r.String("_name_or_path", ""));
  if (c.name.empty()) c.name = std::filesystem::path(origin).parent_path().filename().string();

  MODEL_ASSIGN_OR_RETURN(c.vocab_size, r.Int("vocab_size"));
  MODEL_ASSIGN_OR_RETURN(c.hidden_size, r.Int("hidden_size"));
  MODEL_ASSIGN_OR_RETURN(c.intermediate_size, r.Int("intermediate_size"));
  MODEL_ASSIGN_OR_RETURN(c.num_layers, r.Int("num_hidden_layers"));
  MODEL_ASSIGN_OR_RETURN(c.num_heads, r.Int("num_attention_heads"));
  // A key absent from config.json takes the default of the transformers config class,
  // which differs per architecture; null means None (here: the number of heads).
  const bool has_kv_key = root.contains("num_key_value_heads");
  int kv_default = c.num_heads;
  if (!has_kv_key && c.model_type == "mistral") kv_default = 8;  // MistralConfig
  if (!has_kv_key && c.model_type == "qwen2") kv_default = 32;   // Qwen2Config
  MODEL_ASSIGN_OR_RETURN(c.num_kv_heads, r.Int("num_key_value_heads", kv_default));
  MODEL_ASSIGN_OR_RETURN(c.max_position_embeddings, r.Int("max_position_embeddings"));
  if (r.Find("head_dim") != nullptr) {
    MODEL_ASSIGN_OR_RETURN(c.head_dim, r.Int("head_dim"));
  } else {
    if (c.num_heads <= 0 || c.hidden_size % c.num_heads != 0) {
      return r.Bad("num_attention_heads",
                   absl::StrCat("(", c.num_heads, ") must divide hidden_size (", c.hidden_size,
                                ") when head_dim is not given"));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  MODEL_ASSIGN_OR_RETURN(c.rms_norm_eps, r.Double("rms_norm_eps", 1e-6));
  MODEL_ASSIGN_OR_RETURN(c.tie_word_embeddings, r.Bool("tie_word_embeddings", false));
  MODEL_ASSIGN_OR_RETURN(c.bos_token_ids, r.IntList("bos_token_id"));
  MODEL_ASSIGN_OR_RETURN(c.eos_token_ids, r.IntList("eos_token_id"));
  // LlamaConfig and MistralConfig default bos_token_id 1 and eos_token_id 2 (HF generate
  // stops on 2 when config.json has no eos_token_id); Qwen2Config has none. An id the
  // vocabulary cannot produce plays no part, so a default outside it is left out.
  if (c.model_type == "llama" || c.model_type == "mistral") {
    for (auto [key, id, ids] : {std::tuple{"bos_token_id", 1, &c.bos_token_ids},
                                std::tuple{"eos_token_id", 2, &c.eos_token_ids}}) {
      if (!root.contains(key) && id < c.vocab_size) ids->push_back(id);
    }
  }

  // The attention window: HF's default 4096 when the key is absent, none when null.
  auto window = [&]() -> absl::StatusOr<int> {
    if (!root.contains("sliding_window")) return 4096;
    return r.Int("sliding_window", 0);
  };
  if (c.model_type == "qwen2") {
    c.attention_bias = true;  // Qwen2 always has q/k/v biases; the config has no key for it.
    bool use_sliding = false;
    MODEL_ASSIGN_OR_RETURN(use_sliding, r.Bool("use_sliding_window", false));
    if (use_sliding) {
      MODEL_ASSIGN_OR_RETURN(c.sliding_window, window());
      // Only layers >= max_window_layers slide (or those layer_types names
      // "sliding_attention"); with none of them the model has full attention throughout.
      bool any_sliding = false;
      if (const Json* types = r.Find("layer_types"); types != nullptr && types->is_array()) {
        for (const Json& t : *types) any_sliding |= t == "sliding_attention";
      } else {
        int max_window_layers = 0;
        MODEL_ASSIGN_OR_RETURN(max_window_layers, r.Int("max_window_layers", 28));
        any_sliding = c.num_layers > max_window_layers;
      }
      if (!any_sliding) c.sliding_window = 0;
    }
  } else if (c.model_type == "mistral") {
    // MistralAttention has no biases whatever config.json says (transformers ignores
    // attention_bias for Mistral).
    MODEL_ASSIGN_OR_RETURN(c.sliding_window, window());
  } else {
    MODEL_ASSIGN_OR_RETURN(c.attention_bias, r.Bool("attention_bias", false));
    if (c.attention_bias) {
      // LlamaAttention's attention_bias puts a bias on o_proj too, which the backends
      // do not add: running without it would silently be another model.
      return absl::UnimplementedError(absl::StrCat(
          origin_str,
          ": attention_bias true (LlamaForCausalLM: q/k/v/o_proj biases) is not supported"));
    }
  }

  // transformers 5.x writes `dtype`, older versions `torch_dtype`.
  std::string dtype_key = r.Find("dtype") != nullptr ? "dtype" : "torch_dtype";
  std::string dtype_name;
  MODEL_ASSIGN_OR_RETURN(dtype_name, r.String(dtype_key.c_str(), "float32"));
  auto dtype = ParseTorchDType(dtype_name);
  if (!dtype.ok()) return r.Bad(dtype_key.c_str(), dtype.status().message());
  c.torch_dtype = *dtype;

  // What the backends implement: SwiGLU MLP without biases.
  std::string act;
  MODEL_ASSIGN_OR_RETURN(act, r.String("hidden_act", "silu"));
  if (act != "silu") {
    return absl::UnimplementedError(
        absl::StrCat(origin_str, ": hidden_act '", act, "' is not supported (supported: silu)"));
  }
  bool mlp_bias = false;
  MODEL_ASSIGN_OR_RETURN(mlp_bias, r.Bool("mlp_bias", false));
  if (mlp_bias)
    return absl::UnimplementedError(absl::StrCat(origin_str, ": mlp_bias is not supported"));

  if (auto s = ParseRope(root, r, origin_str, c); !s.ok()) return s;
  if (auto s = CheckSanity(r, c); !s.ok()) return s;
  return c;
}

namespace {

// The whole file: NotFound when it cannot be opened, DataLoss on a read error.
absl::StatusOr<std::string> ReadText(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path.string(), ": cannot open"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path.string(), ": read error"));
  return buffer.str();
}

}  // namespace

absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& model_dir) {
  const std::filesystem::path path = model_dir / "config.json";
  absl::StatusOr<std::string> text = ReadText(path);
  if (!text.ok()) return text.status();
  absl::StatusOr<ModelConfig> config = ParseModelConfig(*text, path.string());
  if (!config.ok()) return config;

  // generation_config.json's eos_token_id joins config.json's, as HF generate and vLLM
  // stop on it: Llama-3-Instruct's config.json names only <|end_of_text|>, its
  // generation_config.json also <|eot_id|>, which ends every assistant turn.
  const std::filesystem::path gen_path = model_dir / "generation_config.json";
  absl::StatusOr<std::string> gen_text = ReadText(gen_path);
  if (absl::IsNotFound(gen_text.status())) return config;  // optional
  if (!gen_text.ok()) return gen_text.status();
  const Json root = Json::parse(*gen_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(gen_path.string(), ": not a JSON object"));
  }
  const std::string origin = gen_path.string();
  const FieldReader r(root, origin);
  std::vector<int> eos;
  MODEL_ASSIGN_OR_RETURN(eos, r.IntList("eos_token_id"));
  if (absl::Status st = CheckIdsInVocab(r, "eos_token_id", eos, config->vocab_size); !st.ok()) {
    return st;
  }
  for (int id : eos) {
    if (std::find(config->eos_token_ids.begin(), config->eos_token_ids.end(), id) ==
        config->eos_token_ids.end()) {
      config->eos_token_ids.push_back(id);
    }
  }
  return config;
}

}  // namespace leank
