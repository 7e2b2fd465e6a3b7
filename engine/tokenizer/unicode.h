#pragma once
// Unicode pieces the tokenizer needs beyond PCRE2: NFC normalization (Qwen2's
// normalizer) and the White_Space property (added tokens' lstrip/rstrip).

#include <string>
#include <string_view>

namespace leank::tokenizer_internal {

// NFC of valid UTF-8 text (tables from gen_unicode_tables.py).
std::string NormalizeNfc(std::string_view text);
// Rust's char::is_whitespace (the Unicode White_Space property).
bool IsUnicodeWhitespace(char32_t c);

}  // namespace leank::tokenizer_internal
