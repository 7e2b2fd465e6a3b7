#include "engine/model/weights.h"

#include <algorithm>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace leank {
namespace {

// Binds one tensor; its dtype is already one of bf16/f16/f32 (SafetensorsFile refuses
// the others), the shape is checked by the store.
absl::Status Bind(const WeightStore& store, const std::string& name,
                  const std::vector<int64_t>& shape, TensorView& out) {
  auto view = store.Get(name, shape);
  if (!view.ok()) return view.status();
  out = *std::move(view);
  return absl::OkStatus();
}

absl::Status BindLayer(const ModelConfig& c, const WeightStore& store, int layer, LayerWeights& w) {
  const std::string p = absl::StrCat("model.layers.", layer, ".");
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size;
  const int64_t q = c.q_size(), kv = c.kv_size();
  struct Item {
    std::string name;
    std::vector<int64_t> shape;
    TensorView* out;
  };
  const Item items[] = {
      {p + "input_layernorm.weight", {hidden}, &w.input_norm},
      {p + "self_attn.q_proj.weight", {q, hidden}, &w.q_proj},
      {p + "self_attn.k_proj.weight", {kv, hidden}, &w.k_proj},
      {p + "self_attn.v_proj.weight", {kv, hidden}, &w.v_proj},
      {p + "self_attn.o_proj.weight", {hidden, q}, &w.o_proj},
      {p + "post_attention_layernorm.weight", {hidden}, &w.post_attention_norm},
      {p + "mlp.gate_proj.weight", {inter, hidden}, &w.gate_proj},
      {p + "mlp.up_proj.weight", {inter, hidden}, &w.up_proj},
      {p + "mlp.down_proj.weight", {hidden, inter}, &w.down_proj},
  };
  for (const Item& item : items) {
    if (auto s = Bind(store, item.name, item.shape, *item.out); !s.ok()) return s;
  }
  if (!c.attention_bias) return absl::OkStatus();
  const std::pair<const char*, int64_t> biases[] = {{"q_proj", q}, {"k_proj", kv}, {"v_proj", kv}};
  std::optional<TensorView>* outs[] = {&w.q_bias, &w.k_bias, &w.v_bias};
  for (int i = 0; i < 3; ++i) {
    TensorView view;
    const std::string name = absl::StrCat(p, "self_attn.", biases[i].first, ".bias");
    if (auto s = Bind(store, name, {biases[i].second}, view); !s.ok()) return s;
    *outs[i] = std::move(view);
  }
  return absl::OkStatus();
}

// The number of layers the tensors hold (1 + the largest i of a "model.layers.<i>."
// name; 0 when there is none), counted before anything is bound: a config.json whose
// num_hidden_layers disagrees with the weights is named, and a huge count allocates nothing.
int64_t LayersHeld(const WeightStore& store) {
  constexpr std::string_view kPrefix = "model.layers.";
  int64_t held = 0;
  for (const std::string& name : store.Names()) {
    if (!name.starts_with(kPrefix)) continue;
    int64_t index = 0;
    size_t i = kPrefix.size();
    for (; i < name.size() && name[i] >= '0' && name[i] <= '9' && index < (int64_t{1} << 40); ++i) {
      index = index * 10 + (name[i] - '0');
    }
    if (i == kPrefix.size() || i >= name.size() || name[i] != '.') continue;
    held = std::max(held, index + 1);
  }
  return held;
}

// Tensors the model does not read are refused: ignoring them would run a different
// model than the checkpoint's (extra layers, QK norms, biases, quantisation scales).
// Tolerated: rotary inverse frequencies (older Llama exports; recomputed from the
// config) and lm_head.weight of a tied model (a copy of the embedding).
absl::Status CheckNoUnusedTensors(const ModelConfig& config, const WeightStore& store,
                                  const std::set<std::string>& bound) {
  std::vector<std::string> unused;
  for (const std::string& name : store.Names()) {
    if (bound.count(name) || name.ends_with(".rotary_emb.inv_freq")) continue;
    if (config.tie_word_embeddings && name == "lm_head.weight") continue;
    unused.push_back(name);
  }
  if (unused.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(store.dir().string(), ": tensor '", unused.front(), "' is not used by a ",
                   config.architecture, " as config.json describes it (", unused.size(),
                   " unused tensor", unused.size() == 1 ? "" : "s",
                   "): the weights and config.json do not match, or the checkpoint is of another "
                   "architecture"));
}

}  // namespace

absl::StatusOr<ModelWeights> BindWeights(const ModelConfig& config, const WeightStore& store) {
  ModelWeights w;
  const int64_t vocab = config.vocab_size, hidden = config.hidden_size;
  if (auto s = Bind(store, "model.embed_tokens.weight", {vocab, hidden}, w.embed_tokens); !s.ok()) {
    return s;
  }
  if (const int64_t held = LayersHeld(store); held != config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        store.dir().string(), ": config.json num_hidden_layers is ", config.num_layers,
        " but the safetensors hold ", held, " layers",
        held > 0 ? absl::StrCat(" (model.layers.0 to model.layers.", held - 1, ")") : ""));
  }
  w.layers.resize(config.num_layers);
  for (int l = 0; l < config.num_layers; ++l) {
    if (auto s = BindLayer(config, store, l, w.layers[l]); !s.ok()) return s;
  }
  if (auto s = Bind(store, "model.norm.weight", {hidden}, w.final_norm); !s.ok()) return s;
  if (config.tie_word_embeddings) {
    // Tied checkpoints usually omit lm_head.weight; when present it is a copy.
    w.lm_head = w.embed_tokens;
  } else if (auto s = Bind(store, "lm_head.weight", {vocab, hidden}, w.lm_head); !s.ok()) {
    if (s.code() == absl::StatusCode::kNotFound) {
      return absl::NotFoundError(absl::StrCat(s.message(),
                                              " (tie_word_embeddings is false, so lm_head.weight "
                                              "is required)"));
    }
    return s;
  }
  std::set<std::string> bound = {w.embed_tokens.name, w.final_norm.name, w.lm_head.name};
  for (const LayerWeights& l : w.layers) {
    for (const TensorView* t : {&l.input_norm, &l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj,
                                &l.post_attention_norm, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      bound.insert(t->name);
    }
    for (const auto* b : {&l.q_bias, &l.k_bias, &l.v_bias}) {
      if (b->has_value()) bound.insert((*b)->name);
    }
  }
  if (auto s = CheckNoUnusedTensors(config, store, bound); !s.ok()) return s;
  return w;
}

absl::StatusOr<LoadedModel> LoadModel(const std::filesystem::path& model_dir) {
  auto config = LoadModelConfig(model_dir);
  if (!config.ok()) return config.status();
  return LoadModel(model_dir, *std::move(config));
}

absl::StatusOr<LoadedModel> LoadModel(const std::filesystem::path& model_dir, ModelConfig config) {
  LoadedModel model;
  model.config = std::move(config);
  auto store = WeightStore::Open(model_dir);
  if (!store.ok()) return store.status();
  model.store = *std::move(store);
  auto weights = BindWeights(model.config, *model.store);
  if (!weights.ok()) return weights.status();
  model.weights = *std::move(weights);
  return model;
}

}  // namespace leank
