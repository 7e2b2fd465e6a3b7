#pragma once
// Byte-level BPE tokenizers in the HF tokenizers format (tokenizer.json):
// GPT-2/SmolLM2, Llama-3 and Qwen2 styles. Pre-tokenizer regex via PCRE2,
// merges by rank, added/special tokens matched before pre-tokenization,
// the post-processor's special tokens (e.g. Llama-3's <|begin_of_text|>).

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace leank {

class Tokenizer {
 public:
  // Parses tokenizer.json. Unsupported models/pre-tokenizers are refused by name.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::filesystem::path& path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json_text);
  virtual ~Tokenizer() = default;

  // InvalidArgument for text that is not valid UTF-8. Special tokens written in the
  // text are recognised (as HF does for added tokens). `add_special_tokens` applies
  // the post-processor (e.g. prepends BOS) as HF's encode(add_special_tokens=True).
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                                      bool add_special_tokens = false) const = 0;
  // Bytes of the tokens, concatenated (may end inside a UTF-8 character).
  virtual std::string DecodeBytes(std::span<const int32_t> ids,
                                  bool skip_special = false) const = 0;
  // Decoded text with invalid UTF-8 replaced by U+FFFD, as HF decode does.
  virtual std::string Decode(std::span<const int32_t> ids, bool skip_special = false) const = 0;

  virtual int vocab_size() const = 0;  // highest id + 1, added tokens included
  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;
  virtual std::string IdToToken(int32_t id) const = 0;  // "" for unknown ids
  virtual bool IsSpecial(int32_t id) const = 0;
};

// Streams text as tokens come: emits only complete UTF-8 characters and keeps
// an incomplete tail for the next token.
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special = true)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}
  // Text that became complete with this token (possibly empty).
  std::string Push(int32_t id);
  // Whatever is left at the end (invalid bytes as U+FFFD).
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;  // bytes of an incomplete UTF-8 character
};

// Streaming helper: the length of the prefix of `s` that can be emitted now.
// What follows it (at most 3 bytes) is the start of a UTF-8 character that
// later bytes may complete. Invalid bytes are inside the prefix (emit them as
// U+FFFD). Returns s.size() when nothing is pending.
size_t CompleteUtf8Prefix(std::string_view s);
bool IsValidUtf8(std::string_view s);

}  // namespace leank
