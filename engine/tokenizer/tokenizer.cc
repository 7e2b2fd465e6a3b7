// Tokenizer: tokenizer.json parsing and the encode/decode pipelines
//   encode: added tokens (raw) -> normalizer -> added tokens (normalized)
//           -> pre-tokenizer -> byte-level BPE -> post-processor ids
//   decode: per-token bytes (byte-level decoder), concatenated.

#include "tokenizer.h"

#include <fstream>
#include <sstream>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "added_tokens.h"
#include "bpe.h"
#include "nlohmann/json.hpp"
#include "pre_tokenizer.h"
#include "unicode.h"
#include "utf8_internal.h"

namespace leank {
namespace {

using Json = nlohmann::json;
using tokenizer_internal::AddedToken;
using tokenizer_internal::AddedTokenMatcher;
using tokenizer_internal::BpeModel;
using tokenizer_internal::Pieces;
using tokenizer_internal::PreTokenizer;
using tokenizer_internal::Split;

// Parses "normalizer": null, NFC, or a Sequence of those.
absl::StatusOr<bool> ParseNormalizer(const Json& spec) {
  if (spec.is_null()) return false;
  const std::string type = spec.value("type", "");
  if (type == "NFC") return true;
  if (type == "Sequence") {
    bool nfc = false;
    for (const Json& sub : spec.at("normalizers")) {
      auto r = ParseNormalizer(sub);
      if (!r.ok()) return r.status();
      nfc = nfc || *r;
    }
    return nfc;
  }
  return absl::UnimplementedError(absl::StrCat("tokenizer.json: normalizer type '", type,
                                               "' is not supported (supported: none, NFC)"));
}

// Collects the ids TemplateProcessing puts around a single sequence.
absl::Status ParsePostProcessor(const Json& spec, std::vector<int32_t>* prefix,
                                std::vector<int32_t>* suffix) {
  if (spec.is_null()) return absl::OkStatus();
  const std::string type = spec.value("type", "");
  if (type == "ByteLevel") return absl::OkStatus();  // only touches offsets
  if (type == "Sequence") {
    for (const Json& sub : spec.at("processors")) {
      if (auto s = ParsePostProcessor(sub, prefix, suffix); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (type == "TemplateProcessing") {
    const Json& specials = spec.at("special_tokens");
    bool after_sequence = false;
    for (const Json& item : spec.at("single")) {
      if (item.contains("Sequence")) {
        after_sequence = true;
        continue;
      }
      const std::string name = item.at("SpecialToken").at("id").get<std::string>();
      if (!specials.contains(name)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tokenizer.json: post_processor template uses '", name, "' missing in special_tokens"));
      }
      for (const Json& id : specials.at(name).at("ids")) {
        (after_sequence ? suffix : prefix)->push_back(id.get<int32_t>());
      }
    }
    return absl::OkStatus();
  }
  return absl::UnimplementedError(
      absl::StrCat("tokenizer.json: post_processor type '", type,
                   "' is not supported (supported: ByteLevel, TemplateProcessing, Sequence)"));
}

absl::Status CheckDecoder(const Json& spec) {
  if (spec.is_null()) {
    return absl::UnimplementedError(
        "tokenizer.json: a byte-level tokenizer needs a ByteLevel decoder");
  }
  const std::string type = spec.value("type", "");
  if (type == "ByteLevel") return absl::OkStatus();
  if (type == "Sequence") {
    for (const Json& sub : spec.at("decoders")) {
      if (auto s = CheckDecoder(sub); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  return absl::UnimplementedError(absl::StrCat("tokenizer.json: decoder type '", type,
                                               "' is not supported (supported: ByteLevel)"));
}

// HF's ByteLevel decoder: a token whose chars all stand for bytes becomes those
// bytes; any other token (e.g. an added token with a space) is kept as UTF-8.
std::string TokenBytes(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  for (size_t i = 0; i < token.size();) {
    char32_t c = 0;
    const size_t n = tokenizer_internal::DecodeUtf8(token, i, &c);
    const int b = n == 0 ? -1 : tokenizer_internal::CharToByte(c);
    if (b < 0) return std::string(token);
    out.push_back(static_cast<char>(b));
    i += n;
  }
  return out;
}

class BpeTokenizer : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Build(const Json& root);

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool add_special_tokens) const override;
  std::string DecodeBytes(std::span<const int32_t> ids, bool skip_special) const override;
  std::string Decode(std::span<const int32_t> ids, bool skip_special) const override {
    return tokenizer_internal::Utf8Lossy(DecodeBytes(ids, skip_special));
  }
  int vocab_size() const override { return static_cast<int>(id_to_token_.size()); }
  std::optional<int32_t> TokenToId(std::string_view token) const override;
  std::string IdToToken(int32_t id) const override {
    return id >= 0 && id < vocab_size() ? id_to_token_[id] : std::string();
  }
  bool IsSpecial(int32_t id) const override { return special_ids_.contains(id); }

 private:
  void EncodePlain(std::string_view text, std::vector<int32_t>* ids) const;

  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  bool nfc_ = false;
  AddedTokenMatcher raw_matcher_;         // added tokens with normalized == false
  AddedTokenMatcher normalized_matcher_;  // added tokens with normalized == true
  std::unordered_map<std::string, int32_t> added_ids_;
  std::unordered_set<int32_t> special_ids_;
  std::vector<int32_t> prefix_ids_, suffix_ids_;
  std::vector<std::string> id_to_token_;  // added tokens override the model's
  std::vector<std::string> id_bytes_;     // decoded bytes of each id
};

absl::StatusOr<std::unique_ptr<Tokenizer>> BpeTokenizer::Build(const Json& root) {
  auto tok = std::make_unique<BpeTokenizer>();
  if (!root.contains("model")) return absl::InvalidArgumentError("tokenizer.json: no 'model'");
  auto model = BpeModel::FromJson(root.at("model"));
  if (!model.ok()) return model.status();
  tok->model_ = *std::move(model);
  auto nfc = ParseNormalizer(root.value("normalizer", Json()));
  if (!nfc.ok()) return nfc.status();
  tok->nfc_ = *nfc;
  auto pre = tokenizer_internal::MakePreTokenizer(root.value("pre_tokenizer", Json()));
  if (!pre.ok()) return pre.status();
  tok->pre_tokenizer_ = *std::move(pre);
  if (auto s = CheckDecoder(root.value("decoder", Json())); !s.ok()) return s;
  if (auto s = ParsePostProcessor(root.value("post_processor", Json()), &tok->prefix_ids_,
                                  &tok->suffix_ids_);
      !s.ok()) {
    return s;
  }

  tok->id_to_token_ = tok->model_->id_to_token();
  for (const Json& a : root.value("added_tokens", Json::array())) {
    AddedToken t;
    t.content = a.at("content").get<std::string>();
    const absl::StatusOr<int32_t> id =
        tokenizer_internal::TokenIdFromJson(a.at("id"), "added token '" + t.content + "'");
    if (!id.ok()) return id.status();
    t.id = *id;
    t.special = a.value("special", false);
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    // HF's default: special tokens are not normalized, others are.
    t.normalized = a.value("normalized", !t.special);
    if (a.value("single_word", false)) {
      return absl::UnimplementedError(absl::StrCat("tokenizer.json: added token '", t.content,
                                                   "' has single_word=true (not supported)"));
    }
    if (!IsValidUtf8(t.content)) {
      return absl::InvalidArgumentError("tokenizer.json: added token content is not UTF-8");
    }
    if (t.normalized && tok->nfc_) {
      tok->normalized_matcher_.Add(tokenizer_internal::NormalizeNfc(t.content), t);
    } else {
      (t.normalized ? tok->normalized_matcher_ : tok->raw_matcher_).Add(t.content, t);
    }
    tok->added_ids_[t.content] = t.id;
    if (t.special) tok->special_ids_.insert(t.id);
    if (t.id >= static_cast<int32_t>(tok->id_to_token_.size())) tok->id_to_token_.resize(t.id + 1);
    tok->id_to_token_[t.id] = t.content;
  }
  for (int32_t id : tok->prefix_ids_) {
    if (id < 0 || id >= static_cast<int32_t>(tok->id_to_token_.size())) {
      return absl::InvalidArgumentError("tokenizer.json: post_processor id out of range");
    }
  }
  tok->id_bytes_.resize(tok->id_to_token_.size());
  for (size_t id = 0; id < tok->id_to_token_.size(); ++id) {
    tok->id_bytes_[id] = TokenBytes(tok->id_to_token_[id]);
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

void BpeTokenizer::EncodePlain(std::string_view text, std::vector<int32_t>* ids) const {
  Pieces pieces;
  pieces.views.push_back(text);
  pre_tokenizer_->Apply(&pieces);
  for (std::string_view piece : pieces.views) model_->EncodeWord(piece, ids);
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::Encode(std::string_view text,
                                                          bool add_special_tokens) const {
  if (size_t bad = tokenizer_internal::FirstInvalidUtf8(text); bad != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("Encode: text is not valid UTF-8 (byte ", bad, " of ", text.size(), ")"));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + prefix_ids_.size() + suffix_ids_.size() + 1);
  if (add_special_tokens) ids.insert(ids.end(), prefix_ids_.begin(), prefix_ids_.end());
  std::vector<Split> raw_splits;
  raw_matcher_.SplitText(text, &raw_splits);
  std::vector<Split> norm_splits;
  for (const Split& raw : raw_splits) {
    if (raw.token_id >= 0) {
      ids.push_back(raw.token_id);
      continue;
    }
    // Normalization happens per piece between raw-matched tokens, as in HF.
    std::string normalized;
    std::string_view plain = raw.text;
    if (nfc_) {
      normalized = tokenizer_internal::NormalizeNfc(plain);
      plain = normalized;
    }
    norm_splits.clear();
    normalized_matcher_.SplitText(plain, &norm_splits);
    for (const Split& s : norm_splits) {
      if (s.token_id >= 0) {
        ids.push_back(s.token_id);
      } else {
        EncodePlain(s.text, &ids);
      }
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

std::string BpeTokenizer::DecodeBytes(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;  // unknown ids decode to nothing
    if (skip_special && IsSpecial(id)) continue;
    out += id_bytes_[id];
  }
  return out;
}

std::optional<int32_t> BpeTokenizer::TokenToId(std::string_view token) const {
  const std::string key(token);
  if (auto it = added_ids_.find(key); it != added_ids_.end()) return it->second;
  if (auto it = model_->vocab().find(key); it != model_->vocab().end()) return it->second;
  return std::nullopt;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json_text) {
  Json root = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: not a JSON object");
  }
  try {
    return BpeTokenizer::Build(root);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: malformed: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", path.string()));
  std::stringstream buf;
  buf << in.rdbuf();
  auto tok = FromJson(buf.str());
  if (!tok.ok()) {
    return absl::Status(tok.status().code(),
                        absl::StrCat(path.string(), ": ", tok.status().message()));
  }
  return tok;
}

}  // namespace leank
