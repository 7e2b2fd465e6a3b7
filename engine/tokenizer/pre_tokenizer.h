#pragma once
// Pre-tokenizers of byte-level BPE tokenizers: they only split text into
// pieces (the byte-level mapping happens in the BPE model).

#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"
#include "regex.h"

namespace leank::tokenizer_internal {

// Pieces are views into the caller's text or into `arena` (for pieces that a
// pre-tokenizer rewrote, e.g. ByteLevel's add_prefix_space).
struct Pieces {
  std::vector<std::string_view> views;
  std::deque<std::string> arena;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits every piece of `pieces` further, in place.
  virtual void Apply(Pieces* pieces) const = 0;
};

// Builds the pre-tokenizer described by tokenizer.json's "pre_tokenizer"
// (null, Split, ByteLevel, Digits, or a Sequence of those); others are refused by name.
absl::StatusOr<std::unique_ptr<PreTokenizer>> MakePreTokenizer(const nlohmann::json& spec);

}  // namespace leank::tokenizer_internal
