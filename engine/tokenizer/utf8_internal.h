#pragma once
// UTF-8 helpers shared by the tokenizer's sources (not part of the public API).

#include <cstddef>
#include <string>
#include <string_view>

namespace leank::tokenizer_internal {

// Decodes the code point starting at s[i]. Returns its length in bytes, or 0
// when the bytes there are not a complete, valid UTF-8 sequence.
size_t DecodeUtf8(std::string_view s, size_t i, char32_t* cp);
void AppendUtf8(char32_t cp, std::string* out);
// Like Rust's String::from_utf8_lossy (which HF decode uses): each maximal
// invalid subsequence becomes one U+FFFD.
std::string Utf8Lossy(std::string_view s);
// Offset of the first invalid byte, or npos when s is valid UTF-8.
size_t FirstInvalidUtf8(std::string_view s);

}  // namespace leank::tokenizer_internal
