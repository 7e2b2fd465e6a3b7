#pragma once
// A compiled PCRE2 pattern (UTF + UCP, JIT when available) used by the
// pre-tokenizers. Immutable after Compile: safe to share between threads.

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace leank::tokenizer_internal {

class Regex {
 public:
  // `pattern` is in the Oniguruma/Rust syntax HF uses; the ones of the supported
  // tokenizers are also valid PCRE2.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern);
  static std::unique_ptr<Regex> CompileLiteral(std::string_view literal);
  // A class (for Compile) of the chars Rust's char::is_numeric accepts, as
  // HF's Digits pre-tokenizer uses it (Unicode of HF's Rust, not PCRE2's).
  static std::string NumericClass();
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-overlapping, non-empty matches [begin, end) of `text` (valid UTF-8), left to right.
  void FindAll(std::string_view text, std::vector<std::pair<size_t, size_t>>* matches) const;

 private:
  explicit Regex(void* code) : code_(code) {}
  void* code_;  // pcre2_code_8*
};

}  // namespace leank::tokenizer_internal
