#pragma once
// The byte-level BPE model: maps a pre-token's bytes to GPT-2's printable
// byte alphabet and merges symbols by merge rank. Thread-safe; words are
// cached (HF's BPE cache plays the same role).

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace leank::tokenizer_internal {

// Token ids above this are refused: the id tables are dense, so one stray huge id
// would allocate gigabytes (the largest vocabularies in use are ~256K).
inline constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;

// A token id of tokenizer.json: an integer in [0, kMaxTokenId], else an error naming
// `what` (e.g. "vocab entry 'abc'"). Floats, strings and out-of-range values included.
absl::StatusOr<int32_t> TokenIdFromJson(const nlohmann::json& value, std::string_view what);

// GPT-2's bytes_to_unicode(): the UTF-8 text of the char standing for byte b.
const std::string& ByteToChar(uint8_t b);
// Inverse mapping for a code point; -1 if the code point stands for no byte.
int CharToByte(char32_t c);

class BpeModel {
 public:
  // Parses tokenizer.json's "model" (type BPE). Refuses what byte-level BPE
  // tokenizers do not use (dropout, byte_fallback, subword prefixes) by name.
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& model);

  // Appends the ids of one pre-token (raw UTF-8 bytes).
  void EncodeWord(std::string_view word, std::vector<int32_t>* ids) const;

  const std::unordered_map<std::string, int32_t>& vocab() const { return vocab_; }
  // Token string (byte-level form) of each id; "" for holes.
  const std::vector<std::string>& id_to_token() const { return id_to_token_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void MergeWord(std::string_view word, std::vector<int32_t>* ids) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<uint64_t, Merge> merges_;
  int32_t byte_id_[256];  // id of each single byte's char, -1 if absent from the vocab
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;

  static constexpr size_t kCacheCapacity = 1 << 16;
  static constexpr size_t kMaxCachedWordBytes = 256;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace leank::tokenizer_internal
