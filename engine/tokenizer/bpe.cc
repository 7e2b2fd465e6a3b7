#include "bpe.h"

#include <array>
#include <queue>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "utf8_internal.h"

namespace leank::tokenizer_internal {
namespace {

using Json = nlohmann::json;

struct ByteTables {
  std::array<std::string, 256> byte_to_char;
  std::array<int, 324> char_to_byte;  // code points used are < 0x144
  ByteTables() {
    char_to_byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t c = printable ? b : 256 + n++;
      AppendUtf8(c, &byte_to_char[b]);
      char_to_byte[c] = b;
    }
  }
};

const ByteTables& Tables() {
  static const ByteTables tables;
  return tables;
}

// One symbol of a word being merged: a doubly linked list over a vector.
struct Symbol {
  int32_t id;
  int prev, next;
  bool alive;
};

struct Candidate {
  int32_t rank;
  int pos;  // index of the left symbol
  int32_t new_id;
  int32_t right_id;  // id the right neighbour had when queued (stale check)
  bool operator<(const Candidate& o) const {
    // std::priority_queue pops the largest: lowest rank first, then leftmost.
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

}  // namespace

absl::StatusOr<int32_t> TokenIdFromJson(const Json& value, std::string_view what) {
  if ((value.is_number_integer() || value.is_number_unsigned()) && value.get<int64_t>() >= 0 &&
      (value.is_number_unsigned() ? value.get<uint64_t>() <= uint64_t(kMaxTokenId)
                                  : value.get<int64_t>() <= kMaxTokenId)) {
    return static_cast<int32_t>(value.get<int64_t>());
  }
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", std::string(what),
                                                 ": id must be an integer in [0, ", kMaxTokenId,
                                                 "], got ", value.dump()));
}

const std::string& ByteToChar(uint8_t b) { return Tables().byte_to_char[b]; }

int CharToByte(char32_t c) { return c < 324 ? Tables().char_to_byte[c] : -1; }

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const Json& model) {
  const std::string type = model.value("type", "BPE");
  if (type != "BPE") {
    return absl::UnimplementedError(absl::StrCat("tokenizer.json: model type '", type,
                                                 "' is not supported (only byte-level BPE)"));
  }
  // dropout 0 (or null) is plain BPE, as in HF tokenizers; anything else is random.
  if (const Json dropout = model.value("dropout", Json());
      !dropout.is_null() && !(dropout.is_number() && dropout.get<double>() == 0.0)) {
    return absl::UnimplementedError("tokenizer.json: BPE dropout is not supported");
  }
  if (model.value("byte_fallback", false)) {
    return absl::UnimplementedError(
        "tokenizer.json: BPE byte_fallback (SentencePiece-style) is not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const Json v = model.value(key, Json());
    if (!v.is_null() && !v.get<std::string>().empty()) {
      return absl::UnimplementedError(
          absl::StrCat("tokenizer.json: BPE ", key, " is not supported"));
    }
  }
  auto bpe = std::unique_ptr<BpeModel>(new BpeModel());
  int32_t max_id = -1;
  for (const auto& [token, id] : model.at("vocab").items()) {
    const absl::StatusOr<int32_t> i_or = TokenIdFromJson(id, "vocab entry '" + token + "'");
    if (!i_or.ok()) return i_or.status();
    const int32_t i = *i_or;
    bpe->vocab_.emplace(token, i);
    max_id = std::max(max_id, i);
  }
  bpe->id_to_token_.resize(max_id + 1);
  for (const auto& [token, id] : bpe->vocab_) bpe->id_to_token_[id] = token;

  const Json& merges = model.at("merges");
  bpe->merges_.reserve(merges.size() * 2);
  int32_t rank = 0;
  for (const Json& m : merges) {
    std::string a, b;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("tokenizer.json: merge #", rank, " '", s, "' is not two tokens"));
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: merge #", rank, " is neither \"a b\" nor [a, b]"));
    }
    auto ia = bpe->vocab_.find(a), ib = bpe->vocab_.find(b), ic = bpe->vocab_.find(a + b);
    if (ia == bpe->vocab_.end() || ib == bpe->vocab_.end() || ic == bpe->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: merge #", rank, " ('", a,
                                                     "', '", b,
                                                     "') uses a token not in the vocab"));
    }
    // Like HF (its merge map is collected from the list, later entries overwriting
    // earlier ones), a repeated pair takes the rank of its last occurrence.
    bpe->merges_.insert_or_assign(PairKey(ia->second, ib->second), Merge{rank, ic->second});
    ++rank;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = bpe->vocab_.find(ByteToChar(static_cast<uint8_t>(b)));
    bpe->byte_id_[b] = it == bpe->vocab_.end() ? -1 : it->second;
  }
  const Json unk = model.value("unk_token", Json());
  if (!unk.is_null()) {
    auto it = bpe->vocab_.find(unk.get<std::string>());
    if (it == bpe->vocab_.end()) {
      return absl::InvalidArgumentError("tokenizer.json: BPE unk_token is not in the vocab");
    }
    bpe->unk_id_ = it->second;
  }
  bpe->fuse_unk_ = model.value("fuse_unk", false);
  bpe->ignore_merges_ = model.value("ignore_merges", false);
  return bpe;
}

void BpeModel::EncodeWord(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(std::string(word));
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> out;
  MergeWord(word, &out);
  ids->insert(ids->end(), out.begin(), out.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    // Like HF, stop adding once full rather than evicting.
    if (cache_.size() < kCacheCapacity) cache_.emplace(std::string(word), std::move(out));
  }
}

void BpeModel::MergeWord(std::string_view word, std::vector<int32_t>* ids) const {
  if (ignore_merges_) {
    std::string mapped;
    mapped.reserve(word.size() * 2);
    for (unsigned char b : word) mapped += ByteToChar(b);
    auto it = vocab_.find(mapped);
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  std::vector<Symbol> syms;
  syms.reserve(word.size());
  for (unsigned char b : word) {
    int32_t id = byte_id_[b];
    if (id < 0) {
      if (unk_id_ < 0) continue;  // HF drops chars it cannot represent without unk
      if (fuse_unk_ && !syms.empty() && syms.back().id == unk_id_) continue;
      id = unk_id_;
    }
    const int n = static_cast<int>(syms.size());
    syms.push_back({id, n - 1, n + 1, true});
  }
  if (syms.empty()) return;
  syms.back().next = -1;

  std::priority_queue<Candidate> queue;
  auto push_pair = [&](int left) {
    const int right = syms[left].next;
    if (right < 0) return;
    auto it = merges_.find(PairKey(syms[left].id, syms[right].id));
    if (it != merges_.end()) {
      queue.push({it->second.rank, left, it->second.new_id, syms[right].id});
    }
  };
  for (int i = 0; i + 1 < static_cast<int>(syms.size()); ++i) push_pair(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = syms[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = syms[left.next];
    // Stale if either side changed since the candidate was queued.
    auto it = merges_.find(PairKey(left.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id || right.id != top.right_id) {
      continue;
    }
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) syms[right.next].prev = top.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  for (int i = 0; i >= 0; i = syms[i].next) ids->push_back(syms[i].id);
}

}  // namespace leank::tokenizer_internal
